/**
 * Logs: every service writes structured JSON (pino) lines, and a request's id follows it through
 * router, prefill and decode (field REQUEST_ID_FIELD of @moela/core). Reads the log files the
 * launcher writes for each instance (cluster.json `log`: <state-dir>/logs/<role>-<i>.log, the
 * child's stdout and stderr) of a cluster running at log level info, the default of `npm start`.
 *
 * A caller-chosen id is namespaced inside the cluster (the router runs it as `<id>-<12 hex>`, so two
 * callers choosing the same id never touch each other's requests): its lines carry that id, which
 * starts with the caller's; the router's lines also name the caller's own (clientRequestId).
 */
import { readFileSync } from "node:fs";
import { afterAll, beforeAll, describe, expect, it, vi } from "vitest";
import { REQUEST_ID_FIELD } from "@moela/core";
import { MoelaClient } from "@moela/client";
import type { Role } from "../../services/cli/src/launcher.js";
import { startTestCluster, type TestCluster } from "../helpers/cluster.js";

type Line = Record<string, unknown>;

/** The pino fields every log line has (pino's own plus the `service` base of createLogger). */
const PINO_FIELDS = ["level", "time", "service", "msg"] as const;
/** Fields that mark a line as being about one request (it must then say which). */
const PER_REQUEST_FIELDS = ["responseId", "transferId", "requestIds"] as const;

let cluster: TestCluster;
let client: MoelaClient;
const GRPC_ID = `req-e2e-grpc-${Date.now()}`;
const GRPC_CANCELLED_ID = `req-e2e-cancel-${Date.now()}`;
let httpId: string;
let httpStreamId: string;

function post(body: Record<string, unknown>, signal?: AbortSignal): Promise<Response> {
  return fetch(`${cluster.baseURL}/completions`, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify({ model: cluster.model, temperature: 0, ...body }),
    ...(signal !== undefined ? { signal } : {}),
  });
}

/** Every line of the logs of `role`'s instances, parsed; a line that is not JSON fails the test. */
function logLines(role: Role): Line[] {
  return cluster.instances(role).flatMap((i) =>
    readFileSync(i.log, "utf8")
      .split("\n")
      .filter((l) => l.trim() !== "")
      .map((l) => {
        try {
          return JSON.parse(l) as Line;
        } catch {
          throw new Error(`${role} ${i.index} wrote a line that is not JSON (${i.log}): ${l.slice(0, 300)}`);
        }
      }),
  );
}

/** Lines of the request the caller knows as `id`: the field is `id`, or `<id>-<12 hex>` for a caller-chosen id. */
function linesOf(role: Role, id: string): Line[] {
  return logLines(role).filter((l) => {
    const v = l[REQUEST_ID_FIELD];
    return v === id || (typeof v === "string" && v.startsWith(`${id}-`) && /^[0-9a-f]{12}$/.test(v.slice(id.length + 1)));
  });
}

beforeAll(async () => {
  cluster = await startTestCluster({ logLevel: "info" });
  client = new MoelaClient({ address: cluster.instances("router")[0]!.grpc, maxRetries: 0 });

  // gRPC with a caller-chosen id, run to the end.
  const done = await client.complete({ prompt: "The capital of France is", maxTokens: 4, temperature: 0, requestId: GRPC_ID });
  expect(done.requestId).toBe(GRPC_ID);
  // gRPC abandoned after its first event.
  for await (const _ of client.generate({ prompt: "A long story:", maxTokens: 64, ignoreEos: true, requestId: GRPC_CANCELLED_ID })) break;
  // HTTP, whole and streamed: the router makes the id and returns it in x-request-id.
  const whole = await post({ prompt: "Hello", max_tokens: 4 });
  expect(whole.status).toBe(200);
  httpId = whole.headers.get("x-request-id") ?? "";
  await whole.json();
  const ac = new AbortController();
  const streamed = await post({ prompt: "Once upon a time", max_tokens: 64, ignore_eos: true, stream: true }, ac.signal);
  expect(streamed.status).toBe(200);
  httpStreamId = streamed.headers.get("x-request-id") ?? "";
  // Read the first event, then hang up: the router cancels the request on decode.
  const reader = streamed.body!.getReader();
  await reader.read();
  ac.abort();
  await reader.cancel().catch(() => {});
  expect(httpId).toMatch(/^req-/);
  expect(httpStreamId).toMatch(/^req-/);
  // Log files are written by the launcher as the children print; wait for the last lines.
  await vi.waitFor(
    () => {
      for (const id of [GRPC_ID, GRPC_CANCELLED_ID, httpId, httpStreamId]) {
        expect(linesOf("decode", id).length, `decode to log the end of request ${id}`).toBeGreaterThanOrEqual(2);
      }
    },
    { timeout: 20_000, interval: 100 },
  );
}, 240_000);

afterAll(async () => {
  client?.close();
  await cluster?.stop();
}, 120_000);

describe("structured logs with the request id", () => {
  it.each(["router", "prefill", "decode", "expert-host"] as const)("%s writes only JSON lines with pino's fields", (role) => {
    const lines = logLines(role);
    expect(lines.length).toBeGreaterThan(0);
    for (const l of lines) {
      if (l["event"] === "ready") continue; // the launcher's ready protocol line, JSON too
      for (const f of PINO_FIELDS) expect(l[f], `${role}: ${JSON.stringify(l)}`).toBeDefined();
      expect(l["service"]).toBe(role);
      expect(typeof l["level"]).toBe("number");
    }
  });

  it("a gRPC request's id (chosen by the caller) is on its lines in router, prefill and decode", () => {
    for (const role of ["router", "prefill", "decode"] as const) {
      expect(linesOf(role, GRPC_ID).length, `${role} lines with ${REQUEST_ID_FIELD}=${GRPC_ID}`).toBeGreaterThan(0);
    }
    // Decode reports how it ended.
    expect(linesOf("decode", GRPC_ID).map((l) => l["msg"])).toContain("sequence finished");
    // Namespaced inside the cluster; the router's lines keep the caller's own id too.
    const internal = new Set(linesOf("decode", GRPC_ID).map((l) => l[REQUEST_ID_FIELD]));
    expect([...internal].every((v) => v !== GRPC_ID)).toBe(true);
    expect(linesOf("router", GRPC_ID).some((l) => l["clientRequestId"] === GRPC_ID)).toBe(true);
  });

  it("a cancelled gRPC request's id is on prefill's and decode's lines, decode saying it was cancelled", () => {
    expect(linesOf("router", GRPC_CANCELLED_ID).length).toBeGreaterThan(0);
    expect(linesOf("prefill", GRPC_CANCELLED_ID).length).toBeGreaterThan(0);
    expect(linesOf("decode", GRPC_CANCELLED_ID).map((l) => l["msg"])).toContain("request cancelled");
  });

  it("an HTTP request's id (x-request-id) is on its lines in prefill and decode", () => {
    for (const id of [httpId, httpStreamId]) {
      for (const role of ["prefill", "decode"] as const) {
        expect(linesOf(role, id).length, `${role} lines with ${REQUEST_ID_FIELD}=${id}`).toBeGreaterThan(0);
      }
    }
  });

  it("prefill and decode name the request on every line about a transfer", () => {
    for (const role of ["prefill", "decode"] as const) {
      for (const l of logLines(role).filter((x) => x["transferId"] !== undefined)) {
        expect(typeof l[REQUEST_ID_FIELD], `${role}: ${JSON.stringify(l)}`).toBe("string");
        expect(String(l["transferId"]).startsWith(`${String(l[REQUEST_ID_FIELD])}.`)).toBe(true);
      }
    }
  });

  it("router: every line about an HTTP request carries its request id", () => {
    for (const id of [httpId, httpStreamId]) {
      expect(linesOf("router", id).length, `router lines with ${REQUEST_ID_FIELD}=${id}`).toBeGreaterThan(0);
    }
    for (const l of logLines("router").filter((x) => PER_REQUEST_FIELDS.some((f) => x[f] !== undefined))) {
      expect(typeof l[REQUEST_ID_FIELD], JSON.stringify(l)).toBe("string");
    }
  });
});
