/**
 * The load generator's schedulers and the bench plan around them.
 *
 * - Closed loop at concurrency C: C workers, each sending its next request as soon as its last one ends
 *   (vLLM's --max-concurrency with every request ready at once).
 * - Open loop at rate λ: requests leave at Poisson arrival times whatever the server does (vLLM's
 *   --request-rate); an infinite rate sends them all at once.
 *
 * A bench runs each load level in turn. For each level and target, `warmup` requests (their own prompts)
 * run at the level's load first and are not counted. With two targets the level's measured requests are
 * split into `rounds` rounds; each round runs the same requests on one target, then on the other, and the
 * order flips every round (A B | B A | A B ...), so slow drift in the machine's speed hits both targets
 * alike. Each target runs alone while it is measured: two servers on one machine loaded at the same time
 * would slow each other down, unevenly. Both targets see the same prompts, lengths and arrival offsets.
 */
import type { Clock } from "./clock.js";
import type { RequestRecord } from "./stats.js";
import type { StreamEvent, Target } from "./target.js";
import type { RequestSpec } from "./workload.js";
import { poissonArrivals } from "./arrivals.js";
import { errorMessage } from "@moela/core";

/** The signal of a bench nobody can abort. */
const NEVER = new AbortController().signal;

export type LoadLevel = { readonly kind: "concurrency"; readonly value: number } | { readonly kind: "rate"; readonly value: number };

export type Phase = "warmup" | "measure";

export type ProgressEvent =
  | { readonly type: "phase"; readonly level: LoadLevel; readonly target: number; readonly phase: Phase; readonly round: number; readonly total: number }
  | { readonly type: "request"; readonly ok: boolean }
  | { readonly type: "phase-end" };

export interface BenchPlan {
  readonly targets: readonly Target[];
  readonly levels: readonly LoadLevel[];
  /** Measured requests per level (per target). */
  readonly numPrompts: number;
  /** Warm-up requests per level and target. */
  readonly warmup: number;
  /** Rounds per level (1 = each target runs the whole level in one go). */
  readonly rounds: number;
  /** The requests of level `level` (same for every target): `phase` chooses warm-up or measured ones. */
  readonly requests: (level: number, phase: Phase, count: number) => RequestSpec[];
  /** Seed of level `level`'s Poisson arrivals (open loop). */
  readonly arrivalSeed: (level: number) => number;
  readonly clock: Clock;
  readonly onProgress?: (ev: ProgressEvent) => void;
  /** Aborting stops new sends and aborts the ones in flight (they are recorded as failed). */
  readonly signal?: AbortSignal;
}

export interface LevelRun {
  readonly level: LoadLevel;
  /** Measured records per target, in request order. */
  readonly records: readonly (readonly RequestRecord[])[];
}

export function formatLevel(l: LoadLevel): string {
  return l.kind === "concurrency" ? `c=${l.value}` : `rate=${Number.isFinite(l.value) ? l.value : "inf"}/s`;
}

/** Splits 0..n-1 into `rounds` contiguous ranges whose sizes differ by at most one (empty ones dropped). */
export function splitRounds(n: number, rounds: number): Array<[number, number]> {
  const out: Array<[number, number]> = [];
  const r = Math.max(1, Math.min(rounds, n));
  for (let i = 0; i < r; i++) {
    const a = Math.floor((i * n) / r);
    const b = Math.floor(((i + 1) * n) / r);
    if (b > a) out.push([a, b]);
  }
  return out;
}

/** Which target goes first in global round g: the order flips every round. */
export function roundOrder(targets: number, g: number): number[] {
  const order = Array.from({ length: targets }, (_, i) => i);
  return g % 2 === 0 ? order : order.reverse();
}

export async function runBench(plan: BenchPlan): Promise<LevelRun[]> {
  const runs: LevelRun[] = [];
  let g = 0;
  for (const [li, level] of plan.levels.entries()) {
    const measured = plan.requests(li, "measure", plan.numPrompts);
    const warm = plan.warmup > 0 ? plan.requests(li, "warmup", plan.warmup) : [];
    const arrivals = level.kind === "rate" ? poissonArrivals(measured.length, level.value, plan.arrivalSeed(li)) : [];
    const warmArrivals = level.kind === "rate" ? poissonArrivals(warm.length, level.value, plan.arrivalSeed(li) ^ 0x77) : [];
    const records: RequestRecord[][] = plan.targets.map(() => new Array<RequestRecord>(measured.length));
    const warmed = plan.targets.map(() => false);
    for (const [ri, [a, b]] of splitRounds(measured.length, plan.rounds).entries()) {
      for (const t of roundOrder(plan.targets.length, g)) {
        if (plan.signal?.aborted) break;
        if (!warmed[t] && warm.length > 0) {
          plan.onProgress?.({ type: "phase", level, target: t, phase: "warmup", round: 0, total: warm.length });
          await runLoad(plan, t, level, warm, warmArrivals);
          plan.onProgress?.({ type: "phase-end" });
        }
        warmed[t] = true;
        const specs = measured.slice(a, b);
        const offsets = arrivals.slice(a, b).map((x) => x - arrivals[a]!);
        plan.onProgress?.({ type: "phase", level, target: t, phase: "measure", round: ri, total: specs.length });
        const got = await runLoad(plan, t, level, specs, offsets);
        for (const r of got) records[t]![r.index] = { ...r, round: ri };
        plan.onProgress?.({ type: "phase-end" });
      }
      g++;
    }
    runs.push({ level, records: records.map((rs) => rs.filter((r) => r !== undefined)) });
    if (plan.signal?.aborted) break;
  }
  return runs;
}

/** One batch of requests at one load on one target; records in request order. */
export function runLoad(
  plan: BenchPlan,
  target: number,
  level: LoadLevel,
  specs: readonly RequestSpec[],
  offsets: readonly number[],
): Promise<RequestRecord[]> {
  return level.kind === "concurrency" ? closedLoop(plan, target, specs, level.value) : openLoop(plan, target, specs, offsets);
}

async function closedLoop(plan: BenchPlan, target: number, specs: readonly RequestSpec[], concurrency: number): Promise<RequestRecord[]> {
  const out = new Array<RequestRecord>(specs.length);
  let next = 0;
  const worker = async () => {
    while (next < specs.length && !plan.signal?.aborted) {
      const i = next++;
      out[i] = await issue(plan, target, specs[i]!);
    }
  };
  await Promise.all(Array.from({ length: Math.max(1, Math.min(concurrency, specs.length)) }, worker));
  return out.filter((r) => r !== undefined);
}

async function openLoop(plan: BenchPlan, target: number, specs: readonly RequestSpec[], offsets: readonly number[]): Promise<RequestRecord[]> {
  const out = new Array<RequestRecord>(specs.length);
  const inFlight: Promise<void>[] = [];
  const start = plan.clock.now();
  for (const [i, spec] of specs.entries()) {
    const wait = start + (offsets[i] ?? 0) - plan.clock.now();
    if (wait > 0) await plan.clock.sleep(wait);
    if (plan.signal?.aborted) break;
    inFlight.push(issue(plan, target, spec).then((r) => void (out[i] = r)));
  }
  await Promise.all(inFlight);
  return out.filter((r) => r !== undefined);
}

/** Sends one request and timestamps what comes back; never throws (a failure is a record with `error`). */
async function issue(plan: BenchPlan, target: number, spec: RequestSpec): Promise<RequestRecord> {
  const { clock } = plan;
  const chunks: { at: number; tokens: number }[] = [];
  let usage: Extract<StreamEvent, { kind: "usage" }> | undefined;
  let exact = true;
  let error: string | undefined;
  const sendAt = clock.now();
  try {
    // The bench's signal itself: one listener per request on it would pile up (and warn) at high concurrency.
    for await (const ev of plan.targets[target]!.generate(spec, plan.signal ?? NEVER)) {
      if (ev.kind === "usage") usage = ev;
      else if (ev.tokens > 0) {
        chunks.push({ at: clock.now(), tokens: ev.tokens });
        exact &&= ev.exact;
      }
    }
  } catch (err) {
    error = errorMessage(err);
  }
  const endAt = clock.now();
  plan.onProgress?.({ type: "request", ok: error === undefined });
  const counted = chunks.reduce((n, c) => n + c.tokens, 0);
  return {
    target,
    index: spec.index,
    sendAt,
    endAt,
    chunks,
    promptTokens: usage?.promptTokens ?? spec.promptLen,
    outputTokens: usage?.completionTokens ?? counted,
    countsExact: exact,
    ...(error !== undefined ? { error } : {}),
  };
}
