// Length distributions and the seeded workload: parsing, bounds, determinism.
import { describe, expect, it } from "vitest";
import { InvalidArgumentError } from "@moela/core";
import {
  Rng,
  buildRequests,
  deriveSeed,
  formatLengthDist,
  parseIdRange,
  parseLengthDist,
  parseLengthList,
  sampleLength,
  type LengthDist,
} from "@moela/loadgen";

describe("parseLengthDist", () => {
  it.each<[string, LengthDist]>([
    ["128", { kind: "fixed", value: 128 }],
    ["fixed:7", { kind: "fixed", value: 7 }],
    [" uniform:64, 256 ", { kind: "uniform", min: 64, max: 256 }],
    ["normal:128,32", { kind: "normal", mean: 128, std: 32, min: 1, max: Number.POSITIVE_INFINITY }],
    ["normal:128,32,100,150", { kind: "normal", mean: 128, std: 32, min: 100, max: 150 }],
  ])("%s", (spec, want) => {
    expect(parseLengthDist(spec)).toEqual(want);
  });

  it.each(["0", "-3", "1.5", "abc", "uniform:10", "uniform:10,5", "normal:1", "normal:10,-1", "normal:10,2,5,4", "poisson:3", "fixed:", "file:"])(
    "rejects %s",
    (spec) => {
      expect(() => parseLengthDist(spec)).toThrow(InvalidArgumentError);
    },
  );

  it("file:PATH reads one length per line or a JSON array through the injected reader", () => {
    const files: Record<string, string> = { "a.txt": "# trace\n12\n\n40 # long\n7\n", "b.json": "[3, 5]" };
    expect(parseLengthDist("file:a.txt", (p) => files[p]!)).toEqual({ kind: "empirical", values: [12, 40, 7], source: "a.txt" });
    expect(parseLengthDist("file:b.json", (p) => files[p]!)).toMatchObject({ values: [3, 5] });
    expect(() => parseLengthDist("file:a.txt")).toThrow(/no file reader/);
    expect(() => parseLengthList("1\nx\n", "bad.txt")).toThrow(/bad.txt: entry 2/);
    expect(() => parseLengthList("", "empty.txt")).toThrow(/no lengths/);
  });

  it.each(["fixed:9", "uniform:1,5", "normal:10,2", "normal:10,2,8,12"])("formats %s back to itself", (spec) => {
    expect(formatLengthDist(parseLengthDist(spec))).toBe(spec);
  });
});

describe("sampleLength", () => {
  const draw = (spec: string, n = 5000) => {
    const rng = new Rng(1);
    const d = parseLengthDist(spec, () => "2\n9\n");
    return Array.from({ length: n }, () => sampleLength(d, rng));
  };

  it("uniform covers [min, max] and nothing else", () => {
    const xs = draw("uniform:3,6");
    expect(new Set(xs)).toEqual(new Set([3, 4, 5, 6]));
  });

  it("normal is clamped and centred on its mean", () => {
    const xs = draw("normal:50,20,40,70");
    expect(Math.min(...xs)).toBe(40);
    expect(Math.max(...xs)).toBe(70);
    const free = draw("normal:500,20");
    const mean = free.reduce((a, b) => a + b, 0) / free.length;
    expect(Math.abs(mean - 500)).toBeLessThan(1.5);
    expect(free.every((x) => Number.isInteger(x) && x >= 1)).toBe(true);
  });

  it("empirical draws only listed values", () => {
    expect(new Set(draw("file:x"))).toEqual(new Set([2, 9]));
  });
});

describe("buildRequests", () => {
  const spec = { input: parseLengthDist("uniform:5,9"), output: parseLengthDist("uniform:1,4"), prompt: { kind: "ids", lo: 3, hi: 999 } } as const;

  it("is a function of the seed: same seed same requests, other seed other requests", () => {
    expect(buildRequests(spec, 20, 7)).toEqual(buildRequests(spec, 20, 7));
    expect(buildRequests(spec, 20, 8)).not.toEqual(buildRequests(spec, 20, 7));
  });

  it("token-id prompts have exactly promptLen ids inside the range", () => {
    for (const r of buildRequests(spec, 50, 1)) {
      expect(Array.isArray(r.prompt)).toBe(true);
      expect(r.prompt).toHaveLength(r.promptLen);
      expect((r.prompt as number[]).every((id) => id >= 3 && id <= 999 && Number.isInteger(id))).toBe(true);
      expect(r.maxTokens).toBeGreaterThanOrEqual(1);
      expect(r.maxTokens).toBeLessThanOrEqual(4);
    }
    expect(buildRequests(spec, 3, 1).map((r) => r.index)).toEqual([0, 1, 2]);
  });

  it("word prompts have promptLen words", () => {
    const [r] = buildRequests({ ...spec, prompt: { kind: "words" } }, 1, 1);
    expect(typeof r!.prompt).toBe("string");
    expect((r!.prompt as string).split(" ")).toHaveLength(r!.promptLen);
  });

  it("derived seeds differ per level and phase", () => {
    const seeds = [deriveSeed(0, 0, 0), deriveSeed(0, 0, 1), deriveSeed(0, 1, 0), deriveSeed(1, 0, 0)];
    expect(new Set(seeds).size).toBe(4);
    expect(deriveSeed(5, 2, 1)).toBe(deriveSeed(5, 2, 1));
  });

  it("parseIdRange", () => {
    expect(parseIdRange("3:999")).toEqual({ lo: 3, hi: 999 });
    expect(() => parseIdRange("9:3")).toThrow(InvalidArgumentError);
    expect(() => parseIdRange("3-9")).toThrow(InvalidArgumentError);
  });
});
