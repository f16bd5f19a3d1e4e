// The report's tables and ratios, and the SVG plot, from a hand-made bench result.
import { describe, expect, it } from "vitest";
import { buildReport, fmtMs, formatReport, latencySvg, niceStep, type LevelRun, type RequestRecord } from "@moela/loadgen";

/** n requests on `target`, each TTFT `ttft`, 4 tokens `itl` apart, one after the other. */
function serial(target: number, n: number, ttft: number, itl: number): RequestRecord[] {
  const e2e = ttft + 3 * itl;
  return Array.from({ length: n }, (_, index) => {
    const sendAt = index * e2e;
    return {
      target,
      index,
      sendAt,
      endAt: sendAt + e2e,
      chunks: [0, 1, 2, 3].map((k) => ({ at: sendAt + ttft + k * itl, tokens: 1 })),
      promptTokens: 32,
      outputTokens: 4,
      countsExact: true,
    };
  });
}

const runs: LevelRun[] = [
  { level: { kind: "concurrency", value: 1 }, records: [serial(0, 4, 100, 10), serial(1, 4, 150, 20)] },
  { level: { kind: "concurrency", value: 4 }, records: [serial(0, 4, 200, 20), serial(1, 4, 300, 40)] },
];
const targets = [
  { name: "cluster", url: "http://127.0.0.1:8000/v1", model: "tiny-v3" },
  { name: "other", url: "http://127.0.0.1:9000/v1", model: "tiny-v3" },
];

describe("buildReport", () => {
  const r = buildReport(runs, targets, { seed: 0 }, new Date(Date.UTC(2025, 0, 2, 3, 4, 5)));

  it("has per-target stats, ratios to the first target and one row per request", () => {
    expect(r.createdAt).toBe("2025-01-02T03:04:05.000Z");
    expect(r.levels.map((l) => l.label)).toEqual(["c=1", "c=4"]);
    expect(r.levels[0]!.stats[0]!.requestsPerS).toBeCloseTo(4 / 0.52, 12);
    const x = r.levels[0]!.ratios[0]!;
    expect(x.ttftMs).toEqual({ mean: 1.5, p50: 1.5, p90: 1.5, p99: 1.5 });
    expect(x.tpotMs.p50).toBe(2);
    expect(x.itlMs.p99).toBe(2);
    expect(x.e2eMs.p50).toBeCloseTo(210 / 130, 12);
    expect(x.requestsPerS).toBeCloseTo(130 / 210, 12);
    expect(r.requests).toHaveLength(16);
    expect(r.requests[0]).toEqual({ level: 0, target: 0, index: 0, promptTokens: 32, outputTokens: 4, ttftMs: 100, tpotMs: 10, e2eMs: 130 });
  });

  it("survives JSON (no NaN or Infinity anywhere)", () => {
    const text = JSON.stringify(r);
    expect(text).not.toMatch(/NaN|Infinity/);
    expect(JSON.parse(text)).toEqual(r);
  });

  it("formats one table per target and a ratio table", () => {
    const text = formatReport(r);
    expect(text).toContain("### cluster: http://127.0.0.1:8000/v1 (model tiny-v3)");
    expect(text).toContain("### other / cluster (ratios");
    const rows = text.split("\n").filter((l) => l.startsWith("| c=1"));
    expect(rows).toHaveLength(3);
    expect(rows[0]).toContain("| 4/0 ");
    expect(rows[0]).toContain("100 / 100 / 100");
    expect(rows[2]).toContain("1.50x / 1.50x / 1.50x");
    // Every line of a table has the same width.
    const table = text
      .split("\n")
      .filter((l) => l.startsWith("|"))
      .slice(0, 4);
    expect(new Set(table.map((l) => l.length)).size).toBe(1);
  });

  it("notes failures and per-chunk ITL", () => {
    const failed: RequestRecord = { ...serial(0, 1, 10, 1)[0]!, index: 1, error: "HTTP 429: busy" };
    const coarse = serial(0, 1, 10, 1).map((x) => ({ ...x, outputTokens: 8, countsExact: false }));
    const rep = buildReport([{ level: { kind: "rate", value: 2 }, records: [[...coarse, failed]] }], targets.slice(0, 1), {}, new Date(0));
    const text = formatReport(rep);
    expect(text).toContain("rate=2/s: 1 failed, first: HTTP 429: busy");
    expect(text).toContain("rate=2/s: 2.00 tokens per chunk");
  });
});

describe("latencySvg", () => {
  const svg = latencySvg(buildReport(runs, targets, {}, new Date(0)));

  it("is one standalone svg with three panels, two targets, p50 and p99 series", () => {
    expect(svg.startsWith('<svg xmlns="http://www.w3.org/2000/svg"')).toBe(true);
    expect(svg.trim().endsWith("</svg>")).toBe(true);
    expect(svg.match(/<polyline /g)).toHaveLength(2 * 2 + 2 * 2 + 2);
    expect(svg.match(/stroke-dasharray/g)).toHaveLength(1 + 2 * 2);
    expect(svg).toContain(">time to first token<");
    expect(svg).toContain(">concurrency<");
    expect(svg).toContain("cluster (http://127.0.0.1:8000/v1)");
    expect(svg).not.toMatch(/NaN|undefined|Infinity/);
    // Every opened element is closed.
    const open = (svg.match(/<(?!\/)[a-z]+[^>]*[^/]>/g) ?? []).length;
    const close = (svg.match(/<\/[a-z]+>/g) ?? []).length;
    expect(open).toBe(close);
  });

  it("escapes names", () => {
    const s = latencySvg(buildReport(runs.slice(0, 1), [{ ...targets[0]!, name: "a<b&c" }, targets[1]!], {}, new Date(0)));
    expect(s).toContain("a&lt;b&amp;c");
  });

  it("niceStep and fmtMs", () => {
    expect([0, 1, 7, 12, 99, 480, 2600].map(niceStep)).toEqual([1, 0.2, 2, 5, 20, 100, 1000]);
    expect([0.123, 9.996, 12.34, 456.7, null].map(fmtMs)).toEqual(["0.12", "10.00", "12.3", "457", "-"]);
  });
});
