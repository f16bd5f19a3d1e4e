/**
 * `moela cluster` itself (the command `npm start` runs, not a test launcher) supervises its services,
 * like a StatefulSet: 1 router, 2 prefill, 2 decode and 2 expert shards x 2 replicas on its private,
 * persistent redis-server. Under 50 concurrent greedy streams, in turn:
 *   - kill -9 a prefill worker while it holds jobs: BullMQ / the router hand its jobs to the other one;
 *   - kill -9 a decode instance mid-stream: the router migrates its requests;
 *   - kill -9 one replica of an expert shard: dispatches fail over to the other replica;
 * and every stream completes with exactly the tokens of an undisturbed single-process run, while the
 * launcher restarts each victim at its address and prints it. Afterwards the cluster serves 50 streams
 * exactly with every service up. A second `moela cluster` on the same state dir, router port or queue
 * prefix fails at once and changes nothing of the first. kill -9 of the launcher leaves no service
 * (and no Redis) running within seconds.
 *
 * Sized for a loaded 2-core machine: 50 streams of 16 tokens over the bundled tiny model.
 */
import { spawn, type ChildProcess } from "node:child_process";
import { randomUUID } from "node:crypto";
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it, vi } from "vitest";
import { PrefillClient, DecodeClient, type DecodeStatusResponse, type PrefillStatusResponse } from "@moela/proto-gen";
import { connect, unaryCall, waitForServing } from "@moela/rpc";
import { TINY_MODEL, MOELA_BIN, REPO_ROOT, type ClusterInfo, type InstanceInfo } from "../../services/cli/src/launcher.js";
import { clusterSecurity, isAlive, launchCluster, metricSum, scrapeMetrics, type LaunchedCluster } from "../helpers/cluster.js";
import { clusterPrompt, streamCompletion, undisturbedAnswers, type StreamResult } from "../helpers/completions.js";

const STREAMS = 50;
const MAX_TOKENS = 16;
const DISTINCT_PROMPTS = 10;

/** `moela cluster ...` as a process; resolves with its exit code, stderr and the time it took. */
function runMoelaCluster(args: readonly string[]): Promise<{ code: number | null; stderr: string; ms: number }> {
  const t0 = Date.now();
  const child = spawn(process.execPath, [MOELA_BIN, "cluster", "--model", TINY_MODEL, ...args], { cwd: REPO_ROOT, stdio: ["ignore", "ignore", "pipe"] });
  let stderr = "";
  child.stderr!.on("data", (b: Buffer) => (stderr += b.toString()));
  return new Promise((resolve) => child.once("close", (code) => resolve({ code, stderr, ms: Date.now() - t0 })));
}

describe("moela cluster supervises its services like a StatefulSet (2 prefill, 2 decode, 2 expert shards x 2 replicas)", () => {
  let dir: string;
  let launcher: ChildProcess;
  let launcherExit: Promise<number | null>;
  let launched: LaunchedCluster;
  /** The launcher's stderr so far. */
  const stderr = (): string => launched.stderr();
  let first: ClusterInfo;
  const queuePrefix = `e2e-sv-${randomUUID().slice(0, 8)}`;
  /** Greedy tokens of an undisturbed single-process run, per distinct prompt. */
  const refs: number[][] = [];
  const report: string[] = [];

  const stateDir = (): string => join(dir, "state");
  const current = (): ClusterInfo => JSON.parse(readFileSync(join(stateDir(), "cluster.json"), "utf8")) as ClusterInfo;
  const instance = (label: string): InstanceInfo => {
    const i = current().instances.find((x) => `${x.role} ${x.index}` === label);
    if (i === undefined) throw new Error(`no ${label} in cluster.json`);
    return i;
  };
  /** Every pid the cluster runs now, its Redis included. */
  const allPids = (): number[] => {
    const c = current();
    return [...c.instances.map((i) => i.pid), ...(c.redis.pid !== null ? [c.redis.pid] : [])];
  };
  const decodeStatus = (label: string): Promise<DecodeStatusResponse> => {
    // moela cluster gives its services a random internal secret (in the file cluster.json names).
    const c = connect(DecodeClient, instance(label).grpc, {}, clusterSecurity(current()));
    return unaryCall<DecodeStatusResponse>((md, o, cb) => c.status({}, md, o, cb), { timeoutMs: 5_000 }).finally(() => c.close());
  };
  const prefillStatus = (label: string): Promise<PrefillStatusResponse> => {
    const c = connect(PrefillClient, instance(label).grpc, {}, clusterSecurity(current()));
    return unaryCall<PrefillStatusResponse>((md, o, cb) => c.status({}, md, o, cb), { timeoutMs: 5_000 }).finally(() => c.close());
  };

  const routerRetries = async (reason: string): Promise<number> =>
    metricSum(await scrapeMetrics(instance("router 0").metrics), "moela_router_retries_total", (l) => l.includes(`reason="${reason}"`)) ?? 0;
  /** Jobs the router moved out of departed prefill instances' own queues so far (its warn lines say how many). */
  const rescuedJobs = (): number =>
    readFileSync(instance("router 0").log, "utf8")
      .split("\n")
      .filter((l) => l.includes("moved a departed prefill instance"))
      .reduce((n, l) => n + ((JSON.parse(l) as { moved?: number }).moved ?? 0), 0);

  /** `n` concurrent streams over the distinct prompts; `onToken(i, count)` as tokens arrive. */
  const load = (n: number, onToken?: (i: number, count: number) => void): Promise<StreamResult>[] =>
    Array.from({ length: n }, (_, i) => streamCompletion(first.url, clusterPrompt(i % DISTINCT_PROMPTS), MAX_TOKENS, (c) => onToken?.(i, c)));

  function expectExact(results: readonly StreamResult[], what: string): void {
    for (const [i, r] of results.entries()) {
      expect({ status: r.status, error: r.error, broken: r.broken }, `${what}: request ${i}`).toEqual({ status: 200, error: null, broken: false });
      expect(r.ids, `${what}: request ${i} (prompt ${i % DISTINCT_PROMPTS}) tokens`).toEqual(refs[i % DISTINCT_PROMPTS]);
      expect(r.finish, `${what}: request ${i} finish`).toBe("length");
    }
  }

  /**
   * kill -9 `label` and wait for the launcher to say it restarted it at the same address, serving again.
   * Returns the streams' results (started before the kill by `startLoad`).
   */
  async function killUnderLoad(label: string, ready: () => Promise<boolean>, results: Promise<StreamResult>[]): Promise<StreamResult[]> {
    const before = instance(label);
    await vi.waitFor(async () => expect(await ready(), `${label} to be busy`).toBe(true), { timeout: 60_000, interval: 10 });
    process.kill(before.pid, "SIGKILL");
    const done = await Promise.all(results);
    await vi.waitFor(() => expect(stderr(), `the launcher to print that it restarted ${label}`).toMatch(new RegExp(`restarted\\s+${label} \\(pid \\d+\\)`)), {
      timeout: 120_000,
      interval: 100,
    });
    const after = instance(label);
    expect(stderr()).toMatch(new RegExp(`died\\s+${label} \\(pid ${before.pid}, killed by SIGKILL`));
    expect(after.pid).not.toBe(before.pid);
    expect({ grpc: after.grpc, metrics: after.metrics }, `${label} came back at its address`).toEqual({ grpc: before.grpc, metrics: before.metrics });
    await waitForServing(after.grpc, { timeoutMs: 30_000 });
    return done;
  }

  beforeAll(async () => {
    dir = mkdtempSync(join(tmpdir(), "moela-e2e-supervise-"));
    launched = launchCluster(stateDir(), queuePrefix, [
      "--model",
      TINY_MODEL,
      "--private-redis",
      "--prefill",
      "2",
      "--decode",
      "2",
      "--expert-hosts",
      "2",
      "--expert-replicas",
      "2",
      "--precision",
      "exact",
      "--log-level",
      process.env["MOELA_TEST_LOG_LEVEL"] ?? "warn",
      "--startup-timeout",
      "240",
    ]);
    ({ launcher, exited: launcherExit } = launched);
    // The undisturbed answers: the engine with the routed experts over 2 in-process hosts, as
    // `moela generate --expert-hosts 2` runs it (checked against it for one prompt), while the cluster starts.
    refs.push(...(await undisturbedAnswers(DISTINCT_PROMPTS, MAX_TOKENS)));
    first = await launched.up;
  }, 300_000);

  afterAll(async () => {
    if (report.length > 0) process.stdout.write(`\n[supervision] ${report.join("\n[supervision] ")}\n`);
    let left: number[] = [];
    try {
      left = allPids();
    } catch {
      // no cluster.json: stopped or never up
    }
    if (launcher !== undefined && launcher.exitCode === null && launcher.signalCode === null) {
      launcher.kill("SIGTERM");
      await Promise.race([launcherExit, new Promise((r) => setTimeout(r, 60_000))]);
    }
    for (const pid of [...left, ...(launcher?.pid !== undefined ? [launcher.pid] : [])]) {
      try {
        process.kill(pid, "SIGKILL");
      } catch {
        // gone
      }
    }
    if (process.env["MOELA_KEEP_TEST_DIR"] === undefined) rmSync(dir, { recursive: true, force: true });
    else process.stdout.write(`[supervision] logs kept in ${dir}\n`);
  }, 120_000);

  it("kill -9 of prefill 0 while it holds jobs: every stream completes exactly and prefill 0 is restarted", async () => {
    let held = 0;
    const t0 = Date.now();
    const stalled0 = await routerRetries("prefill_stalled");
    const done = await killUnderLoad("prefill 0", async () => (held = (await prefillStatus("prefill 0")).runningJobs) > 0, load(STREAMS));
    expectExact(done, "prefill 0 killed");
    const stalled = (await routerRetries("prefill_stalled")) - stalled0;
    const rescued = rescuedJobs();
    report.push(
      `kill -9 prefill 0 (holding ${held} jobs): ${STREAMS} streams exact; ${stalled} jobs recovered by BullMQ's stalled check, ` +
        `${rescued} moved out of its own queue by the router; restarted (${((Date.now() - t0) / 1000).toFixed(1)} s)`,
    );
    // The jobs it held ran again elsewhere: from the shared queue (stalled check) or its own (the router's rescue).
    expect(stalled + rescued, "jobs of the killed worker were recovered").toBeGreaterThan(0);
  }, 180_000);

  it("kill -9 of decode 0 mid-stream: its requests migrate, every stream completes exactly and decode 0 is restarted", async () => {
    let midStream = 0;
    const t0 = Date.now();
    const migrated0 = (await routerRetries("decode_unavailable")) + (await routerRetries("decode_failed"));
    const results = load(STREAMS, (_i, count) => {
      if (count === 2) midStream++;
    });
    const done = await killUnderLoad("decode 0", async () => midStream >= 5 && (await decodeStatus("decode 0")).runningSequences > 0, results);
    expectExact(done, "decode 0 killed");
    const migrated = (await routerRetries("decode_unavailable")) + (await routerRetries("decode_failed")) - migrated0;
    report.push(
      `kill -9 decode 0 (mid-stream): ${STREAMS} streams exact, ${migrated} requests migrated; restarted (${((Date.now() - t0) / 1000).toFixed(1)} s)`,
    );
    expect(migrated, "requests migrated off the killed decode instance").toBeGreaterThan(0);
  }, 180_000);

  it("kill -9 of expert-host 3 (shard 1's second replica): dispatches fail over, every stream completes exactly and it is restarted", async () => {
    let started = 0;
    const t0 = Date.now();
    const results = load(STREAMS, (_i, count) => {
      if (count === 1) started++;
    });
    expect(instance("expert-host 3").shard).toBe(1);
    const done = await killUnderLoad("expert-host 3", async () => started >= 5, results);
    expectExact(done, "expert-host 3 killed");
    report.push(`kill -9 expert-host 3: ${STREAMS} streams exact, restarted (${((Date.now() - t0) / 1000).toFixed(1)} s)`);
  }, 180_000);

  it("afterwards every service is up and the cluster serves 50 streams exactly; each restart was printed once", async () => {
    const now = current();
    expect(now.instances).toHaveLength(first.instances.length);
    for (const i of now.instances) expect(isAlive(i.pid), `${i.role} ${i.index} alive`).toBe(true);
    expect(launcher.exitCode, "the launcher kept running").toBeNull();
    expectExact(await Promise.all(load(STREAMS)), "after the kills");
    expect(
      stderr()
        .match(/^restarted\s+.*$/gm)
        ?.map((l) => l.split(/\s+/).slice(1, 3).join(" ")),
    ).toEqual(["prefill 0", "decode 0", "expert-host 3"]);
  }, 180_000);

  it("a second moela cluster on the same state dir, port or queue prefix fails at once and changes nothing of the first", async () => {
    const clusterJson = readFileSync(join(stateDir(), "cluster.json"), "utf8");
    const lock = readFileSync(join(stateDir(), "launcher.lock"), "utf8");
    const pids = allPids();
    const port = new URL(first.url).port;
    const attempts: Array<[string, string[], RegExp]> = [
      [
        "same state dir",
        ["--state-dir", stateDir(), "--port", "0", "--queue-prefix", `other-${randomUUID().slice(0, 8)}`],
        /is in use by moela cluster pid \d+/,
      ],
      ["same port", ["--state-dir", join(dir, "second-port"), "--port", port], new RegExp(`127\\.0\\.0\\.1:${port} is in use`)],
      [
        "same queue prefix in the same Redis",
        ["--state-dir", join(dir, "second-prefix"), "--port", "0", "--redis-url", first.redis.url, "--queue-prefix", queuePrefix],
        new RegExp(`queue prefix "${queuePrefix}" .* is in use by moela cluster pid ${launcher.pid}`),
      ],
    ];
    for (const [what, args, message] of attempts) {
      const r = await runMoelaCluster(args);
      expect(r.code, `${what}: exit code\n${r.stderr}`).toBe(1);
      expect(r.stderr, what).toMatch(message);
      expect(r.stderr, `${what}: nothing started`).not.toMatch(/^(starting|redis)\s/m);
      // Node and tsx start-up on a loaded machine is most of it.
      expect(r.ms, `${what}: refused at once`).toBeLessThan(20_000);
      report.push(`second cluster, ${what}: refused in ${(r.ms / 1000).toFixed(1)} s`);
    }
    expect(readFileSync(join(stateDir(), "cluster.json"), "utf8")).toBe(clusterJson);
    expect(readFileSync(join(stateDir(), "launcher.lock"), "utf8")).toBe(lock);
    expect(pids.filter((p) => !isAlive(p))).toEqual([]);
    expectExact(await Promise.all(load(5)), "the first cluster after the refusals");
  }, 180_000);

  it("kill -9 of the launcher: no service and no Redis is left running within seconds", async () => {
    const pids = allPids();
    expect(pids.length).toBe(first.instances.length + 1);
    launcher.kill("SIGKILL");
    await launcherExit;
    const t0 = Date.now();
    await vi.waitFor(() => expect(pids.filter(isAlive), "every service to exit").toEqual([]), { timeout: 15_000, interval: 100 });
    report.push(`kill -9 of the launcher: all ${pids.length} processes gone in ${((Date.now() - t0) / 1000).toFixed(1)} s`);
  }, 60_000);
});
