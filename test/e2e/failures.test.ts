/**
 * The platform's worst minutes, with real processes and a real Redis: a cluster of 1 router, 2 prefill,
 * 2 decode and 2 expert shards with 2 replicas each (started through the launcher library, so the test can
 * kill -9 any process and restart it where it was), on a private redis-server with append-only
 * persistence. Under load of concurrent streaming greedy requests, in turn:
 *   - kill -9 a prefill worker: BullMQ's stalled-job recovery hands its jobs to the other worker;
 *   - kill -9 a decode instance: the router migrates its requests to the other one;
 *   - restart Redis: services reconnect and no accepted request is lost;
 *   - a burst over the router's admission limit: 429 with Retry-After, every accepted request completes;
 *   - kill -9 one replica of an expert shard: the other replica takes its traffic, every stream completes;
 *     then kill -9 the last one: affected requests fail with a retryable 503 and new ones are refused the
 *     same way until a replica is back, then the cluster serves again;
 *   - kill -9 the router: its clients see the connection close, decode frees their KV after its grace
 *     period, prefill and decode carry on, and a restarted router serves.
 * Every request that completes must give exactly the tokens of an undisturbed single-process run (the
 * engine with the routed experts over 2 in-process hosts, as `moela generate --expert-hosts 2` runs it;
 * checked against `moela generate` itself for one prompt): no gap, no duplicate. After every phase no KV
 * block is held anywhere (decode Status, prefill's ledger gauge). The test prints how many requests were
 * migrated or retried.
 *
 * Sized for a loaded 2-core machine: 50 concurrent streams of 12 tokens over a tiny model.
 */
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it, vi } from "vitest";
import { DecodeClient, PrefillClient, type DecodeStatusResponse, type PrefillStatusResponse } from "@moela/proto-gen";
import { connect, unaryCall } from "@moela/rpc";
import { TINY_MODEL, startCluster, type Cluster, type ServiceProcess } from "../../services/cli/src/launcher.js";
import { metricSum, scrapeMetrics } from "../helpers/cluster.js";
import { clusterPrompt, streamCompletion, undisturbedAnswers, type StreamResult } from "../helpers/completions.js";
import { startTestRedis, type TestRedis } from "../helpers/redis-server.js";

const STREAMS = 50;
const MAX_TOKENS = 12;
const DISTINCT_PROMPTS = 10;
/** The burst's requests generate more tokens than the others, so the first are still running when the last arrive. */
const BURST_TOKENS = 48;
/** Over this many generations in flight the router answers 429. */
const MAX_IN_FLIGHT = 60;
/** Decode frees a sequence nobody streams after this (the router-kill phase waits it out). */
const STREAM_GRACE_MS = 3_000;

describe("failures under load: 2 prefill, 2 decode, 2 expert shards x 2 replicas, Redis with append-only persistence", () => {
  let dir: string;
  let redis: TestRedis;
  let cluster: Cluster;
  /** Greedy tokens of an undisturbed single-process run, per distinct prompt. */
  const refs: number[][] = [];
  const burstRefs: number[][] = [];
  const report: string[] = [];
  const spawned = new Set<number>();
  const killHard = (): void => {
    for (const pid of spawned) {
      try {
        process.kill(pid, "SIGKILL");
      } catch {
        // gone
      }
    }
  };

  const proc = (label: string): ServiceProcess => {
    const p = cluster.processes.find((x) => x.label === label);
    if (p === undefined) throw new Error(`no ${label}`);
    return p;
  };
  const url = (): string => proc("router 0").readyLine!.http!.replace(/\/+$/, "");
  const decodeStatus = (label: string): Promise<DecodeStatusResponse> => {
    const c = connect(DecodeClient, proc(label).readyLine!.grpc);
    return unaryCall<DecodeStatusResponse>((md, o, cb) => c.status({}, md, o, cb), { timeoutMs: 5_000 }).finally(() => c.close());
  };
  const prefillStatus = (label: string): Promise<PrefillStatusResponse> => {
    const c = connect(PrefillClient, proc(label).readyLine!.grpc);
    return unaryCall<PrefillStatusResponse>((md, o, cb) => c.status({}, md, o, cb), { timeoutMs: 5_000 }).finally(() => c.close());
  };
  const routerCounter = async (name: string, reason?: string): Promise<number> =>
    metricSum(await scrapeMetrics(proc("router 0").readyLine!.metrics), name, reason === undefined ? undefined : (l) => l.includes(`reason="${reason}"`)) ?? 0;
  const kill9 = async (label: string): Promise<void> => {
    const p = proc(label);
    p.child.kill("SIGKILL");
    await p.exited;
  };
  const restart = async (label: string): Promise<void> => {
    const p = await cluster.restart(label);
    spawned.add(p.pid!);
  };

  /** Jobs the router moved out of departed prefill instances' own queues so far (its warn lines say how many). */
  const rescuedJobs = (): number => {
    let n = 0;
    for (const line of readFileSync(proc("router 0").logPath, "utf8").split("\n")) {
      if (!line.includes("moved a departed prefill instance")) continue;
      n += (JSON.parse(line) as { moved?: number }).moved ?? 0;
    }
    return n;
  };

  /** No KV block held by any live decode or prefill instance (waits out grace periods and timeouts). */
  async function expectNoKvHeld(what: string, timeoutMs = 30_000): Promise<void> {
    const live = cluster.processes.filter((p) => p.exitInfo === undefined && (p.role === "decode" || p.role === "prefill"));
    await vi.waitFor(
      async () => {
        const parts: string[] = [];
        for (const p of live) {
          if (p.role === "decode") {
            const s = await decodeStatus(p.label);
            parts.push(
              `${p.label}: ${s.totalKvBlocks - s.freeKvBlocks} blocks used, ${s.pendingTransfers} transfers, ${s.runningSequences + s.waitingSequences} sequences`,
            );
            if (s.totalKvBlocks !== s.freeKvBlocks || s.pendingTransfers > 0 || s.runningSequences + s.waitingSequences > 0) {
              throw new Error(`${what}: KV still held (${parts.join("; ")})`);
            }
          } else {
            const held = metricSum(await scrapeMetrics(p.readyLine!.metrics), "moela_prefill_kv_blocks_used") ?? NaN;
            const s = await prefillStatus(p.label);
            parts.push(`${p.label}: ${held} blocks held, ${s.runningJobs} jobs`);
            if (held !== 0 || s.activeTransfers > 0) {
              throw new Error(`${what}: KV still held (${parts.join("; ")})`);
            }
          }
        }
      },
      { timeout: timeoutMs, interval: 200 },
    );
  }

  /** `n` concurrent streams over the distinct prompts; `onToken(i, count)` as tokens arrive. */
  function load(n: number, onToken?: (i: number, count: number) => void): Promise<StreamResult>[] {
    return Array.from({ length: n }, (_, i) => streamCompletion(url(), clusterPrompt(i % DISTINCT_PROMPTS), MAX_TOKENS, (c) => onToken?.(i, c)));
  }

  function expectExact(results: readonly StreamResult[], what: string): void {
    for (const [i, r] of results.entries()) {
      expect({ status: r.status, error: r.error, broken: r.broken }, `${what}: request ${i}`).toEqual({ status: 200, error: null, broken: false });
      expect(r.ids, `${what}: request ${i} (prompt ${i % DISTINCT_PROMPTS}) tokens`).toEqual(refs[i % DISTINCT_PROMPTS]);
      expect(r.finish, `${what}: request ${i} finish`).toBe("length");
    }
  }

  beforeAll(async () => {
    dir = mkdtempSync(join(tmpdir(), "moela-failures-"));
    // The undisturbed answers, before the cluster competes for the CPUs.
    refs.push(...(await undisturbedAnswers(DISTINCT_PROMPTS, MAX_TOKENS)));
    burstRefs.push(...(await undisturbedAnswers(DISTINCT_PROMPTS, BURST_TOKENS)));

    redis = await startTestRedis(join(dir, "redis"));
    process.on("exit", killHard);
    cluster = await startCluster({
      model: TINY_MODEL,
      prefill: 2,
      decode: 2,
      expertHosts: 2,
      // expert-host k serves shard k mod 2: shard 1 is expert-host 1 and expert-host 3.
      expertReplicas: 2,
      precision: "exact",
      port: 0,
      redisUrl: redis.url,
      queuePrefix: `failures-${process.pid}`,
      stateDir: join(dir, "state"),
      logLevel: process.env["MOELA_TEST_LOG_LEVEL"] ?? "warn",
      stopGraceMs: 5_000,
      serviceArgs: {
        decode: ["--stream-grace-ms", String(STREAM_GRACE_MS), "--kv-idle-ms", "5000", "--max-batch", "64", "--drain-grace-ms", "0"],
        router: ["--max-in-flight", String(MAX_IN_FLIGHT)],
      },
    });
    for (const p of cluster.processes) spawned.add(p.pid!);
  }, 300_000);

  afterAll(async () => {
    if (report.length > 0) process.stdout.write(`\n[failures] ${report.join("\n[failures] ")}\n`);
    await cluster?.stop();
    await redis?.stop();
    killHard();
    process.off("exit", killHard);
    // MOELA_KEEP_TEST_DIR=1 keeps the services' logs (and Redis's) for a look after a failure.
    if (process.env["MOELA_KEEP_TEST_DIR"] === undefined) rmSync(dir, { recursive: true, force: true });
    else process.stdout.write(`[failures] logs kept in ${dir}\n`);
  }, 120_000);

  it("kill -9 of a prefill worker: its jobs run again on the other worker; every stream completes exactly", async () => {
    const stalled0 = await routerCounter("moela_router_retries_total", "prefill_stalled");
    const retried0 = await routerCounter("moela_router_retries_total", "prefill_failed");
    const results = load(STREAMS);
    // Kill it while it holds jobs: they are locked to it in Redis and nobody else may take them until
    // the lock expires and a stalled-job check finds them.
    let heldAtKill = 0;
    await vi.waitFor(async () => expect((heldAtKill = (await prefillStatus("prefill 0")).runningJobs) > 0, "prefill 0 to take jobs").toBe(true), {
      timeout: 60_000,
      interval: 10,
    });
    await kill9("prefill 0");
    const done = await Promise.all(results);
    expectExact(done, "prefill killed");
    const stalled = (await routerCounter("moela_router_retries_total", "prefill_stalled")) - stalled0;
    const retried = (await routerCounter("moela_router_retries_total", "prefill_failed")) - retried0;
    const rescued = rescuedJobs();
    report.push(
      `kill -9 prefill 0 (it held ${heldAtKill} jobs): ${STREAMS} streams exact; ${stalled} jobs recovered by BullMQ's stalled check, ` +
        `${rescued} moved out of the dead instance's own queue by the router, ${retried} attempts retried`,
    );
    // Its jobs were either in the shared queue (BullMQ's stalled check gives them to prefill 1) or in its own
    // queue (the router moves a departed instance's jobs, its expired-lock active ones too, to the shared queue).
    expect(stalled + rescued, "jobs of the killed worker were recovered").toBeGreaterThan(0);
    await expectNoKvHeld("after the prefill kill");
    await restart("prefill 0");
  }, 180_000);

  it("kill -9 of a decode instance: its requests migrate to the other one and every stream completes exactly", async () => {
    const migrated0 = await routerCounter("moela_router_retries_total", "decode_unavailable");
    let midStream = 0;
    const results = load(STREAMS, (_i, count) => {
      if (count === 2) midStream++;
    });
    // Kill it while it is generating for several requests that have already sent tokens to their clients.
    await vi.waitFor(async () => expect(midStream >= 5 && (await decodeStatus("decode 0")).runningSequences > 0, "decode 0 to be mid-stream").toBe(true), {
      timeout: 60_000,
      interval: 10,
    });
    await kill9("decode 0");
    const done = await Promise.all(results);
    expectExact(done, "decode killed");
    const migrated = (await routerCounter("moela_router_retries_total", "decode_unavailable")) - migrated0;
    report.push(`kill -9 decode 0: ${STREAMS} streams exact; ${migrated} requests migrated to decode 1`);
    expect(migrated, "requests migrated off the killed decode instance").toBeGreaterThan(0);
    await expectNoKvHeld("after the decode kill");
    await restart("decode 0");
    // The router sees it again (Status polls) and uses it.
    await vi.waitFor(
      async () =>
        expect(
          ((await fetch(`${url()}/health`).then((r) => r.json())) as { decode: { healthy: number } }).decode.healthy,
          "both decode instances healthy",
        ).toBe(2),
      { timeout: 30_000, interval: 200 },
    );
  }, 180_000);

  it("Redis restart under load: services reconnect without crashing and every accepted request completes exactly", async () => {
    let started = 0;
    const results = load(STREAMS, (_i, count) => {
      if (count === 1) started++;
    });
    await vi.waitFor(() => expect(started >= 1, "the first tokens").toBe(true), { timeout: 60_000, interval: 10 });
    // Requests still waiting to be enqueued, queued, and in prefill: all must survive.
    await redis.restart(1_000);
    const done = await Promise.all(results);
    const accepted = done.filter((r) => r.status === 200).length;
    report.push(`Redis restart: ${accepted} of ${STREAMS} streams accepted, all exact; refused: ${done.length - accepted}`);
    // None is refused: the restart is shorter than the router's 10 s enqueue wait.
    expectExact(done, "Redis restarted");
    for (const p of cluster.processes) expect(p.exitInfo, `${p.label} survived the Redis restart`).toBeUndefined();
    await expectNoKvHeld("after the Redis restart");
  }, 180_000);

  it("a burst over the admission limit: 429s with Retry-After, and every accepted request completes exactly", async () => {
    const burst = MAX_IN_FLIGHT + 30;
    // With MAX_TOKENS-long requests the first ones could finish before the last arrive, leaving fewer than
    // MAX_IN_FLIGHT in flight at once (seen on a quiet 2-core machine); BURST_TOKENS keeps them running.
    const done = await Promise.all(Array.from({ length: burst }, (_, i) => streamCompletion(url(), clusterPrompt(i % DISTINCT_PROMPTS), BURST_TOKENS)));
    const refused = done.filter((r) => r.status === 429);
    const accepted = done.filter((r) => r.status === 200);
    report.push(`burst of ${burst} over --max-in-flight ${MAX_IN_FLIGHT}: ${accepted.length} accepted (all exact), ${refused.length} refused with 429`);
    expect(refused.length).toBeGreaterThan(0);
    expect(accepted.length + refused.length).toBe(burst);
    for (const r of refused) {
      expect(r.retryAfter).toMatch(/^\d+$/);
      expect(r.error?.code).toBe("rate_limit_exceeded");
    }
    for (const [i, r] of done.entries()) {
      if (r.status !== 200) continue;
      expect({ error: r.error, broken: r.broken, finish: r.finish }, `accepted request ${i}`).toEqual({ error: null, broken: false, finish: "length" });
      expect(r.ids, `accepted request ${i} tokens`).toEqual(burstRefs[i % DISTINCT_PROMPTS]);
    }
    await expectNoKvHeld("after the burst");
  }, 180_000);

  it("kill -9 of an expert-host replica: the shard's other replica takes over and every stream completes exactly", async () => {
    let started = 0;
    const results = load(20, (_i, count) => {
      if (count === 1) started++;
    });
    await vi.waitFor(() => expect(started >= 3, "streams to start").toBe(true), { timeout: 60_000, interval: 10 });
    await kill9("expert-host 3");
    const done = await Promise.all(results);
    expectExact(done, "an expert-host replica killed");
    report.push(`kill -9 expert-host 3 (shard 1 has another replica): 20 streams exact`);
    await expectNoKvHeld("after a replica was killed");
  }, 180_000);

  it("kill -9 of the last replica of an expert shard: streams fail in-band and new requests with a retryable 503 until one is back, then the cluster serves again", async () => {
    // Every stream is generating when the kill lands (and far from its 400 tokens), so each one meets the
    // loss in decode: an in-band error after its 200, never a 503 or a finish.
    const started = new Set<number>();
    const ended = new Map<number, StreamResult>();
    const inFlight = Array.from({ length: 6 }, (_, i) =>
      streamCompletion(url(), clusterPrompt(i), 400, () => started.add(i)).then((r) => {
        ended.set(i, r);
        return r;
      }),
    );
    await vi.waitFor(() => expect(started.size, `every stream to start (ended before the kill: ${JSON.stringify([...ended])})`).toBe(6), {
      timeout: 60_000,
      interval: 10,
    });
    await kill9("expert-host 1");
    const during = await Promise.all(inFlight);
    for (const [i, r] of during.entries()) {
      expect({ status: r.status, code: r.error?.code, broken: r.broken }, `stream ${i}`).toEqual({ status: 200, code: "service_unavailable", broken: false });
      expect(r.ids.length, `stream ${i} tokens`).toBeLessThan(400);
      // What it sent before the loss is the undisturbed greedy answer (its first MAX_TOKENS are in refs).
      expect(r.ids.slice(0, MAX_TOKENS), `stream ${i} tokens before the loss`).toEqual(
        refs[i % DISTINCT_PROMPTS]!.slice(0, Math.min(MAX_TOKENS, r.ids.length)),
      );
    }
    // A new request meets the loss in prefill (every prompt's tokens route to shard 1's experts), before its first token.
    const refusedNow = await streamCompletion(url(), clusterPrompt(0), MAX_TOKENS);
    expect({ status: refusedNow.status, code: refusedNow.error?.code }, `a new request while shard 1 is gone: ${JSON.stringify(refusedNow)}`).toEqual({
      status: 503,
      code: "service_unavailable",
    });
    expect(refusedNow.retryAfter).toMatch(/^\d+$/);
    report.push(`kill -9 expert-host 1 (shard 1's last replica): 6 streams in flight ended with an in-band service_unavailable, new requests refused with 503`);
    await expectNoKvHeld("with an expert-host gone");

    await restart("expert-host 1");
    // Prefill and decode reconnect by themselves (grpc reconnect backoff at most 2 s).
    let after: StreamResult | undefined;
    await vi.waitFor(
      async () => {
        after = await streamCompletion(url(), clusterPrompt(5), MAX_TOKENS);
        expect({ status: after.status, error: after.error }, "a request to succeed once the expert-host is back").toEqual({ status: 200, error: null });
      },
      { timeout: 60_000, interval: 500 },
    );
    expect(after!.ids).toEqual(refs[5]);
    const results = await Promise.all(load(10));
    expectExact(results, "after the expert-host came back");
    await restart("expert-host 3");
    await expectNoKvHeld("after the expert-host came back");
  }, 180_000);

  it("kill -9 of the router: its streams end with a closed connection; decode frees their KV after the grace period; a restarted router serves", async () => {
    const lost0 = await Promise.all(
      ["decode 0", "decode 1"].map(
        async (l) => metricSum(await scrapeMetrics(proc(l).readyLine!.metrics), "moela_decode_kv_reclaims_total", (x) => x.includes('reason="lost"')) ?? 0,
      ),
    );
    let streaming = 0;
    // Long generations, so they are still running when their router dies and through decode's grace period after it:
    // a sequence that finishes within the grace is freed as finished, not reclaimed. 400 tokens were once enough; on a
    // fast VM 8 streams of them ended inside the 3 s. The tiny model's context (2,048) bounds this.
    const long = Array.from({ length: 8 }, (_, i) =>
      streamCompletion(url(), clusterPrompt(i), 1_800, (c) => {
        if (c === 1) streaming++;
      }),
    );
    await vi.waitFor(() => expect(streaming >= 8, "every stream to start").toBe(true), { timeout: 60_000, interval: 10 });
    const others = cluster.processes.filter((p) => p.role !== "router").map((p) => p.pid);
    await kill9("router 0");
    const ends = await Promise.all(long);
    for (const r of ends) expect(r.broken, "the client sees its connection close").toBe(true);
    // Nobody streams those sequences any more: decode frees them after --stream-grace-ms.
    await expectNoKvHeld("after the router kill", 60_000);
    const lost = await Promise.all(
      ["decode 0", "decode 1"].map(
        async (l) => metricSum(await scrapeMetrics(proc(l).readyLine!.metrics), "moela_decode_kv_reclaims_total", (x) => x.includes('reason="lost"')) ?? 0,
      ),
    );
    const reclaimed = lost.reduce((a, b) => a + b, 0) - lost0.reduce((a, b) => a + b, 0);
    report.push(
      `kill -9 router 0: 8 streams ended with a closed connection; decode reclaimed ${reclaimed} abandoned sequences after the ${STREAM_GRACE_MS} ms grace`,
    );
    expect(reclaimed).toBeGreaterThan(0);
    // Nothing else was disturbed.
    expect(cluster.processes.filter((p) => p.role !== "router").map((p) => p.pid)).toEqual(others);
    for (const p of cluster.processes.filter((x) => x.role !== "router")) expect(p.exitInfo, p.label).toBeUndefined();
    await restart("router 0");
    const results = await Promise.all(load(10));
    expectExact(results, "through the restarted router");
    await expectNoKvHeld("at the end");
  }, 180_000);
});
