// cluster.json, the endpoint table and the printed summary.
import { mkdtempSync, readFileSync, readdirSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import { formatClusterSummary } from "../../../services/cli/src/cluster.js";
import { curlExample, formatEndpointTable, writeClusterFile, type ClusterInfo } from "../../../services/cli/src/launcher.js";

const dir = mkdtempSync(join(tmpdir(), "moela-cluster-file-"));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

const info: ClusterInfo = {
  version: 1,
  started_at: "2025-01-01T00:00:00.000Z",
  launcher_pid: 42,
  model: "/m/tiny-v3",
  served_model_name: "tiny-v3",
  precision: "exact",
  url: "http://127.0.0.1:8000",
  openai_base_url: "http://127.0.0.1:8000/v1",
  curl: curlExample("http://127.0.0.1:8000", "tiny-v3", true),
  redis: { url: "redis://127.0.0.1:6379", source: "local", pid: null },
  queue_prefix: "moela",
  topology: { prefill: 1, decode: 1, expert_hosts: 2 },
  instances: [
    {
      role: "router",
      index: 0,
      pid: 10,
      grpc: "127.0.0.1:5000",
      metrics: "http://127.0.0.1:5001/metrics",
      http: "http://127.0.0.1:8000",
      log: "/l/router-0.log",
    },
    { role: "prefill", index: 0, pid: 11, grpc: "127.0.0.1:5002", metrics: "http://127.0.0.1:5003/metrics", log: "/l/prefill-0.log" },
    { role: "decode", index: 0, pid: 12, grpc: "127.0.0.1:5004", metrics: "http://127.0.0.1:5005/metrics", log: "/l/decode-0.log" },
    { role: "expert-host", index: 0, shard: 0, pid: 13, grpc: "127.0.0.1:5006", metrics: "http://127.0.0.1:5007/metrics", log: "/l/expert-host-0.log" },
    { role: "expert-host", index: 1, shard: 1, pid: 14, grpc: "127.0.0.1:5008", metrics: "http://127.0.0.1:5009/metrics", log: "/l/expert-host-1.log" },
  ],
};

describe("writeClusterFile", () => {
  it("writes the info as JSON, creating the folder, and leaves no temporary file", () => {
    const file = join(dir, "state", "cluster.json");
    writeClusterFile(file, info);
    expect(JSON.parse(readFileSync(file, "utf8"))).toEqual(info);
    writeClusterFile(file, { ...info, launcher_pid: 43 });
    expect(JSON.parse(readFileSync(file, "utf8")).launcher_pid).toBe(43);
    expect(readdirSync(join(dir, "state"))).toEqual(["cluster.json"]);
  });
});

describe("curlExample", () => {
  it("sends a text prompt when the model has a tokenizer", () => {
    const c = curlExample("http://127.0.0.1:8000", "tiny-v3", true);
    expect(c).toMatch(/^curl -s http:\/\/127\.0\.0\.1:8000\/v1\/completions /);
    const body = JSON.parse(/-d '(.*)'$/.exec(c)![1]!);
    expect(body).toMatchObject({ model: "tiny-v3", max_tokens: 16, temperature: 0 });
    expect(typeof body.prompt).toBe("string");
  });
  it("sends token ids when it has none", () => {
    const body = JSON.parse(/-d '(.*)'$/.exec(curlExample("http://h:1", "ckpt", false))![1]!);
    expect(Array.isArray(body.prompt)).toBe(true);
    expect(body.prompt.every((x: unknown) => Number.isInteger(x))).toBe(true);
  });
});

describe("formatEndpointTable", () => {
  it("has a header and one aligned row per instance with role, pid, gRPC and metrics", () => {
    const lines = formatEndpointTable(info.instances).split("\n");
    expect(lines).toHaveLength(1 + info.instances.length);
    expect(lines[0]).toMatch(/^role\s+pid\s+gRPC\s+metrics\s+http$/);
    expect(lines[1]).toMatch(/^router 0\s+10\s+127\.0\.0\.1:5000\s+http:\/\/127\.0\.0\.1:5001\/metrics\s+http:\/\/127\.0\.0\.1:8000$/);
    expect(lines[4]).toMatch(/^expert-host 0 \(shard 0\)\s+13\s+127\.0\.0\.1:5006\s+http:\/\/127\.0\.0\.1:5007\/metrics$/);
    // aligned: every row's gRPC address starts where the header's "gRPC" does
    const grpcColumn = lines.map((l, i) => l.indexOf(i === 0 ? "gRPC" : "127.0.0.1:50"));
    expect(new Set(grpcColumn).size).toBe(1);
  });
});

describe("formatClusterSummary", () => {
  it("names the URL, the curl example, every instance and where the file and logs are", () => {
    const s = formatClusterSummary(info, "/x/.moela/cluster.json", "/x/.moela/logs");
    expect(s).toContain("http://127.0.0.1:8000");
    expect(s).toContain(info.curl);
    for (const i of info.instances) expect(s).toContain(i.grpc);
    expect(s).toContain("/x/.moela/cluster.json");
    expect(s).toContain("Ctrl-C");
  });
});
