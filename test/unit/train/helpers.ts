/** Shared pieces of the training tests: a tiny V3 config and a float64 finite-difference gradient check. */
import { expect } from "vitest";
import { parseModelConfig, Rng, type ModelConfig } from "@moela/engine";
import { f64Ops, initParams, type ParamStore, type Vec } from "@moela/train";

/** A DeepSeek-V3 model in miniature: q LoRA, YaRN, 1 dense + 1 MoE layer (8 experts in 4 groups, top-2 of 2 groups), shared expert, MTP. */
export function tinyConfigJson(over: Record<string, unknown> = {}): Record<string, unknown> {
  return {
    model_type: "deepseek_v3",
    vocab_size: 29,
    hidden_size: 16,
    intermediate_size: 24,
    moe_intermediate_size: 8,
    num_hidden_layers: 2,
    num_nextn_predict_layers: 1,
    num_attention_heads: 2,
    n_shared_experts: 1,
    n_routed_experts: 8,
    routed_scaling_factor: 2.5,
    kv_lora_rank: 8,
    q_lora_rank: 12,
    qk_rope_head_dim: 4,
    qk_nope_head_dim: 6,
    v_head_dim: 5,
    n_group: 4,
    topk_group: 2,
    num_experts_per_tok: 2,
    first_k_dense_replace: 1,
    norm_topk_prob: true,
    max_position_embeddings: 64,
    rms_norm_eps: 1e-6,
    rope_theta: 10000,
    rope_scaling: { type: "yarn", factor: 4, original_max_position_embeddings: 16, beta_fast: 32, beta_slow: 1, mscale: 1, mscale_all_dim: 1 },
    bos_token_id: 0,
    eos_token_id: 1,
    ...over,
  };
}

export function tinyConfig(over: Record<string, unknown> = {}): ModelConfig {
  return parseModelConfig(tinyConfigJson(over));
}

export function randn(rng: Rng): number {
  const u = 1 - rng.next();
  return Math.sqrt(-2 * Math.log(u)) * Math.cos(2 * Math.PI * rng.next());
}

export function randomVec(n: number, rng: Rng, std = 1): Float64Array {
  const v = new Float64Array(n);
  for (let i = 0; i < n; i++) v[i] = std * randn(rng);
  return v;
}

/** Float64 parameters with O(1)-scale weights (so every path matters), norms 1 +- 0.2, balancing biases +- 0.1. */
export function testParams(cfg: ModelConfig, seed = 1): ParamStore {
  const ps = initParams(cfg, f64Ops, seed, 1);
  const rng = new Rng(seed + 1000);
  for (const p of ps.list) {
    if (p.spec.init === "norm") for (let i = 0; i < p.data.length; i++) p.data[i] = 1 + 0.2 * randn(rng);
    else if (p.spec.init === "bias") for (let i = 0; i < p.data.length; i++) p.data[i] = 0.1 * randn(rng);
    else {
      const fanIn = p.shape[p.shape.length - 1]!;
      const s = 1 / Math.sqrt(fanIn);
      for (let i = 0; i < p.data.length; i++) p.data[i] = s * randn(rng);
    }
  }
  return ps;
}

/**
 * Central differences of `loss` against `grad` at `count` coordinates of `x` (spread over its length),
 * h = 1e-5 in float64. Each coordinate must agree within 1e-6 absolute + 1e-5 relative.
 * `stable(i)`: false skips a coordinate whose perturbation changes a discrete choice (the router's top-k).
 */
export function checkGrad(label: string, x: Vec, grad: Vec, loss: () => number, count = 12, stable: () => boolean = () => true): number {
  const h = 1e-5;
  const n = x.length;
  const step = Math.max(1, Math.floor(n / count));
  let checked = 0;
  let worst = 0;
  for (let i = (n * 7919) % step; i < n; i += step) {
    const x0 = x[i]!;
    x[i] = x0 + h;
    const lp = loss();
    const okP = stable();
    x[i] = x0 - h;
    const lm = loss();
    const okM = stable();
    x[i] = x0;
    if (!okP || !okM) continue;
    const num = (lp - lm) / (2 * h);
    const ana = grad[i]!;
    const err = Math.abs(num - ana) / (1e-6 + 1e-5 * Math.max(Math.abs(num), Math.abs(ana)));
    worst = Math.max(worst, err);
    if (err > 1) expect.fail(`${label}[${i}]: finite difference ${num}, analytic ${ana}`);
    checked++;
  }
  expect(checked, `${label}: coordinates checked`).toBeGreaterThan(0);
  return worst;
}

/** sum_i r_i y_i: a scalar loss whose gradient in y is r. */
export function dotLoss(r: Vec, y: Vec): number {
  let s = 0;
  for (let i = 0; i < y.length; i++) s += r[i]! * y[i]!;
  return s;
}
