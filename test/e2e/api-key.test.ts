/**
 * `moela cluster --api-key KEY`, as a user runs it: the launcher passes the key to the router (by its
 * environment, MOELA_ROUTER_API_KEY, never its argv), starts up through its own authenticated probe, and
 * never writes the key to cluster.json. Then the live router answers 401 without the key and 200 with it
 * (OpenAI client and gRPC SDK), while /health and /metrics stay open. Smallest cluster: one expert-host.
 */
import { randomUUID } from "node:crypto";
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import OpenAI, { APIError } from "openai";
import { MoelaClient, UnauthenticatedError } from "@moela/client";
import { TINY_MODEL, type ClusterInfo } from "../../services/cli/src/launcher.js";
import { launchCluster, type LaunchedCluster } from "../helpers/cluster.js";

const KEY = `sk-e2e-${randomUUID()}`;
let cluster: LaunchedCluster | undefined;
let info: ClusterInfo;
let stateDir: string;

beforeAll(async () => {
  stateDir = mkdtempSync(join(tmpdir(), "moela-e2e-api-key-"));
  const env = { ...process.env };
  delete env["MOELA_ROUTER_API_KEY"];
  const args = ["--model", TINY_MODEL, "--expert-hosts", "1", "--log-level", "warn", "--api-key", KEY];
  cluster = launchCluster(stateDir, `e2e-key-${randomUUID().slice(0, 8)}`, args, env);
  info = await cluster.up;
}, 240_000);

afterAll(async () => {
  if (cluster !== undefined && cluster.launcher.exitCode === null) {
    cluster.launcher.kill("SIGTERM");
    await cluster.exited;
  }
  if (stateDir !== undefined) rmSync(stateDir, { recursive: true, force: true });
}, 120_000);

describe("moela cluster --api-key", () => {
  it("the router got the key by its environment, not its argv; cluster.json never holds it", () => {
    const router = info.instances.find((i) => i.role === "router")!;
    const argv = readFileSync(`/proc/${router.pid}/cmdline`, "utf8").split("\0");
    expect(argv.join(" ")).not.toContain(KEY);
    const environ = readFileSync(`/proc/${router.pid}/environ`, "utf8").split("\0");
    expect(environ).toContain(`MOELA_ROUTER_API_KEY=${KEY}`);
    // Only the router needs it.
    const decode = info.instances.find((i) => i.role === "decode")!;
    expect(readFileSync(`/proc/${decode.pid}/environ`, "utf8")).not.toContain(KEY);
    expect(JSON.stringify(info)).not.toContain(KEY);
    expect(info.curl).toContain('-H "Authorization: Bearer $MOELA_ROUTER_API_KEY"');
  });

  it("HTTP: 401 without the key or with a wrong one, 200 with it; /health and /metrics open", async () => {
    const body = { model: info.served_model_name, prompt: "The capital of France is", max_tokens: 4, temperature: 0 };
    for (const apiKey of ["none", "sk-wrong"]) {
      const err = await new OpenAI({ baseURL: info.openai_base_url, apiKey, maxRetries: 0 }).completions.create(body).catch((e: unknown) => e);
      expect(err).toBeInstanceOf(APIError);
      expect((err as APIError).status).toBe(401);
    }
    const bare = await fetch(`${info.openai_base_url}/completions`, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify(body),
    });
    expect(bare.status).toBe(401);
    const done = await new OpenAI({ baseURL: info.openai_base_url, apiKey: KEY, maxRetries: 0 }).completions.create(body);
    expect(done.choices[0]!.text.length).toBeGreaterThan(0);
    expect((await fetch(`${info.url}/health`)).status).toBe(200);
    const router = info.instances.find((i) => i.role === "router")!;
    expect((await fetch(router.metrics)).status).toBe(200);
  });

  it("gRPC: UNAUTHENTICATED without the key, tokens with it", async () => {
    const address = info.instances.find((i) => i.role === "router")!.grpc;
    const anonymous = new MoelaClient({ address, maxRetries: 0 });
    const keyed = new MoelaClient({ address, apiKey: KEY, maxRetries: 0 });
    try {
      await expect(anonymous.complete({ prompt: "Hello", maxTokens: 2 })).rejects.toBeInstanceOf(UnauthenticatedError);
      const done = await keyed.complete({ prompt: "Hello", maxTokens: 2, temperature: 0 });
      expect(done.tokenIds).toHaveLength(2);
    } finally {
      anonymous.close();
      keyed.close();
    }
  });
});
