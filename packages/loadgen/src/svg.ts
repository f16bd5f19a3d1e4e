/**
 * Latency against load as a standalone SVG (no scripts, no fonts to fetch): three panels, TTFT, TPOT and
 * output tokens/s, against the bench's load levels (concurrency or request rate), one colour per target,
 * p50 solid and p99 dashed. The levels sit evenly spaced along x (sweeps are usually geometric: 1, 4, 16),
 * each labelled with its value.
 */
import type { BenchReport } from "./report.js";
import type { LevelStats } from "./stats.js";

const COLOURS = ["#1f6fb4", "#d0492a", "#2a9d46", "#8a56c2"];
const PANEL_W = 340;
const PANEL_H = 230;
const MARGIN = { left: 62, right: 18, top: 56, bottom: 52 };

interface Series {
  readonly target: number;
  readonly dashed: boolean;
  readonly values: readonly (number | null)[];
}

interface Panel {
  readonly title: string;
  readonly unit: string;
  readonly series: readonly Series[];
}

function esc(s: string): string {
  return s.replace(/&/g, "&amp;").replace(/</g, "&lt;").replace(/>/g, "&gt;").replace(/"/g, "&quot;");
}

/** 1, 2 or 5 times a power of ten, at least max / 5, so the axis has about five steps. */
export function niceStep(max: number): number {
  if (!(max > 0)) return 1;
  const raw = max / 5;
  const p = 10 ** Math.floor(Math.log10(raw));
  for (const m of [1, 2, 5, 10]) if (m * p >= raw) return m * p;
  return 10 * p;
}

function tickLabel(v: number): string {
  if (v === 0) return "0";
  if (Math.abs(v) >= 1000) return `${+(v / 1000).toFixed(1)}k`;
  return `${+v.toPrecision(3)}`;
}

function fmt(v: number): string {
  return (Math.round(v * 10) / 10).toString();
}

function panels(r: BenchReport): Panel[] {
  const per = (pick: (s: LevelStats) => number | null, dashed: boolean) =>
    r.targets.map((_, t): Series => ({ target: t, dashed, values: r.levels.map((l) => pick(l.stats[t]!)) }));
  return [
    { title: "time to first token", unit: "ms", series: [...per((s) => s.ttftMs?.p50 ?? null, false), ...per((s) => s.ttftMs?.p99 ?? null, true)] },
    { title: "time per output token", unit: "ms", series: [...per((s) => s.tpotMs?.p50 ?? null, false), ...per((s) => s.tpotMs?.p99 ?? null, true)] },
    { title: "output throughput", unit: "tokens/s", series: per((s) => (s.completed > 0 ? s.outputTokensPerS : null), false) },
  ];
}

export function latencySvg(r: BenchReport): string {
  const ps = panels(r);
  const width = ps.length * (PANEL_W + MARGIN.left + MARGIN.right);
  const height = PANEL_H + MARGIN.top + MARGIN.bottom + 24;
  const n = r.levels.length;
  const xAxis = r.levels[0]?.level.kind === "rate" ? "request rate (req/s)" : "concurrency";
  const out: string[] = [
    `<svg xmlns="http://www.w3.org/2000/svg" width="${width}" height="${height}" viewBox="0 0 ${width} ${height}" font-family="sans-serif" font-size="11">`,
    `<rect width="${width}" height="${height}" fill="#ffffff"/>`,
  ];
  // Legend: one colour per target, then the line styles.
  let lx = MARGIN.left;
  for (const [t, info] of r.targets.entries()) {
    const c = COLOURS[t % COLOURS.length]!;
    out.push(`<rect x="${lx}" y="10" width="12" height="12" fill="${c}"/>`, `<text x="${lx + 17}" y="20">${esc(`${info.name} (${info.url})`)}</text>`);
    lx += 30 + 7 * (info.name.length + info.url.length);
  }
  out.push(
    `<line x1="${lx}" y1="16" x2="${lx + 24}" y2="16" stroke="#333" stroke-width="2"/>`,
    `<text x="${lx + 29}" y="20">p50</text>`,
    `<line x1="${lx + 60}" y1="16" x2="${lx + 84}" y2="16" stroke="#333" stroke-width="2" stroke-dasharray="5,3"/>`,
    `<text x="${lx + 89}" y="20">p99</text>`,
  );
  for (const [pi, p] of ps.entries()) {
    const x0 = pi * (PANEL_W + MARGIN.left + MARGIN.right) + MARGIN.left;
    const y0 = MARGIN.top;
    const all = p.series.flatMap((s) => s.values.filter((v): v is number => v !== null && Number.isFinite(v)));
    const step = niceStep(Math.max(0, ...all));
    const yMax = step * Math.max(1, Math.ceil(Math.max(0, ...all) / step));
    const px = (i: number) => x0 + (n <= 1 ? PANEL_W / 2 : (i * PANEL_W) / (n - 1));
    const py = (v: number) => y0 + PANEL_H - (v / yMax) * PANEL_H;
    out.push(`<text x="${x0 + PANEL_W / 2}" y="${y0 - 10}" text-anchor="middle" font-size="13" font-weight="bold">${esc(p.title)}</text>`);
    for (let v = 0; v <= yMax + step / 2; v += step) {
      out.push(
        `<line x1="${x0}" y1="${fmt(py(v))}" x2="${x0 + PANEL_W}" y2="${fmt(py(v))}" stroke="#e3e3e3"/>`,
        `<text x="${x0 - 6}" y="${fmt(py(v) + 4)}" text-anchor="end">${tickLabel(v)}</text>`,
      );
    }
    out.push(
      `<text x="${x0 - 46}" y="${y0 + PANEL_H / 2}" text-anchor="middle" transform="rotate(-90 ${x0 - 46} ${y0 + PANEL_H / 2})">${esc(p.unit)}</text>`,
      `<line x1="${x0}" y1="${y0 + PANEL_H}" x2="${x0 + PANEL_W}" y2="${y0 + PANEL_H}" stroke="#333"/>`,
      `<line x1="${x0}" y1="${y0}" x2="${x0}" y2="${y0 + PANEL_H}" stroke="#333"/>`,
    );
    for (const [i, l] of r.levels.entries()) {
      const label = l.level.kind === "rate" && !Number.isFinite(l.level.value) ? "inf" : String(l.level.value);
      out.push(`<text x="${fmt(px(i))}" y="${y0 + PANEL_H + 16}" text-anchor="middle">${label}</text>`);
    }
    out.push(`<text x="${x0 + PANEL_W / 2}" y="${y0 + PANEL_H + 36}" text-anchor="middle">${xAxis}</text>`);
    for (const s of p.series) {
      const c = COLOURS[s.target % COLOURS.length]!;
      const pts = s.values.flatMap((v, i) => (v === null || !Number.isFinite(v) ? [] : [[px(i), py(v)] as const]));
      const dash = s.dashed ? ` stroke-dasharray="5,3"` : "";
      if (pts.length > 1)
        out.push(`<polyline fill="none" stroke="${c}" stroke-width="2"${dash} points="${pts.map(([x, y]) => `${fmt(x)},${fmt(y)}`).join(" ")}"/>`);
      for (const [x, y] of pts) out.push(`<circle cx="${fmt(x)}" cy="${fmt(y)}" r="3" fill="${c}"/>`);
    }
  }
  out.push("</svg>", "");
  return out.join("\n");
}
