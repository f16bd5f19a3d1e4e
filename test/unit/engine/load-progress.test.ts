/**
 * Weight-loading progress (LoadOptions.onProgress, loadExpertShard's onProgress): one report per part,
 * `total` fixed from the first report, `done` counting 1..total, bytes never shrinking and ending at the
 * loader's own byte count; the core bar helper draws nothing when stderr is not a terminal.
 */
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { weightLoadBar } from "@moela/core";
import { loadExpertShard, loadWeights, readModelConfig, type LoadProgress, type ModelConfig } from "@moela/engine";
import { makeCheckpoint, removeCheckpoints } from "../../helpers/checkpoints.js";

let dir = "";
let cfg: ModelConfig;

beforeAll(() => {
  dir = makeCheckpoint("tiny-v3");
  cfg = readModelConfig(dir);
});
afterAll(removeCheckpoints);

function expectCounting(seen: LoadProgress[], total: number, bytes: number): void {
  expect(seen.map((p) => p.done)).toEqual(Array.from({ length: total }, (_, i) => i + 1));
  for (const p of seen) expect(p.total).toBe(total);
  for (let i = 1; i < seen.length; i++) expect(seen[i]!.bytes).toBeGreaterThanOrEqual(seen[i - 1]!.bytes);
  expect(seen.at(-1)!.bytes).toBe(bytes);
}

describe("loadWeights onProgress", () => {
  it("reports embedding, each layer, norm + head and each MTP layer, ending at the loaded bytes", () => {
    const seen: LoadProgress[] = [];
    const { weights, bytes } = loadWeights(dir, cfg, { onProgress: (p) => seen.push(p) });
    expectCounting(seen, 1 + cfg.numHiddenLayers + 1 + weights.mtp.length, bytes);
  });

  it("counts no MTP parts when the MTP layers are not loaded", () => {
    const seen: LoadProgress[] = [];
    const { weights, bytes } = loadWeights(dir, cfg, { mtp: false, onProgress: (p) => seen.push(p) });
    expect(weights.mtp).toEqual([]);
    expectCounting(seen, cfg.numHiddenLayers + 2, bytes);
  });

  it("loads the same bytes with or without a callback", () => {
    expect(loadWeights(dir, cfg, { onProgress: () => {} }).bytes).toBe(loadWeights(dir, cfg).bytes);
  });
});

describe("loadExpertShard onProgress", () => {
  it("reports each MoE layer once, ending at the shard's bytes", () => {
    const seen: LoadProgress[] = [];
    const shard = loadExpertShard(
      dir,
      cfg,
      (_l, e) => e % 2 === 0,
      (p) => seen.push(p),
    );
    expect(shard.expertsByLayer.size).toBeGreaterThan(0);
    expectCounting(seen, shard.expertsByLayer.size, shard.bytes);
  });
});

describe("weightLoadBar", () => {
  it("draws nothing (returns undefined) when the stream is not a terminal, as in the services' JSON logs", () => {
    const notTty = { isTTY: false } as unknown as NodeJS.WriteStream;
    expect(weightLoadBar("loading", notTty)).toBeUndefined();
  });
});
