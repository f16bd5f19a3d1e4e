// The launcher library against stand-in service processes (fixtures/fake-service.ts): start order,
// the flags each role gets, cluster.json and logs, and every way start-up or shutdown can go wrong.
// Real child processes, real gRPC health, real Redis on 127.0.0.1:6379.
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { CancelledError } from "@moela/core";
import { afterAll, describe, expect, it } from "vitest";
import { ServiceStartError, startCluster, type ClusterOptions, type ProgressEvent, type ServiceCommand } from "../../../services/cli/src/launcher.js";
import { isAlive as alive } from "../../helpers/cluster.js";

const FAKE = fileURLToPath(new URL("./fixtures/fake-service.ts", import.meta.url));
const fakeCommand: ServiceCommand = (role) => ({ file: process.execPath, args: ["--import", "tsx", FAKE, "--role", role] });
const dirs: string[] = [];
afterAll(() => {
  for (const d of dirs) rmSync(d, { recursive: true, force: true });
});

function options(extra: Partial<ClusterOptions> = {}): ClusterOptions & { stateDir: string } {
  const stateDir = mkdtempSync(join(tmpdir(), "moela-launcher-"));
  dirs.push(stateDir);
  return { command: fakeCommand, stateDir, port: 0, stopGraceMs: 3_000, startupTimeoutMs: 60_000, queuePrefix: `t-${process.pid}`, ...extra };
}

describe("startCluster with stand-in services", () => {
  it("starts expert-hosts, then decode and prefill wired to them, then the router wired to decode; stop leaves nothing", async () => {
    const events: ProgressEvent[] = [];
    const o = options({ expertHosts: 3, decode: 2, prefill: 1, precision: "paper", onProgress: (e) => events.push(e) });
    const cluster = await startCluster(o);
    const pids = cluster.processes.map((p) => p.pid!);
    try {
      const started = events.filter((e) => e.kind === "starting").map((e) => (e as { label: string }).label);
      expect(started).toEqual(["expert-host 0", "expert-host 1", "expert-host 2", "decode 0", "decode 1", "prefill 0", "router 0"]);
      // every expert-host was healthy before the first decode/prefill was spawned
      const firstDecode = events.findIndex((e) => e.kind === "starting" && e.label === "decode 0");
      const healthyHosts = events.slice(0, firstDecode).filter((e) => e.kind === "healthy" && e.label.startsWith("expert-host"));
      expect(healthyHosts).toHaveLength(3);

      const byLabel = new Map(cluster.processes.map((p) => [p.label, p]));
      const argOf = (label: string, flag: string) => {
        const argv = byLabel.get(label)!.readyLine!["argv"] as string[];
        return argv[argv.indexOf(flag) + 1];
      };
      const hostAddrs = ["expert-host 0", "expert-host 1", "expert-host 2"].map((l) => byLabel.get(l)!.readyLine!.grpc);
      expect(argOf("expert-host 2", "--shard-index")).toBe("2");
      expect(argOf("expert-host 2", "--shard-count")).toBe("3");
      expect(argOf("decode 1", "--expert-hosts")).toBe(hostAddrs.join(","));
      expect(argOf("prefill 0", "--expert-hosts")).toBe(hostAddrs.join(","));
      expect(argOf("prefill 0", "--queue-prefix")).toBe(o.queuePrefix);
      expect(argOf("router 0", "--decode")).toBe(["decode 0", "decode 1"].map((l) => byLabel.get(l)!.readyLine!.grpc).join(","));
      expect(argOf("router 0", "--precision")).toBe("paper");
      expect(argOf("router 0", "--redis-url")).toBe(cluster.redis.url);

      const file = JSON.parse(readFileSync(join(o.stateDir, "cluster.json"), "utf8"));
      expect(file).toEqual(JSON.parse(JSON.stringify(cluster.info)));
      expect(file.served_model_name).toBe("fake-model");
      expect(file.url).toMatch(/^http:\/\/127\.0\.0\.1:\d+$/);
      expect(file.openai_base_url).toBe(`${file.url}/v1`);
      expect(file.launcher_pid).toBe(process.pid);
      expect(file.topology).toEqual({ prefill: 1, decode: 2, expert_hosts: 3 });
      expect(file.instances.map((i: { role: string; index: number }) => `${i.role} ${i.index}`)).toEqual([
        "router 0",
        "prefill 0",
        "decode 0",
        "decode 1",
        "expert-host 0",
        "expert-host 1",
        "expert-host 2",
      ]);
      expect(file.instances.map((i: { shard?: number }) => i.shard)).toEqual([undefined, undefined, undefined, undefined, 0, 1, 2]);
      expect(file.curl).toContain(`${file.url}/v1/completions`);
      for (const inst of file.instances) {
        expect(pids).toContain(inst.pid);
        expect(readFileSync(inst.log, "utf8")).toContain('"event":"ready"');
        const res = await fetch(inst.metrics);
        expect(res.status).toBe(200);
      }
      expect(pids.every(alive)).toBe(true);
    } finally {
      await cluster.stop();
    }
    expect(pids.filter(alive)).toEqual([]);
    expect(existsSync(join(o.stateDir, "cluster.json"))).toBe(false);
    await cluster.stop(); // idempotent
  });

  it("when a child dies during start-up, stops the others and fails with that child's last log lines", async () => {
    const events: ProgressEvent[] = [];
    const o = options({ serviceArgs: { decode: ["--fake-die-before-ready"] }, onProgress: (e) => events.push(e) });
    const err = await startCluster(o).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(ServiceStartError);
    const e = err as ServiceStartError;
    expect(e.label).toBe("decode 0");
    expect(e.message).toMatch(/decode 0 exited with code 3/);
    expect(e.message).toContain("config.json is broken (fake)");
    expect(e.logPath).toBe(join(o.stateDir, "logs", "decode-0.log"));
    expect(readFileSync(e.logPath, "utf8")).toContain("config.json is broken (fake)");
    // the expert-hosts that were up are stopped, and the router never started
    const startedPids = events.flatMap((ev) => (ev.kind === "starting" && ev.pid !== undefined ? [ev.pid] : []));
    expect(startedPids.length).toBeGreaterThanOrEqual(3);
    expect(startedPids.filter(alive)).toEqual([]);
    expect(events.some((ev) => ev.kind === "starting" && ev.label === "router 0")).toBe(false);
    expect(existsSync(join(o.stateDir, "cluster.json"))).toBe(false);
  });

  it("rejects a ready line that lacks a field, naming it", async () => {
    const err = await startCluster(options({ expertHosts: 1, serviceArgs: { "expert-host": ["--fake-bad-ready"] } })).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(ServiceStartError);
    expect((err as Error).message).toMatch(/expert-host 0 printed a bad ready line: ready line: "grpc" must be host:port/);
  });

  it("times out naming the phase when a service never reports SERVING", async () => {
    const err = await startCluster(options({ expertHosts: 1, startupTimeoutMs: 4_000, serviceArgs: { "expert-host": ["--fake-not-serving"] } })).catch(
      (e: unknown) => e,
    );
    expect(err).toBeInstanceOf(Error);
    expect((err as Error).message).toMatch(
      /^cluster start-up timed out while starting the expert-hosts \(gRPC health not SERVING yet: expert-host 0\); logs in /,
    );
  });

  it("restart brings a killed service back with its flags at its former gRPC and metrics addresses", async () => {
    const o = options({ expertHosts: 1 });
    const cluster = await startCluster(o);
    try {
      const old = cluster.processes.find((p) => p.label === "decode 0")!;
      const before = old.readyLine!;
      await expect(cluster.restart("decode 0")).rejects.toThrow(/decode 0 \(pid \d+\) is still running/);
      await expect(cluster.restart("decode 7")).rejects.toThrow(/no service "decode 7"/);
      old.child.kill("SIGKILL");
      expect(await cluster.unexpectedExit).toBe(old);
      const fresh = await cluster.restart("decode 0");
      expect(fresh.pid).not.toBe(old.pid);
      expect(fresh.readyLine).toMatchObject({ grpc: before.grpc, metrics: before.metrics });
      expect(cluster.processes.filter((p) => p.label === "decode 0")).toEqual([fresh]);
      const argv = fresh.readyLine!["argv"] as string[];
      expect(argv[argv.indexOf("--expert-hosts") + 1]).toBe(cluster.processes.find((p) => p.label === "expert-host 0")!.readyLine!.grpc);
      const file = JSON.parse(readFileSync(join(o.stateDir, "cluster.json"), "utf8")) as { instances: Array<{ role: string; index: number; pid: number }> };
      expect(file.instances.find((i) => i.role === "decode" && i.index === 0)!.pid).toBe(fresh.pid);
    } finally {
      await cluster.stop();
    }
    expect(cluster.processes.map((p) => p.pid!).filter(alive)).toEqual([]);
  });

  it("SIGKILLs a service that ignores SIGTERM after the grace period", async () => {
    const events: ProgressEvent[] = [];
    const cluster = await startCluster(
      options({ expertHosts: 1, stopGraceMs: 3_000, serviceArgs: { decode: ["--fake-ignore-sigterm"] }, onProgress: (e) => events.push(e) }),
    );
    const decodePid = cluster.processes.find((p) => p.role === "decode")!.pid!;
    await cluster.stop();
    expect(alive(decodePid)).toBe(false);
    const stopped = events.find((e) => e.kind === "stopped" && e.label === "decode 0");
    expect(stopped).toMatchObject({ exit: { signal: "SIGKILL" } });
    const router = events.find((e) => e.kind === "stopped" && e.label === "router 0");
    expect(router).toMatchObject({ exit: { code: 0 } });
  });

  it("reports a service that exits after start-up through unexpectedExit", async () => {
    const o = options({ expertHosts: 1 });
    const trigger = join(o.stateDir, "die-now");
    const cluster = await startCluster({ ...o, serviceArgs: { prefill: ["--fake-die-when", trigger] } });
    try {
      writeFileSync(trigger, "");
      const dead = await cluster.unexpectedExit;
      expect(dead.label).toBe("prefill 0");
      expect(dead.exitInfo).toEqual({ code: 4, signal: null });
    } finally {
      await cluster.stop();
    }
    expect(cluster.processes.map((p) => p.pid!).filter(alive)).toEqual([]);
  });

  it("stops what it started and rejects with CancelledError when aborted during start-up", async () => {
    const ac = new AbortController();
    const events: ProgressEvent[] = [];
    const pending = startCluster(
      options({
        signal: ac.signal,
        onProgress: (e) => {
          events.push(e);
          if (e.kind === "starting" && e.label === "decode 0") ac.abort();
        },
      }),
    );
    const err = await pending.catch((e: unknown) => e);
    expect(err).toBeInstanceOf(CancelledError);
    const pids = events.flatMap((ev) => (ev.kind === "starting" && ev.pid !== undefined ? [ev.pid] : []));
    expect(pids.length).toBeGreaterThan(0);
    expect(pids.filter(alive)).toEqual([]);
  });

  it("refuses a folder without config.json before starting anything", async () => {
    await expect(startCluster(options({ model: "/nonexistent-model" }))).rejects.toThrow(/--model \/nonexistent-model: no config\.json/);
  });
});
