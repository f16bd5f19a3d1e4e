/**
 * What the benchmark scripts (scripts/bench/*.ts) share for their reports: the command line that reproduces a
 * run, machine facts, a plain-text table, a horizontal SVG bar chart, and writing <out>/<name>.json and
 * <out>/<name>.html (the text report in a <pre>, then the charts inline).
 */
import { mkdirSync, writeFileSync } from "node:fs";
import { availableParallelism, cpus, loadavg } from "node:os";
import { join, relative } from "node:path";
import type { Command } from "commander";

export const log = (msg: string): void => void process.stderr.write(`${msg}\n`);

/** The options the engine and kernel benchmarks end with, then parses: --no-yardsticks and --out. */
export function parseWithReportOptions(command: Command): void {
  command.option("--no-yardsticks", "skip the numpy yardsticks (no ratios)").option("--out <dir>", "where the JSON and HTML go", "bench-results").parse();
}

/** A comma-separated option value as its non-empty, trimmed items. */
export function commaList(v: string): string[] {
  return v
    .split(",")
    .map((s) => s.trim())
    .filter((s) => s !== "");
}

export function median(xs: readonly number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  if (s.length === 0) return NaN;
  return s.length % 2 === 1 ? s[s.length >> 1]! : (s[s.length / 2 - 1]! + s[s.length / 2]!) / 2;
}

/**
 * Nanoseconds per call of `fn` in each of `rounds` rounds, for micro-benchmarks of calls that take microseconds:
 * `fn` runs for `warmupMs` first (the JIT's tiers), then the calls per round double until one round takes
 * `roundMs`. The caller reports the best or the median.
 */
export function nsPerCallRounds(fn: () => unknown, rounds: number, roundMs = 20, warmupMs = 100): number[] {
  for (const t0 = performance.now(); performance.now() - t0 < warmupMs;) fn();
  let n = 1;
  for (let ms = 0; ms < roundMs; n *= 2) {
    const t0 = performance.now();
    for (let i = 0; i < n; i++) fn();
    ms = performance.now() - t0;
  }
  const out: number[] = [];
  for (let r = 0; r < rounds; r++) {
    const t0 = performance.now();
    for (let i = 0; i < n; i++) fn();
    out.push(((performance.now() - t0) * 1e6) / n);
  }
  return out;
}

/** `x` with `d` decimals, or "-" for null / NaN. */
export function fmt(x: number | null | undefined, d = 1): string {
  return x === null || x === undefined || !Number.isFinite(x) ? "-" : x.toFixed(d);
}

/** A ratio as "0.62x" (three decimals below 0.1, so small ones do not read as zero), "-" when missing. */
export function fmtX(r: number | null | undefined): string {
  return r === null || r === undefined || !Number.isFinite(r) ? "-" : `${r.toFixed(r < 0.1 ? 3 : 2)}x`;
}

/** a / b, or null when either is missing. */
export function ratio(a: number | null | undefined, b: number | null | undefined): number | null {
  return a === null || a === undefined || b === null || b === undefined || !(b > 0) || !Number.isFinite(a) ? null : a / b;
}

function shellQuote(s: string): string {
  return /^[\w@%+=:,./-]+$/.test(s) ? s : `'${s.replace(/'/g, `'\\''`)}'`;
}

/** The command that reproduces this run (`npx tsx <script> <args>`), to paste into docs/PERFORMANCE.md. */
export function commandLine(): string {
  const script = relative(process.cwd(), process.argv[1] ?? "");
  return ["npx", "tsx", script, ...process.argv.slice(2)].map(shellQuote).join(" ");
}

export interface MachineInfo {
  readonly cpu: string;
  readonly cores: number;
  readonly loadavg: number[];
  readonly node: string;
}

export function machineInfo(): MachineInfo {
  return { cpu: cpus()[0]?.model.trim() ?? "unknown", cores: availableParallelism(), loadavg: loadavg(), node: process.version };
}

export function describeMachine(m: MachineInfo): string {
  return `machine: ${m.cpu}, ${m.cores} cores, load average ${m.loadavg.map((x) => x.toFixed(2)).join(" ")}, node ${m.node}`;
}

/** A plain-text table: the first column left-aligned, the others right-aligned, two spaces between columns. */
export function textTable(headers: readonly string[], rows: readonly (readonly string[])[]): string[] {
  const widths = headers.map((h, i) => Math.max(h.length, ...rows.map((r) => (r[i] ?? "").length)));
  const line = (cells: readonly string[]): string =>
    cells
      .map((c, i) => (i === 0 ? c.padEnd(widths[i]!) : c.padStart(widths[i]!)))
      .join("  ")
      .trimEnd();
  return [line(headers), line(widths.map((w) => "-".repeat(w))), ...rows.map(line)];
}

export interface Bar {
  readonly label: string;
  readonly value: number;
  /** Printed after the value (e.g. "0.62x read bw"). */
  readonly note?: string;
  /** Bars with the same group are drawn together, under the group's name, in one colour. */
  readonly group?: string;
}

export interface BarChart {
  readonly title: string;
  readonly unit: string;
  readonly bars: readonly Bar[];
  /** Vertical reference lines (a yardstick). */
  readonly refs?: readonly { readonly value: number; readonly label: string }[];
}

const COLOURS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf"];

const esc = (s: string): string => s.replace(/&/g, "&amp;").replace(/</g, "&lt;").replace(/>/g, "&gt;");

/** A horizontal bar chart as an inline SVG element. */
export function barChartSvg(c: BarChart): string {
  const bars = c.bars.filter((b) => Number.isFinite(b.value));
  const W = 900;
  const barH = 14;
  const gap = 4;
  const groupGap = 18;
  const m = { l: 230, r: 170, t: 44, b: 34 };
  const refs = (c.refs ?? []).filter((r) => Number.isFinite(r.value) && r.value > 0);
  const max = Math.max(1e-9, ...bars.map((b) => b.value), ...refs.map((r) => r.value)) * 1.05;
  const x = (v: number): number => m.l + (v / max) * (W - m.l - m.r);
  const groups = [...new Set(bars.map((b) => b.group ?? ""))];
  const out: string[] = [];
  let y = m.t;
  let prev: string | undefined;
  for (const b of bars) {
    const g = b.group ?? "";
    if (g !== prev) {
      if (prev !== undefined) y += groupGap - gap;
      if (g !== "") {
        y += 12;
        out.push(`<text x="4" y="${y - 2}" font-weight="bold">${esc(g)}</text>`);
      }
      prev = g;
    }
    const colour = COLOURS[groups.indexOf(g) % COLOURS.length]!;
    const w = Math.max(0.5, x(b.value) - m.l);
    out.push(
      `<text x="${m.l - 6}" y="${y + barH - 3}" text-anchor="end">${esc(b.label)}</text>`,
      `<rect x="${m.l}" y="${y}" width="${w.toFixed(1)}" height="${barH}" fill="${colour}"/>`,
      `<text x="${(m.l + w + 4).toFixed(1)}" y="${y + barH - 3}">${esc(`${fmt(b.value, b.value >= 100 ? 0 : b.value >= 10 ? 1 : 2)}${b.note ? `  ${b.note}` : ""}`)}</text>`,
    );
    y += barH + gap;
  }
  const plotBottom = y + 4;
  const H = plotBottom + m.b;
  const axis = [
    `<line x1="${m.l}" y1="${m.t - 4}" x2="${m.l}" y2="${plotBottom}" stroke="#444"/>`,
    `<line x1="${m.l}" y1="${plotBottom}" x2="${W - m.r}" y2="${plotBottom}" stroke="#444"/>`,
    ...Array.from({ length: 6 }, (_, i) => (max / 5) * i).map(
      (t) => `<text x="${x(t).toFixed(1)}" y="${plotBottom + 14}" text-anchor="middle">${fmt(t, max >= 50 ? 0 : 1)}</text>`,
    ),
    `<text x="${(m.l + W - m.r) / 2}" y="${H - 4}" text-anchor="middle">${esc(c.unit)}</text>`,
    ...refs.flatMap((r, i) => [
      `<line x1="${x(r.value).toFixed(1)}" y1="${m.t - 4}" x2="${x(r.value).toFixed(1)}" y2="${plotBottom}" stroke="#000" stroke-dasharray="4 3"/>`,
      `<text x="${(x(r.value) + 3).toFixed(1)}" y="${m.t - 8 - 11 * i}" font-size="10">${esc(r.label)}</text>`,
    ]),
  ];
  return [
    `<svg xmlns="http://www.w3.org/2000/svg" width="${W}" height="${H}" font-family="sans-serif" font-size="11">`,
    `<text x="4" y="14" font-size="13">${esc(c.title)}</text>`,
    ...out,
    ...axis,
    `</svg>`,
  ].join("\n");
}

/** Write <out>/<name>.json and <out>/<name>.html (the text report, then the charts); returns both paths. */
export function writeReport(out: string, name: string, title: string, text: readonly string[], charts: readonly BarChart[], json: unknown): [string, string] {
  mkdirSync(out, { recursive: true });
  const jsonPath = join(out, `${name}.json`);
  const htmlPath = join(out, `${name}.html`);
  writeFileSync(jsonPath, `${JSON.stringify(json, null, 2)}\n`);
  writeFileSync(
    htmlPath,
    `<!doctype html><meta charset="utf-8"><title>${esc(title)}</title><body style="font-family:sans-serif"><h1>${esc(title)}</h1>` +
      `<pre>${esc(text.join("\n"))}</pre>\n${charts.map((c) => `<div style="margin:16px 0">${barChartSvg(c)}</div>`).join("\n")}</body>\n`,
  );
  return [jsonPath, htmlPath];
}
