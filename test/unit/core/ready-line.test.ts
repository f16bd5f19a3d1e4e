// The ready line every service prints on stdout (formatReadyLine), as the launcher reads it (parseReadyLine).
import { describe, expect, it } from "vitest";
import { formatReadyLine, parseReadyLine } from "@moela/core";

describe("parseReadyLine", () => {
  const good = { event: "ready", role: "decode", pid: 123, grpc: "127.0.0.1:4001", metrics: "http://127.0.0.1:9001/metrics" };

  it.each([
    ["plain text", "listening soon"],
    ["empty", ""],
    ["a pino log line", '{"level":30,"time":1,"msg":"loading"}'],
    ["another event", JSON.stringify({ ...good, event: "draining" })],
    ["a JSON array", "[1,2]"],
    ["truncated JSON", '{"event":"ready","role":'],
  ])("ignores %s", (_name, line) => {
    expect(parseReadyLine(line)).toBeNull();
  });

  it.each([
    ["decode", good],
    ["router with http", { ...good, role: "router", http: "http://127.0.0.1:8000" }],
    ["expert-host with shard and extras", { ...good, role: "expert-host", shard: 1, shard_count: 2 }],
    ["an IPv6 address", { ...good, grpc: "[::1]:4001" }],
  ])("accepts %s", (_name, obj) => {
    const r = parseReadyLine(`  ${JSON.stringify(obj)}  `);
    expect(r).toEqual(obj);
  });

  it.each([
    ["unknown role", { ...good, role: "gateway" }, "role"],
    ["missing pid", { ...good, pid: undefined }, "pid"],
    ["string pid", { ...good, pid: "123" }, "pid"],
    ["grpc without port", { ...good, grpc: "127.0.0.1" }, "grpc"],
    ["grpc as URL", { ...good, grpc: "http://127.0.0.1:4001" }, "grpc"],
    ["metrics not a URL", { ...good, metrics: "127.0.0.1:9001" }, "metrics"],
    ["router without http", { ...good, role: "router" }, "http"],
    ["http not a URL", { ...good, role: "router", http: "8000" }, "http"],
  ])("rejects a ready line with %s, naming the field", (_name, obj, field) => {
    expect(() => parseReadyLine(JSON.stringify(obj))).toThrow(new RegExp(`"${field}"`));
  });
});

describe("formatReadyLine", () => {
  it.each([
    [
      "decode",
      formatReadyLine("decode", { grpc: "127.0.0.1:4001", metrics: "http://127.0.0.1:9001/metrics" }, 123),
      '{"event":"ready","role":"decode","pid":123,"grpc":"127.0.0.1:4001","metrics":"http://127.0.0.1:9001/metrics"}',
    ],
    [
      "router (http first, as it always printed)",
      formatReadyLine("router", { http: "http://127.0.0.1:8000", grpc: "127.0.0.1:4001", metrics: "http://127.0.0.1:9001/metrics" }, 7),
      '{"event":"ready","role":"router","pid":7,"http":"http://127.0.0.1:8000","grpc":"127.0.0.1:4001","metrics":"http://127.0.0.1:9001/metrics"}',
    ],
    [
      "expert-host with its shard",
      formatReadyLine("expert-host", { grpc: "127.0.0.1:4001", metrics: "http://127.0.0.1:9001/metrics", shard: 1 }, 9),
      '{"event":"ready","role":"expert-host","pid":9,"grpc":"127.0.0.1:4001","metrics":"http://127.0.0.1:9001/metrics","shard":1}',
    ],
  ])("writes the %s line byte for byte, and parseReadyLine reads it back", (_name, line, want) => {
    expect(line).toBe(want);
    expect(parseReadyLine(line)).toEqual(JSON.parse(want));
  });

  it("uses this process's pid by default", () => {
    expect(parseReadyLine(formatReadyLine("prefill", { grpc: "127.0.0.1:1", metrics: "http://127.0.0.1:2/metrics" }))?.pid).toBe(process.pid);
  });
});
