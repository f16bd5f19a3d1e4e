// The paper's figures ("Insights into DeepSeek-V3", ISCA 2025) from the shipped configs: KV cache per token
// for DeepSeek-V3, Qwen2.5-72B and Llama-3.1-405B, and the EP decode bound at 50 and 900 GB/s.
import { describe, expect, it } from "vitest";
import { epDecodeBound, planModel, planToJson } from "@moela/planner";
import { fixture } from "./fixtures.js";

describe("KV cache bytes per token (bf16), as the paper states them", () => {
  it.each([
    ["deepseek-v3", 70_272, "61 layers x (512 + 64) latent x 2 B, MTP layer left out"],
    ["qwen2.5-72b-instruct", 327_680, "80 layers x 8 KV heads x 128 x 2 (K, V) x 2 B"],
    ["llama-3.1-405b", 516_096, "126 layers x 8 KV heads x 128 x 2 (K, V) x 2 B"],
  ] as const)("%s: %i (%s)", (name, bytes, _how) => {
    const json = planToJson(planModel(fixture(name)));
    expect(json.kv_bytes).toBe(2);
    expect(json.kv_cache_bytes_per_token).toBe(bytes);
  });

  it("scales with --kv-bytes and counts the MTP layer apart", () => {
    const fp8 = planToJson(planModel(fixture("deepseek-v3"), { kvBytes: 1 }));
    expect(fp8.kv_cache_bytes_per_token).toBe(35_136);
    const bf16 = planToJson(planModel(fixture("deepseek-v3")));
    expect(bf16.kv_cache_bytes_per_token_with_mtp).toBe(62 * 576 * 2);
  });
});

describe("EP decode bound, DeepSeek-V3 at the paper's topology", () => {
  const v3 = fixture("deepseek-v3");

  it("50 GB/s, --hidden 7000: 120.96 us, 241.92 us, 14.76 ms over 61 layers, ~67 tokens/s", () => {
    const ep = planToJson(planModel(v3, { hidden: 7000 })).ep_decode!;
    expect(ep).toMatchObject({
      bandwidth_gbps: 50,
      tokens_per_microbatch: 32,
      experts_per_token: 9,
      dispatch_bytes: 1,
      combine_bytes: 2,
      microbatches: 2,
      layers: 61,
    });
    expect(ep.comm_us_per_layer_microbatch).toBe(120.96);
    expect(ep.us_per_layer).toBe(241.92);
    expect(ep.tpot_ms).toBe(14.75712);
    expect(ep.tpot_ms.toFixed(2)).toBe("14.76");
    expect(ep.tokens_per_s).toBeCloseTo(67.764, 3);
    expect(Math.floor(ep.tokens_per_s)).toBe(67);
  });

  it("900 GB/s, --hidden 7000: 6.72 us, ~0.82 ms, ~1,200 tokens/s", () => {
    const ep = planToJson(planModel(v3, { hidden: 7000, bandwidthGBps: 900 })).ep_decode!;
    expect(ep.comm_us_per_layer_microbatch).toBe(6.72);
    expect(ep.us_per_layer).toBe(13.44);
    expect(ep.tpot_ms).toBeCloseTo(0.81984, 12);
    expect(ep.tpot_ms.toFixed(2)).toBe("0.82");
    expect(ep.tokens_per_s).toBeCloseTo(1219.75, 2);
    expect(Number(ep.tokens_per_s.toPrecision(2))).toBe(1200);
  });

  it("says which figures the paper prints exactly and which it rounds or truncates", () => {
    const at50 = planToJson(planModel(v3, { hidden: 7000 })).ep_decode!.paper!;
    expect(at50.figures.map((f) => [f.figure, f.agreement])).toEqual([
      ["commUsPerLayerMicrobatch", "exact"],
      ["usPerLayer", "exact"],
      ["tpotMs", "rounded"],
      ["tokensPerS", "truncated"],
    ]);
    const at900 = planToJson(planModel(v3, { hidden: 7000, bandwidthGBps: 900 })).ep_decode!.paper!;
    expect(at900.figures.map((f) => [f.figure, f.agreement])).toEqual([
      ["commUsPerLayerMicrobatch", "exact"],
      ["tpotMs", "rounded"],
      ["tokensPerS", "rounded"],
    ]);
    const notes = planModel(v3, { hidden: 7000 }).notes.join("\n");
    expect(notes).toMatch(/~67 tokens\/s is this truncated, not rounded \(rounding gives 68\)/);
    expect(notes).toMatch(/14\.76 ms is this rounded to 2 decimals/);
  });

  it("with the real hidden size 7,168 the first figure is 123.86 us, and the output says the paper used 7,000", () => {
    const plan = planModel(v3);
    const ep = planToJson(plan).ep_decode!;
    expect(ep.hidden).toBe(7168);
    expect(ep.comm_us_per_layer_microbatch.toFixed(2)).toBe("123.86");
    expect(ep.comm_us_per_layer_microbatch).toBeCloseTo(123.863_04, 9);
    // the paper comparison is made at 7,000 whatever hidden this run uses
    expect(ep.paper!.at_paper_inputs.comm_us_per_layer_microbatch).toBe(120.96);
    expect(plan.notes.join("\n")).toMatch(/the paper's "7K" hidden is 7,000; this run's 7,168/);
  });

  it("--hidden 7000 notes what the config's own 7,168 gives", () => {
    const plan = planModel(v3, { hidden: 7000 });
    expect(planToJson(plan).ep_decode!.at_config_hidden!.comm_us_per_layer_microbatch.toFixed(2)).toBe("123.86");
    expect(plan.notes.join("\n")).toMatch(/--hidden 7000 stands in for the config's hidden_size 7,168; with 7,168: 123\.86 us/);
  });

  it("notes that only 58 of the 61 layers dispatch, and what that bound would be", () => {
    const plan = planModel(v3, { hidden: 7000 });
    const ep = planToJson(plan).ep_decode!;
    expect(ep.moe_layers).toBe(58);
    expect(ep.moe_layers_only.tpot_ms).toBeCloseTo((241.92 * 58) / 1000, 12);
    expect(plan.notes.join("\n")).toMatch(/58 are MoE layers \(the other 3 are dense/);
  });

  it("makes no paper comparison away from the paper's topology", () => {
    expect(planToJson(planModel(v3, { bandwidthGBps: 100 })).ep_decode!.paper).toBeNull();
    expect(planToJson(planModel(v3, { microbatches: 1 })).ep_decode!.paper).toBeNull();
  });
});

describe("the conventions that reproduce the paper", () => {
  const paper = { tokensPerMicrobatch: 32, expertsPerToken: 9, dispatchBytes: 1, combineBytes: 2, microbatches: 2, layers: 61 };
  it("GB is 10^9 bytes and 7K is 7,000: other readings miss 120.96 us", () => {
    expect(epDecodeBound({ ...paper, bandwidthGBps: 50, hidden: 7000 }).commUsPerLayerMicrobatch).toBe(120.96);
    // 50 GiB/s would give 112.65 us; 7K = 7,168 gives 123.86 us
    expect(epDecodeBound({ ...paper, bandwidthGBps: (50 * 2 ** 30) / 1e9, hidden: 7000 }).commUsPerLayerMicrobatch).toBeCloseTo(112.65, 2);
    expect(epDecodeBound({ ...paper, bandwidthGBps: 50, hidden: 7168 }).commUsPerLayerMicrobatch).toBeCloseTo(123.86, 2);
  });

  it("each figure is the nearest double to the decimal (no 120.96000000000001)", () => {
    const b = epDecodeBound({ ...paper, bandwidthGBps: 50, hidden: 7000 });
    expect(JSON.stringify([b.commUsPerLayerMicrobatch, b.usPerLayer, b.tpotMs])).toBe("[120.96,241.92,14.75712]");
  });
});
