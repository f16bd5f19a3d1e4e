/**
 * More than one expert-host per shard, over real gRPC on 127.0.0.1:0 (tiny-v3): the dispatcher's
 * replica transport spreads calls over a shard's replicas, keeps answering bit for bit like the
 * in-process hosts when one replica stops, fails with a retryable UnavailableError naming the shard
 * when none is left, and serves the first call after a replica comes back. ExpertShardSet validates new replicas
 * (Info against the placement) before they take traffic and refuses a mismatched one.
 */
import { afterAll, afterEach, beforeAll, describe, expect, it, vi } from "vitest";
import { Code, createLogger, MoelaError, UnavailableError } from "@moela/core";
import { readModelConfig, type ModelConfig } from "@moela/engine";
import {
  checkHostInfo,
  checkpointModelId,
  createInProcessExperts,
  ExpertShardSet,
  HostedExpertExecutor,
  parseShardReplicas,
  placementFor,
  ReplicatedExpertHostTransport,
  type GrpcExpertHostTransport,
  type PrecisionName,
} from "@moela/moe-dispatch";
import { parseConfig, startExpertHost, type RunningExpertHost } from "@moela/expert-host";
import { makeCheckpoint, removeCheckpoints } from "../../helpers/checkpoints.js";
import { routedBatch } from "../../helpers/random.js";

const silent = createLogger("replicas-test", "silent");
const H = 2;
const PRECISION: PrecisionName = "paper";
let dir: string;
let config: ModelConfig;
const running = new Set<RunningExpertHost>();
const closers: (() => void)[] = [];

async function startHost(shardIndex: number, port = 0, shardCount = H): Promise<RunningExpertHost> {
  const cfg = parseConfig(
    ["--model", dir, "--shard-index", String(shardIndex), "--shard-count", String(shardCount), "--precision", PRECISION, "--grpc-address", `127.0.0.1:${port}`],
    {},
  )!;
  const host = await startExpertHost(cfg, silent);
  running.add(host);
  return host;
}

async function stop(host: RunningExpertHost): Promise<void> {
  running.delete(host);
  await host.close(0);
}

/** Seeded activations and top-k routing for T tokens (every expert of both shards reached). */
function batch(T: number, seed: number) {
  return routedBatch(config, T, seed);
}

const bits = (x: Float32Array) => new Uint32Array(x.buffer, x.byteOffset, x.length);

/** runRouted through `hosts` and in process; both outputs. */
async function both(hosts: readonly ReplicatedExpertHostTransport[], layer: number, seed: number) {
  const local = createInProcessExperts(dir, H, PRECISION);
  const remote = new HostedExpertExecutor({ placement: local.placement, profile: PRECISION, hosts, hidden: config.hiddenSize });
  const { x, ids, weights, T, hidden } = batch(9, seed);
  const want = new Float32Array(T * hidden);
  const got = new Float32Array(T * hidden);
  await local.executor.runRouted(layer, x, T, ids, weights, want);
  await remote.runRouted(layer, x, T, ids, weights, got);
  return { want, got };
}

beforeAll(() => {
  dir = makeCheckpoint("tiny-v3");
  config = readModelConfig(dir);
});

afterEach(async () => {
  for (const c of closers.splice(0)) c();
  await Promise.all([...running].map(stop));
});

afterAll(() => removeCheckpoints());

describe("ReplicatedExpertHostTransport", () => {
  it("spreads calls over a shard's replicas, fails over when one stops, and names the shard when none is left", async () => {
    const [a0, b0, a1] = await Promise.all([startHost(0), startHost(0), startHost(1)]);
    const shards = [
      new ReplicatedExpertHostTransport(0, [a0.grpcAddress, b0.grpcAddress], { selection: "round-robin" }),
      new ReplicatedExpertHostTransport(1, [a1.grpcAddress]),
    ];
    closers.push(() => shards.forEach((s) => s.close()));

    // Both replicas of shard 0 serve: round-robin alternates between them.
    for (let i = 0; i < 4; i++) {
      const { want, got } = await both(shards, 1 + (i % 3), 10 + i);
      expect(bits(got)).toEqual(bits(want));
    }
    const served = await Promise.all([a0, b0].map((h) => fetch(h.metricsUrl).then((r) => r.text())));
    // Counted by the host per dispatch, whichever RPC carried it (DispatchStream by default).
    for (const text of served) expect(text).toMatch(/^moela_expert_host_batch_tokens_count [1-9]/m);

    // One replica of shard 0 stops: every dispatch still succeeds, with the same bits.
    await stop(a0);
    for (let i = 0; i < 4; i++) {
      const { want, got } = await both(shards, 2, 20 + i);
      expect(bits(got)).toEqual(bits(want));
    }
    expect(shards[0]!.failovers).toBeGreaterThan(0);

    // Both stop: a retryable error that names the shard and each replica's failure.
    await stop(b0);
    const err = await both(shards, 3, 30).then(
      () => undefined,
      (e: unknown) => e,
    );
    expect(err).toBeInstanceOf(UnavailableError);
    expect((err as MoelaError).code).toBe(Code.UNAVAILABLE);
    expect((err as Error).message).toMatch(/^expert shard 0: no replica could serve Dispatch \(/);
    expect((err as Error).message).toContain(a0.grpcAddress);
    expect((err as Error).message).toContain(b0.grpcAddress);

    // A replica comes back on the same address: traffic flows again.
    const port = Number(b0.grpcAddress.slice(b0.grpcAddress.lastIndexOf(":") + 1));
    await startHost(0, port);
    // The first call after it is back is served: the channel is still sitting out its reconnect backoff,
    // and the transport waits for it to connect instead of failing.
    const { want, got } = await both(shards, 1, 40);
    expect(bits(got)).toEqual(bits(want));
  });

  it("least-loaded sends concurrent calls to the replica with fewer in flight", async () => {
    const [a0, b0, a1] = await Promise.all([startHost(0), startHost(0), startHost(1)]);
    const shards = [new ReplicatedExpertHostTransport(0, [a0.grpcAddress, b0.grpcAddress]), new ReplicatedExpertHostTransport(1, [a1.grpcAddress])];
    closers.push(() => shards.forEach((s) => s.close()));
    // Eight concurrent layer calls: each replica of shard 0 gets some.
    const outs = await Promise.all(Array.from({ length: 8 }, (_, i) => both(shards, 1 + (i % 4), 50 + i)));
    for (const { want, got } of outs) expect(bits(got)).toEqual(bits(want));
    const counts = await Promise.all(
      [a0, b0].map(async (h) => {
        const m = /^moela_expert_host_batch_tokens_count (\d+)/m.exec(await (await fetch(h.metricsUrl)).text());
        return Number(m?.[1] ?? 0);
      }),
    );
    expect(counts.every((n) => n > 0)).toBe(true);
  });
});

describe("ExpertShardSet", () => {
  const want = (t: GrpcExpertHostTransport, shard: number) =>
    t
      .info()
      .then((info) =>
        checkHostInfo(
          info,
          { shard, placement: placementFor(config, H), profile: PRECISION, hidden: config.hiddenSize, layers: [1, 2, 3, 4], modelId: checkpointModelId(dir) },
          t.name,
        ),
      );

  it("static replicas plus registry ones, validated before use; a mismatched one is refused; a listed-no-more one leaves", async () => {
    const [a0, a1, b1, wrong] = await Promise.all([startHost(0), startHost(1), startHost(1), startHost(0, 0, 3)]);
    const set = new ExpertShardSet({ shardCount: H, staticReplicas: parseShardReplicas([a0.grpcAddress, a1.grpcAddress]), validate: want, logger: silent });
    closers.push(() => set.close());
    await set.waitReady(20_000);
    expect(set.shards.map((s) => s.addresses)).toEqual([[a0.grpcAddress], [a1.grpcAddress]]);

    // From the registry: a second replica of shard 1, and a host of another layout claiming shard 0.
    set.update([
      { shard: 1, address: b1.grpcAddress },
      { shard: 0, address: wrong.grpcAddress },
    ]);
    await vi.waitFor(() => expect(set.shards[1]!.addresses).toEqual([a1.grpcAddress, b1.grpcAddress]), { timeout: 20_000, interval: 50 });
    expect(set.shards[0]!.addresses).toEqual([a0.grpcAddress]);

    const { want: w, got } = await both(set.shards as ReplicatedExpertHostTransport[], 2, 60);
    expect(bits(got)).toEqual(bits(w));

    // The registry no longer lists b1: it leaves; the static replicas stay.
    set.update([]);
    expect(set.shards.map((s) => s.addresses)).toEqual([[a0.grpcAddress], [a1.grpcAddress]]);
  });

  it("a shard with no usable replica: waitReady names it", async () => {
    const a0 = await startHost(0);
    const set = new ExpertShardSet({ shardCount: H, staticReplicas: [[a0.grpcAddress]], validate: want });
    closers.push(() => set.close());
    await expect(set.waitReady(1_500)).rejects.toThrow(/no usable expert-host for shard\(s\) 1 within 1500 ms/);
  });

  it("parses static replicas per shard", () => {
    expect(parseShardReplicas(["a:1|b:1", "c:1", "d:1|d:1"])).toEqual([["a:1", "b:1"], ["c:1"], ["d:1"]]);
  });
});
