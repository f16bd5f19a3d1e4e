/**
 * The cluster benchmark's readings of a running cluster (scripts/bench/cluster.ts): every instance's /metrics at one
 * moment, the increase of a metric between two such snapshots, and CPU per output token by process.
 */
import { cpus } from "node:os";
import { PerformanceObserver, constants as perfConstants, type PerformanceEntry } from "node:perf_hooks";
import { errorMessage } from "@moela/core";
import type { ClusterInfo, InstanceInfo } from "../../services/cli/src/launcher.js";
import { metricSum, scrapeMetrics, type MetricSamples } from "../lib/metrics-text.js";

async function scrape(i: InstanceInfo): Promise<MetricSamples> {
  try {
    return await scrapeMetrics(i.metrics);
  } catch (err) {
    throw new Error(`${i.role} ${i.index}: ${errorMessage(err)}`, { cause: err });
  }
}

/** Per-instance scrapes of a whole cluster at one moment. */
export type Snapshot = Map<string, MetricSamples>;
/** What the readings need of a cluster: its instances and their /metrics URLs. */
export type Instances = Pick<ClusterInfo, "instances">;
const key = (i: InstanceInfo) => `${i.role}-${i.index}`;

export async function snapshot(info: Instances): Promise<Snapshot> {
  const out: Snapshot = new Map();
  for (const i of info.instances) out.set(key(i), await scrape(i));
  return out;
}

/** The metrics a delta() asked for that no instance exported: the report lists them. */
export const missingMetrics = new Set<string>();

/** Increase of a metric between two snapshots, summed over the instances of `roles`. */
export function delta(
  a: Snapshot,
  b: Snapshot,
  info: Instances,
  roles: string[],
  name: string,
  filter?: (l: string) => boolean,
  mayBeAbsent = false,
): number | undefined {
  let total: number | undefined;
  for (const i of info.instances) {
    if (!roles.includes(i.role)) continue;
    const after = metricSum(b.get(key(i))!, name, filter);
    if (after === undefined) continue;
    total = (total ?? 0) + after - (metricSum(a.get(key(i))!, name, filter) ?? 0);
  }
  if (total === undefined && !mayBeAbsent) missingMetrics.add(`${name} (${roles.join("/")})`);
  return total;
}

export const MAJOR_GC = (labels: string): boolean => labels.includes('kind="major"');

/** Largest bucket bound that gained observations: the max of a histogram delta, to bucket resolution. */
export function histogramMax(a: Snapshot, b: Snapshot, info: Instances, roles: string[], name: string): number | undefined {
  const count = delta(a, b, info, roles, `${name}_count`);
  if (count === undefined || count === 0) return undefined;
  const bounds = new Set<number>();
  for (const s of b.values()) {
    for (const k of s.keys()) {
      const m = new RegExp(`^${name}_bucket\\{.*le="([^"]+)"`).exec(k);
      if (m && m[1] !== "+Inf") bounds.add(Number(m[1]));
    }
  }
  for (const le of [...bounds].sort((x, y) => x - y)) {
    const below = delta(a, b, info, roles, `${name}_bucket`, (l) => l.includes(`le="${le}"`)) ?? 0;
    if (below >= count) return le;
  }
  return Infinity;
}

/**
 * CPU time per output token, in core-milliseconds, by process: what a token costs the machine, which a busy VM's
 * noise moves far less than it moves tokens/s. `machineBusy` is the fraction of all cores' time not idle.
 */
export interface CpuPerToken {
  byProcess: Partial<Record<CpuProcess, number | undefined>>;
  /** V8's full (mark-compact) collections per 1,000 tokens, by process (the services' nodejs_gc_duration_seconds{kind="major"}). */
  fullGcs: Partial<Record<CpuProcess, number | undefined>>;
  total: number;
  machineBusy: number;
}
export type CpuProcess = "one process" | "decode" | "expert-hosts" | "prefill" | "router" | "benchmark client";

/** This process's full collections so far (the services count theirs in their metrics). */
let ownFullGcs = 0;
new PerformanceObserver((list) => {
  for (const e of list.getEntries())
    if ((e as PerformanceEntry & { detail?: { kind?: number } }).detail?.kind === perfConstants.NODE_PERFORMANCE_GC_MAJOR) ownFullGcs++;
}).observe({ entryTypes: ["gc"] });

/** The machine's busy and total core-seconds since boot (every core). */
function machineTimes(): { busy: number; total: number } {
  let busy = 0;
  let total = 0;
  for (const c of cpus()) {
    const t = c.times;
    busy += t.user + t.nice + t.sys + t.irq;
    total += t.user + t.nice + t.sys + t.irq + t.idle;
  }
  return { busy: busy / 1000, total: total / 1000 };
}

/** This process's CPU seconds (all threads). */
const ownCpuSeconds = (): number => {
  const u = process.cpuUsage();
  return (u.user + u.system) / 1e6;
};

/** A window over which CPU per token is taken: open it, run the workload, close it with the tokens produced. */
export function cpuWindow(): (tokens: number, services?: { a: Snapshot; b: Snapshot; info: Instances }) => CpuPerToken | undefined {
  const m0 = machineTimes();
  const own0 = ownCpuSeconds();
  const gcs0 = ownFullGcs;
  return (tokens, services) => {
    const m1 = machineTimes();
    if (tokens <= 0) return undefined;
    const ms = (seconds: number | undefined): number | undefined => (seconds === undefined ? undefined : (1000 * seconds) / tokens);
    const perKilo = (n: number | undefined): number | undefined => (n === undefined ? undefined : (1000 * n) / tokens);
    const own = ms(ownCpuSeconds() - own0)!;
    const ownGcs = perKilo(ownFullGcs - gcs0);
    const byProcess: CpuPerToken["byProcess"] = {};
    const fullGcs: CpuPerToken["fullGcs"] = {};
    if (services === undefined) {
      byProcess["one process"] = own;
      fullGcs["one process"] = ownGcs;
    } else {
      const { a, b, info } = services;
      const roles: Array<[CpuProcess, string]> = [
        ["decode", "decode"],
        ["expert-hosts", "expert-host"],
        ["prefill", "prefill"],
        ["router", "router"],
      ];
      for (const [name, r] of roles) {
        byProcess[name] = ms(delta(a, b, info, [r], "process_cpu_seconds_total"));
        // prom-client makes a kind's series at its first collection, so a service with none has no major series yet.
        const anyGc = delta(a, b, info, [r], "nodejs_gc_duration_seconds_count");
        fullGcs[name] = perKilo(anyGc === undefined ? undefined : (delta(a, b, info, [r], "nodejs_gc_duration_seconds_count", MAJOR_GC, true) ?? 0));
      }
      byProcess["benchmark client"] = own;
      fullGcs["benchmark client"] = ownGcs;
    }
    const total = Object.values(byProcess).reduce((x: number, y) => x + (y ?? 0), 0);
    return { byProcess, fullGcs, total, machineBusy: (m1.busy - m0.busy) / Math.max(1e-9, m1.total - m0.total) };
  };
}
