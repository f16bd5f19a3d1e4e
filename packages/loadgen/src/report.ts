/**
 * The bench's report: per level, each target's statistics and, with more than one target, each other
 * target's figures as ratios to the first (target2 / target1: above 1 means larger, i.e. slower for a
 * latency and faster for a throughput). `formatReport` prints it as Markdown tables, readable in a
 * terminal and ready for docs/.
 */
import type { LevelRun, LoadLevel } from "./runner.js";
import { formatLevel } from "./runner.js";
import { levelStats, requestMetrics, type LevelStats, type Summary } from "./stats.js";

export interface TargetInfo {
  readonly name: string;
  readonly url: string;
  readonly model: string;
}

type Quantiles = { readonly mean: number | null; readonly p50: number | null; readonly p90: number | null; readonly p99: number | null };

export interface Ratios {
  readonly requestsPerS: number | null;
  readonly outputTokensPerS: number | null;
  readonly ttftMs: Quantiles;
  readonly itlMs: Quantiles;
  readonly tpotMs: Quantiles;
  readonly e2eMs: Quantiles;
}

export interface LevelReport {
  readonly level: LoadLevel;
  readonly label: string;
  /** One entry per target, in target order. */
  readonly stats: readonly LevelStats[];
  /** ratios[k - 1] = target k / target 0, for k >= 1. */
  readonly ratios: readonly Ratios[];
}

/** One measured request, compact (no chunk list). */
export interface RequestRow {
  readonly level: number;
  readonly target: number;
  readonly index: number;
  readonly promptTokens: number;
  readonly outputTokens: number;
  readonly ttftMs: number | null;
  readonly tpotMs: number | null;
  readonly e2eMs: number;
  readonly error?: string;
}

export interface BenchReport {
  readonly version: 1;
  readonly createdAt: string;
  /** The settings the bench ran with (free-form, for the record). */
  readonly config: Readonly<Record<string, unknown>>;
  readonly targets: readonly TargetInfo[];
  readonly levels: readonly LevelReport[];
  readonly requests: readonly RequestRow[];
}

function ratio(b: number | null | undefined, a: number | null | undefined): number | null {
  if (a === null || a === undefined || b === null || b === undefined || a === 0) return null;
  return b / a;
}

function quantileRatios(b: Summary | null, a: Summary | null): Quantiles {
  return { mean: ratio(b?.mean, a?.mean), p50: ratio(b?.p50, a?.p50), p90: ratio(b?.p90, a?.p90), p99: ratio(b?.p99, a?.p99) };
}

export function ratios(b: LevelStats, a: LevelStats): Ratios {
  return {
    requestsPerS: ratio(b.requestsPerS, a.requestsPerS),
    outputTokensPerS: ratio(b.outputTokensPerS, a.outputTokensPerS),
    ttftMs: quantileRatios(b.ttftMs, a.ttftMs),
    itlMs: quantileRatios(b.itlMs, a.itlMs),
    tpotMs: quantileRatios(b.tpotMs, a.tpotMs),
    e2eMs: quantileRatios(b.e2eMs, a.e2eMs),
  };
}

export function buildReport(runs: readonly LevelRun[], targets: readonly TargetInfo[], config: Record<string, unknown>, createdAt: Date): BenchReport {
  const levels = runs.map((run): LevelReport => {
    const stats = run.records.map((rs) => levelStats(rs));
    return { level: run.level, label: formatLevel(run.level), stats, ratios: stats.slice(1).map((s) => ratios(s, stats[0]!)) };
  });
  const requests = runs.flatMap((run, level) =>
    run.records.flatMap((rs) =>
      rs.map((r): RequestRow => {
        const m = requestMetrics(r);
        return {
          level,
          target: r.target,
          index: r.index,
          promptTokens: r.promptTokens,
          outputTokens: r.outputTokens,
          ttftMs: m.ttft,
          tpotMs: m.tpot,
          e2eMs: m.e2e,
          ...(r.error !== undefined ? { error: r.error } : {}),
        };
      }),
    ),
  );
  return { version: 1, createdAt: createdAt.toISOString(), config, targets, levels, requests };
}

/** ms with 3 significant-ish digits: 0.87, 12.3, 456. */
export function fmtMs(v: number | null | undefined): string {
  if (v === null || v === undefined || !Number.isFinite(v)) return "-";
  if (Math.abs(v) < 10) return v.toFixed(2);
  if (Math.abs(v) < 100) return v.toFixed(1);
  return v.toFixed(0);
}

export function fmtRate(v: number): string {
  return v < 10 ? v.toFixed(2) : v < 100 ? v.toFixed(1) : v.toFixed(0);
}

export function fmtRatio(v: number | null | undefined): string {
  return v === null || v === undefined || !Number.isFinite(v) ? "-" : `${v.toFixed(2)}x`;
}

function q(s: Summary | null): string {
  return s === null ? "-" : `${fmtMs(s.p50)} / ${fmtMs(s.p90)} / ${fmtMs(s.p99)}`;
}

function qr(s: Quantiles): string {
  return `${fmtRatio(s.p50)} / ${fmtRatio(s.p90)} / ${fmtRatio(s.p99)}`;
}

function table(header: readonly string[], rows: readonly (readonly string[])[]): string {
  const widths = header.map((h, i) => Math.max(h.length, ...rows.map((r) => r[i]!.length)));
  const line = (cells: readonly string[]) => `| ${cells.map((c, i) => c.padEnd(widths[i]!)).join(" | ")} |`;
  return [line(header), `|${widths.map((w) => "-".repeat(w + 2)).join("|")}|`, ...rows.map(line)].join("\n");
}

const LATENCY_HEADER = ["TTFT ms p50 / p90 / p99", "ITL ms p50 / p90 / p99", "TPOT ms p50 / p90 / p99", "E2E ms p50 / p90 / p99"];

/** One table per target, then one ratio table per other target. */
export function formatReport(r: BenchReport): string {
  const out: string[] = [];
  for (const [t, info] of r.targets.entries()) {
    out.push(`### ${info.name}: ${info.url} (model ${info.model})`, "");
    const rows = r.levels.map((l) => {
      const s = l.stats[t]!;
      return [
        l.label,
        `${s.completed}/${s.failed}`,
        fmtRate(s.requestsPerS),
        fmtRate(s.outputTokensPerS),
        fmtRate(s.meanInFlight),
        q(s.ttftMs),
        q(s.itlMs),
        q(s.tpotMs),
        q(s.e2eMs),
      ];
    });
    out.push(table(["load", "ok/fail", "req/s", "out tok/s", "in flight", ...LATENCY_HEADER], rows), "");
    const notes = r.levels.flatMap((l) => {
      const s = l.stats[t]!;
      const n: string[] = [];
      if (s.firstError !== undefined) n.push(`${l.label}: ${s.failed} failed, first: ${s.firstError}`);
      if (s.completed > 0 && !s.itlPerToken && s.tokensPerChunk > 1.01) {
        n.push(`${l.label}: ${s.tokensPerChunk.toFixed(2)} tokens per chunk and no per-chunk counts from the server: ITL is per chunk`);
      }
      return n;
    });
    if (notes.length > 0) out.push(...notes.map((n) => `- ${n}`), "");
  }
  for (let k = 1; k < r.targets.length; k++) {
    out.push(`### ${r.targets[k]!.name} / ${r.targets[0]!.name} (ratios; latency above 1x is slower, throughput above 1x is faster)`, "");
    const rows = r.levels.map((l) => {
      const x = l.ratios[k - 1]!;
      return [l.label, fmtRatio(x.requestsPerS), fmtRatio(x.outputTokensPerS), qr(x.ttftMs), qr(x.itlMs), qr(x.tpotMs), qr(x.e2eMs)];
    });
    out.push(table(["load", "req/s", "out tok/s", ...LATENCY_HEADER.map((h) => h.replace(" ms", ""))], rows), "");
  }
  return out.join("\n");
}
