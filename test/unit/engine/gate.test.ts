import { describe, expect, it } from "vitest";
import { createRouterScratch, parseModelConfig, routeTokens, type ModelConfig } from "@moela/engine";

/** A config with only what the router reads varied; the rest is a valid tiny V3. */
function cfg(over: Record<string, unknown>): ModelConfig {
  return parseModelConfig({
    model_type: "deepseek_v3",
    vocab_size: 16,
    hidden_size: 8,
    intermediate_size: 16,
    moe_intermediate_size: 8,
    num_hidden_layers: 2,
    num_attention_heads: 2,
    kv_lora_rank: 4,
    q_lora_rank: null,
    qk_rope_head_dim: 2,
    qk_nope_head_dim: 2,
    v_head_dim: 2,
    n_routed_experts: 8,
    n_shared_experts: 1,
    num_experts_per_tok: 2,
    n_group: 4,
    topk_group: 2,
    first_k_dense_replace: 1,
    norm_topk_prob: true,
    routed_scaling_factor: 2.5,
    ...over,
  });
}

const logit = (p: number) => Math.log(p / (1 - p)); // inverse sigmoid

function route(c: ModelConfig, logits: number[], bias: number[] | null) {
  const ids = new Int32Array(c.numExpertsPerTok);
  const w = new Float32Array(c.numExpertsPerTok);
  routeTokens(c, Float32Array.from(logits), 1, bias ? Float32Array.from(bias) : null, ids, w, createRouterScratch(c));
  return { ids: Array.from(ids), weights: Array.from(w) };
}

describe("V3 noaux_tc router", () => {
  it("uses the correction bias to choose experts but never in the weights", () => {
    const c = cfg({ n_group: 1, topk_group: 1 });
    const scores = [0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2];
    // Bias lifts experts 6 and 7 above all others for selection.
    const bias = [0, 0, 0, 0, 0, 0, 1, 1];
    const r = route(c, scores.map(logit), bias);
    expect(r.ids.sort()).toEqual([6, 7]);
    // Weights are the unbiased sigmoid scores 0.3, 0.2, normalised, times 2.5.
    const byId = new Map(r.ids.map((id, j) => [id, r.weights[j]!]));
    expect(byId.get(6)).toBeCloseTo((0.3 / 0.5) * 2.5, 6);
    expect(byId.get(7)).toBeCloseTo((0.2 / 0.5) * 2.5, 6);
  });

  it("limits experts to the topk_group groups with the best top-2 sums", () => {
    const c = cfg({ n_group: 4, topk_group: 2 });
    // Groups of 2: g0 = {0,1}, g1 = {2,3}, g2 = {4,5}, g3 = {6,7}.
    // Expert 0 is the single best expert, but g0's top-2 sum (0.95 + 0.05) loses to g1 and g2.
    const scores = [0.95, 0.05, 0.6, 0.6, 0.7, 0.55, 0.1, 0.1];
    const r = route(c, scores.map(logit), null);
    expect(r.ids).toEqual([4, 2]); // best two among groups 1 and 2 (ties to the lower id)
    expect(r.ids).not.toContain(0);
  });

  it("scores groups with biased scores", () => {
    const c = cfg({ n_group: 4, topk_group: 1 });
    const scores = [0.9, 0.9, 0.5, 0.5, 0.1, 0.1, 0.1, 0.1];
    const bias = [0, 0, 0, 0, 0, 0, 2, 0];
    const r = route(c, scores.map(logit), bias);
    expect(r.ids).toEqual([6, 7]); // group 3 wins on its biased top-2 sum (2.1 + 0.1)
  });

  it("skips normalisation when norm_topk_prob is false but still scales", () => {
    const c = cfg({ n_group: 1, topk_group: 1, norm_topk_prob: false });
    const scores = [0.9, 0.8, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1];
    const r = route(c, scores.map(logit), null);
    expect(r.ids).toEqual([0, 1]);
    expect(r.weights[0]).toBeCloseTo(0.9 * 2.5, 6);
    expect(r.weights[1]).toBeCloseTo(0.8 * 2.5, 6);
  });
});

describe("V2 routers", () => {
  const v2 = (over: Record<string, unknown>) =>
    cfg({
      model_type: "deepseek_v2",
      scoring_func: "softmax",
      topk_method: "greedy",
      n_group: 1,
      topk_group: 1,
      routed_scaling_factor: 1.5,
      norm_topk_prob: false,
      ...over,
    });

  it("greedy: softmax top-k, weights scaled when not normalised", () => {
    const c = v2({});
    const logits = [0, 1, 2, 3, 0, 0, 0, 0];
    const r = route(c, logits, null);
    const z = logits.reduce((s, x) => s + Math.exp(x), 0);
    expect(r.ids).toEqual([3, 2]);
    expect(r.weights[0]).toBeCloseTo((Math.exp(3) / z) * 1.5, 6);
    expect(r.weights[1]).toBeCloseTo((Math.exp(2) / z) * 1.5, 6);
  });

  it("greedy with norm_topk_prob normalises and does not scale", () => {
    const c = v2({ norm_topk_prob: true });
    const r = route(c, [0, 1, 2, 3, 0, 0, 0, 0], null);
    expect(r.weights[0]! + r.weights[1]!).toBeCloseTo(1, 6);
    expect(r.weights[0]! / r.weights[1]!).toBeCloseTo(Math.E, 5);
  });

  it("group_limited_greedy scores a group by its max", () => {
    const c = v2({ topk_method: "group_limited_greedy", n_group: 4, topk_group: 1 });
    // g0 = {0,1}: max 2.0; g1 = {2,3}: max 2.5 (sum would lose to g0's 2.0+1.9).
    const r = route(c, [2.0, 1.9, 2.5, -3, 0, 0, 0, 0], null);
    expect(r.ids).toEqual([2, 3]);
  });
});
