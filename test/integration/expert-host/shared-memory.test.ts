/**
 * Dispatch through shared memory (ExpertHost.AttachSharedMemory, packages/shm-native) to expert-hosts running as
 * real processes on a tiny-v3 checkpoint: a transport attaches after its first dispatch and then sends through
 * the channel, with the same bits as DispatchStream over gRPC and as the in-process executor; a bad request is
 * answered INVALID_ARGUMENT through the channel, which keeps serving; a host in the caller's own process keeps
 * gRPC; a host that stops answering fails calls at their deadline or abort and serves again when it resumes; a host
 * killed with calls in the channel fails them UNAVAILABLE instead of leaving them waiting.
 */
import { spawn, type ChildProcess } from "node:child_process";
import { createInterface } from "node:readline";
import { fileURLToPath } from "node:url";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { Code, createLogger, MoelaError } from "@moela/core";
import { readModelConfig, type ModelConfig } from "@moela/engine";
import {
  connectExpertHosts,
  createInProcessExperts,
  getDispatchCodec,
  HostedExpertExecutor,
  sharedMemoryAvailable,
  type ExpertDispatchRequest,
  type GrpcExpertHostTransport,
} from "@moela/moe-dispatch";
import { parseConfig, startExpertHost, type RunningExpertHost } from "@moela/expert-host";
import { removeOrphans } from "@moela/shm-native";
import { makeCheckpoint, removeCheckpoints } from "../../helpers/checkpoints.js";
import { routedBatch } from "../../helpers/random.js";

const REPO_ROOT = fileURLToPath(new URL("../../../", import.meta.url));
let dir: string;
let config: ModelConfig;
const children: ChildProcess[] = [];
const clients: GrpcExpertHostTransport[] = [];

/** An expert-host service as a process; resolves with its gRPC address once it printed its ready line. */
async function hostProcess(shard: number, shards: number): Promise<{ child: ChildProcess; grpc: string }> {
  const child = spawn(
    process.execPath,
    ["--import", "tsx", "services/expert-host/src/main.ts", "--shard-index", String(shard), "--precision", "exact", "--log-level", "warn"],
    {
      cwd: REPO_ROOT,
      env: { ...process.env, MOELA_EXPERT_HOST_MODEL: dir, MOELA_EXPERT_HOST_SHARD_COUNT: String(shards) },
      stdio: ["ignore", "pipe", "inherit"],
    },
  );
  children.push(child);
  const ready = await new Promise<Record<string, unknown>>((resolve, reject) => {
    createInterface({ input: child.stdout! }).once("line", (line) => resolve(JSON.parse(line) as Record<string, unknown>));
    child.once("exit", (code) => reject(new Error(`expert-host exited with ${code} before it was ready`)));
  });
  return { child, grpc: ready.grpc as string };
}

/** Dispatches `req` until the transport's channel is attached (the first call starts the attach and takes gRPC). */
async function untilAttached(t: GrpcExpertHostTransport, req: ExpertDispatchRequest): Promise<void> {
  for (let i = 0; i < 200 && t.shm?.attached !== true; i++) {
    await t.dispatch(req);
    await new Promise((r) => setTimeout(r, 10));
  }
  expect(t.shm?.attached).toBe(true);
}

function bits(x: Float32Array): Uint32Array {
  return new Uint32Array(x.buffer, x.byteOffset, x.length);
}

/** A one-token request for the first expert of shard 0 at MoE layer 1. */
function oneToken(expertId: number, seed = 1): ExpertDispatchRequest {
  const x = Float32Array.from({ length: config.hiddenSize }, (_, i) => Math.sin(i * seed));
  return {
    layer: 1,
    rows: 1,
    cols: config.hiddenSize,
    activations: getDispatchCodec("f32").encode(x, 1, config.hiddenSize),
    tokenExpertCounts: [1],
    expertIds: [expertId],
    weights: [0.75],
  };
}

beforeAll(() => {
  dir = makeCheckpoint("tiny-v3");
  config = readModelConfig(dir);
});

afterAll(async () => {
  for (const c of clients.splice(0)) c.close();
  const killed = children.splice(0);
  const exited = killed.map((c) => (c.exitCode !== null || c.signalCode !== null ? undefined : new Promise((r) => c.once("exit", r))));
  for (const c of killed) c.kill("SIGKILL");
  await Promise.all(exited);
  // A process killed with SIGKILL cannot remove its doorbell; the next moela process would. Leave none behind.
  removeOrphans();
  removeCheckpoints();
});

describe.skipIf(!sharedMemoryAvailable)("dispatch through shared memory to expert-host processes", () => {
  it("attaches, sends through the channel, and gives the bits of gRPC and of the in-process executor", async () => {
    const hosts = await Promise.all([0, 1].map((h) => hostProcess(h, 2)));
    const viaShm = connectExpertHosts(hosts.map((h) => h.grpc));
    const viaGrpc = connectExpertHosts(
      hosts.map((h) => h.grpc),
      { sharedMemory: false },
    );
    clients.push(...viaShm, ...viaGrpc);
    expect(viaGrpc.every((t) => t.shm === undefined)).toBe(true);
    const local = createInProcessExperts(dir, 2, "exact");
    for (const [h, t] of viaShm.entries()) await untilAttached(t, oneToken(local.placement.expertsOfHost[h]![0]!));

    const shm = new HostedExpertExecutor({ placement: local.placement, profile: "exact", hosts: viaShm, hidden: config.hiddenSize });
    const grpc = new HostedExpertExecutor({ placement: local.placement, profile: "exact", hosts: viaGrpc, hidden: config.hiddenSize });
    // Hosts reached through shared memory share this machine's cores: the model leaves them its kernel threads.
    expect(viaShm.every((t) => t.sameMachine)).toBe(true);
    expect(shm.sharesCores).toBe(true);
    expect(grpc.sharesCores).toBe(false);
    const sentBefore = viaShm.map((t) => t.shm!.sent);
    for (const layer of [1, 3, 4]) {
      for (const T of [1, 8, 40]) {
        const { x, ids, weights, hidden } = routedBatch(config, T, layer * 31 + T);
        const [a, b, c] = [0, 1, 2].map(() => new Float32Array(T * hidden));
        await local.executor.runRouted(layer, x, T, ids, weights, a!);
        // Two at once through the channel: each gets its own slot and its own answer.
        await Promise.all([shm.runRouted(layer, x, T, ids, weights, b!), grpc.runRouted(layer, x, T, ids, weights, c!)]);
        expect(bits(b!)).toEqual(bits(a!));
        expect(bits(c!)).toEqual(bits(a!));
        expect(a!.some((v) => v !== 0)).toBe(true);
      }
    }
    // Every one of those dispatches went through the channel, none over gRPC.
    viaShm.forEach((t, h) => expect(t.shm!.sent - sentBefore[h]!).toBe(9));
    expect(viaShm.every((t) => t.shm!.overflowed === 0)).toBe(true);

    // Concurrent calls beyond the slots: the rest take the gRPC stream, every answer still its own.
    const t0 = viaShm[0]!;
    const reqs = Array.from({ length: 20 }, (_, i) => oneToken(local.placement.expertsOfHost[0]![0]!, i + 2));
    const [many, alone] = [await Promise.all(reqs.map((r) => t0.dispatch(r))), await Promise.all(reqs.map((r) => viaGrpc[0]!.dispatch(r)))];
    many.forEach((m, i) => expect(Buffer.compare(Buffer.from(m.data), Buffer.from(alone[i]!.data))).toBe(0));
    expect(t0.shm!.overflowed).toBeGreaterThan(0);

    // A bad request is answered INVALID_ARGUMENT through the channel, naming the host; the channel keeps serving.
    const notMine = oneToken(local.placement.expertsOfHost[1]![0]!);
    const sent = t0.shm!.sent;
    await expect(t0.dispatch(notMine)).rejects.toThrow(/expert-host 0 .* Dispatch rejected the request: .*expert/);
    expect(t0.shm!.sent).toBe(sent + 1);
    const again = await t0.dispatch(reqs[0]!);
    expect(Buffer.compare(Buffer.from(again.data), Buffer.from(many[0]!.data))).toBe(0);
    expect(t0.shm!.attached).toBe(true);
  });

  it("a host in the caller's own process refuses the attach, and dispatches take gRPC", async () => {
    const cfg = parseConfig(["--model", dir, "--shard-index", "0", "--shard-count", "1", "--precision", "exact"], {})!;
    const host: RunningExpertHost = await startExpertHost(cfg, createLogger("shm-test", "silent"));
    try {
      const [t] = connectExpertHosts([host.grpcAddress]);
      clients.push(t!);
      const req = oneToken(0);
      const first = await t!.dispatch(req);
      for (let i = 0; i < 20; i++) {
        await new Promise((r) => setTimeout(r, 10));
        const next = await t!.dispatch(req);
        expect(Buffer.compare(Buffer.from(next.data), Buffer.from(first.data))).toBe(0);
      }
      expect(t!.shm!.attached).toBe(false);
      expect(t!.sameMachine).toBe(false);
      expect(t!.shm!.sent).toBe(0);
    } finally {
      await host.close(0);
    }
  });

  it("a host that stops answering fails a call in the channel DEADLINE_EXCEEDED, an aborted call at once, and serves again when it resumes", async () => {
    const { child, grpc } = await hostProcess(0, 1);
    const [t] = connectExpertHosts([grpc], { dispatchTimeoutMs: 1_500 });
    clients.push(t!);
    const req = oneToken(0);
    await untilAttached(t!, req);
    const before = await t!.dispatch(req);
    const sent = t!.shm!.sent;
    // SIGSTOP: the process and its sockets stay, so nothing tells the caller the host is gone; only the deadline can.
    child.kill("SIGSTOP");
    try {
      const started = Date.now();
      await expect(t!.dispatch(req)).rejects.toMatchObject({
        code: Code.DEADLINE_EXCEEDED,
        message: expect.stringMatching(/expert-host 0 .*1500 ms/) as unknown,
      });
      expect(Date.now() - started).toBeGreaterThanOrEqual(1_400);
      expect(Date.now() - started).toBeLessThan(10_000);
      const controller = new AbortController();
      const call = t!.dispatch(req, controller.signal);
      setTimeout(() => controller.abort(), 100);
      const abortedAt = Date.now();
      await expect(call).rejects.toMatchObject({ name: "AbortError" });
      expect(Date.now() - abortedAt).toBeLessThan(1_000);
      // Both went into the channel, not over gRPC.
      expect(t!.shm!.sent).toBe(sent + 2);
    } finally {
      child.kill("SIGCONT");
    }
    // The host answers the two stale requests into their slots (no one waits for them) and then the next call.
    const after = await t!.dispatch(req);
    expect(Buffer.compare(Buffer.from(after.data), Buffer.from(before.data))).toBe(0);
    expect(t!.shm!.attached).toBe(true);
    expect(t!.shm!.sent).toBe(sent + 3);
  });

  it("a host killed with calls in the channel fails them UNAVAILABLE, not hanging", async () => {
    const { child, grpc } = await hostProcess(0, 1);
    const [t] = connectExpertHosts([grpc], { dispatchTimeoutMs: 60_000 });
    clients.push(t!);
    const { x, ids, weights, T, hidden } = routedBatch(config, 512, 5);
    const executor = new HostedExpertExecutor({ placement: createInProcessExperts(dir, 1, "exact").placement, profile: "exact", hosts: [t!], hidden });
    await untilAttached(t!, oneToken(0));
    const inFlight = Array.from({ length: 24 }, () =>
      executor.runRouted(3, x, T, ids, weights, new Float32Array(T * hidden)).then(
        () => "done",
        (err: unknown) => err,
      ),
    );
    child.kill("SIGKILL");
    const started = Date.now();
    const outcomes = await Promise.all(inFlight);
    expect(Date.now() - started).toBeLessThan(30_000);
    const failed = outcomes.filter((o) => o !== "done");
    expect(failed.length).toBeGreaterThan(0);
    for (const o of failed) {
      expect(o).toBeInstanceOf(MoelaError);
      expect((o as MoelaError).code).toBe(Code.UNAVAILABLE);
    }
    // After the host is gone, a new dispatch fails UNAVAILABLE too.
    await expect(t!.dispatch(oneToken(0))).rejects.toMatchObject({ code: Code.UNAVAILABLE });
  });
});
