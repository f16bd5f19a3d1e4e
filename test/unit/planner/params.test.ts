// Parameter counts and FLOPs: exact sums written out by hand here, the figures the model makers publish
// (rounded as they print them), and the bundled tiny-v3 checkpoint's own tensors.
import { describe, expect, it } from "vitest";
import { readFileSync } from "node:fs";
import { planModel, planToJson } from "@moela/planner";
import { fixture } from "./fixtures.js";

describe("DeepSeek-V3, tensor by tensor", () => {
  const d = 7168;
  const V = 129_280;
  const mla = d * 1536 + 1536 + 1536 * 128 * 192 + d * 576 + 512 + 512 * 128 * 256 + 128 * 128 * d; // q_a, q_a_norm, q_b, kv_a, kv_a_norm, kv_b, o
  const expert = 3 * d * 2048;
  const moe = 256 * expert + expert + d * 256 + 256; // routed, shared, gate, e_score_correction_bias
  const layer = (ffn: number) => mla + ffn + 2 * d;
  const main = 2 * V * d + d + 3 * layer(3 * d * 18_432) + 58 * layer(moe);
  const activated = V * d + d + 3 * layer(3 * d * 18_432) + 58 * layer(9 * expert + d * 256 + 256);
  const mtp = 2 * d + 2 * d * d + layer(moe) + d; // enorm, hnorm, eh_proj, layer 61, shared_head.norm

  it("counts the main model, activated weights and the MTP module apart", () => {
    const json = planToJson(planModel(fixture("deepseek-v3")));
    expect(json.total_params).toBe(main);
    expect(json.activated_params).toBe(activated);
    expect(json.mtp_params).toBe(mtp);
    expect(json.total_params_with_mtp).toBe(main + mtp);
  });

  it("agrees with DeepSeek's published 671B total and 36.6B activated (with the 0.9B head)", () => {
    const json = planToJson(planModel(fixture("deepseek-v3")));
    expect((json.total_params / 1e9).toFixed(0)).toBe("671");
    expect((json.activated_params / 1e9).toFixed(1)).toBe("36.6");
    expect((json.params_breakdown.lm_head.activated / 1e9).toFixed(1)).toBe("0.9");
    // README_WEIGHTS says 11.5B for the MTP module; counted it is 11.61B, 0.10B (eh_proj's size) more.
    expect((json.mtp_params / 1e9).toFixed(2)).toBe("11.61");
  });

  it("FLOPs per token: 2 x activated matmul weights, plus attention per context token", () => {
    const norms = 61 * (2 * d + 1536 + 512) + d + 58 * 256; // norm weights and the router bias are not multiplied
    const json = planToJson(planModel(fixture("deepseek-v3"), { context: 4096 }));
    expect(json.flops_per_token_matmul).toBe(2 * (activated - norms));
    expect(json.attention_flops_per_context_token).toBe(61 * 2 * 128 * (192 + 128));
    expect(json.flops_per_token).toBe(json.flops_per_token_matmul + 4096 * json.attention_flops_per_context_token);
  });
});

describe("GQA and Mixtral fixtures", () => {
  it.each([
    // name, total by hand, published total as printed
    ["qwen2.5-72b-instruct", 80 * (8192 * 8192 * 2 + 8192 * 1024 * 2 + 8192 + 2 * 1024 + 3 * 8192 * 29_568 + 2 * 8192) + 2 * 152_064 * 8192 + 8192, "72.7"],
    ["llama-3.1-405b", 126 * (16_384 * 16_384 * 2 + 16_384 * 1024 * 2 + 3 * 16_384 * 53_248 + 2 * 16_384) + 2 * 128_256 * 16_384 + 16_384, "405.9"],
    ["mixtral-8x7b-instruct-v0.1", 32 * (4096 * 4096 * 2 + 4096 * 1024 * 2 + 8 * 3 * 4096 * 14_336 + 4096 * 8 + 2 * 4096) + 2 * 32_000 * 4096 + 4096, "46.7"],
  ] as const)("%s: %i parameters (%sB published)", (name, total, published) => {
    const json = planToJson(planModel(fixture(name)));
    expect(json.total_params).toBe(total);
    expect((json.total_params / 1e9).toFixed(1)).toBe(published);
    expect(json.mtp_params).toBe(0);
  });

  it("dense models activate everything but the embedding lookup", () => {
    const json = planToJson(planModel(fixture("llama-3.1-405b")));
    expect(json.activated_params).toBe(json.total_params - 128_256 * 16_384);
    expect(json.activated_params_with_embedding).toBe(json.total_params);
    expect(json.ep_decode).toBeNull();
  });

  it("Mixtral activates 2 of 8 experts: Mistral's 12.9B counts the embedding", () => {
    const json = planToJson(planModel(fixture("mixtral-8x7b-instruct-v0.1")));
    expect((json.activated_params_with_embedding / 1e9).toFixed(1)).toBe("12.9");
    expect(json.params_breakdown.routed_experts.activated * 4).toBe(json.params_breakdown.routed_experts.total);
    expect(json.ep_decode!.experts_per_token).toBe(2);
  });
});

/** Element counts of the bundled checkpoint's tensors, FP8 scales left out. */
function tinyV3Tensors(): Map<string, number> {
  const buf = readFileSync("models/tiny-v3/model.safetensors");
  const len = Number(buf.readBigUInt64LE(0));
  const header = JSON.parse(buf.subarray(8, 8 + len).toString("utf8")) as Record<string, { shape?: number[] }>;
  const out = new Map<string, number>();
  for (const [name, t] of Object.entries(header)) {
    if (name === "__metadata__" || name.endsWith("_scale_inv")) continue;
    out.set(
      name,
      t.shape!.reduce((a, b) => a * b, 1),
    );
  }
  return out;
}

describe("models/tiny-v3: the counts match the checkpoint's tensors", () => {
  it("main model = layers 0-3, embedding, head and norm; MTP = layer 4 less its embedding and head copies", () => {
    const tensors = tinyV3Tensors();
    let main = 0;
    let mtp = 0;
    for (const [name, n] of tensors) {
      if (!name.startsWith("model.layers.4.")) main += n;
      else if (!/^model\.layers\.4\.(embed_tokens|shared_head\.head)\./.test(name)) mtp += n;
    }
    const json = planToJson(planModel(JSON.parse(readFileSync("models/tiny-v3/config.json", "utf8"))));
    expect(json.total_params).toBe(main);
    expect(json.mtp_params).toBe(mtp);
    expect(json.kv_cache_bytes_per_token).toBe(4 * (64 + 16) * 2);
  });
});

describe("other families, at their published shapes", () => {
  const kimiK2 = {
    model_type: "kimi_k2",
    architectures: ["DeepseekV3ForCausalLM"],
    vocab_size: 163_840,
    hidden_size: 7168,
    intermediate_size: 18_432,
    moe_intermediate_size: 2048,
    num_hidden_layers: 61,
    num_attention_heads: 64,
    num_key_value_heads: 64,
    n_routed_experts: 384,
    n_shared_experts: 1,
    num_experts_per_tok: 8,
    first_k_dense_replace: 1,
    moe_layer_freq: 1,
    kv_lora_rank: 512,
    q_lora_rank: 1536,
    qk_rope_head_dim: 64,
    qk_nope_head_dim: 128,
    v_head_dim: 128,
    num_nextn_predict_layers: 0,
    topk_method: "noaux_tc",
    tie_word_embeddings: false,
  };
  const deepseekV2Lite = {
    model_type: "deepseek_v2",
    vocab_size: 102_400,
    hidden_size: 2048,
    intermediate_size: 10_944,
    moe_intermediate_size: 1408,
    num_hidden_layers: 27,
    num_attention_heads: 16,
    n_routed_experts: 64,
    n_shared_experts: 2,
    num_experts_per_tok: 6,
    first_k_dense_replace: 1,
    moe_layer_freq: 1,
    kv_lora_rank: 512,
    q_lora_rank: null,
    qk_rope_head_dim: 64,
    qk_nope_head_dim: 128,
    v_head_dim: 128,
    topk_method: "greedy",
    tie_word_embeddings: false,
  };
  const qwen15MoeA27b = {
    model_type: "qwen2_moe",
    vocab_size: 151_936,
    hidden_size: 2048,
    intermediate_size: 5632,
    moe_intermediate_size: 1408,
    shared_expert_intermediate_size: 5632,
    num_experts: 60,
    num_experts_per_tok: 4,
    num_hidden_layers: 24,
    num_attention_heads: 16,
    num_key_value_heads: 16,
    decoder_sparse_step: 1,
    mlp_only_layers: [],
    tie_word_embeddings: false,
  };
  const qwen3MoeA3b = {
    model_type: "qwen3_moe",
    vocab_size: 151_936,
    hidden_size: 2048,
    intermediate_size: 6144,
    moe_intermediate_size: 768,
    num_experts: 128,
    num_experts_per_tok: 8,
    num_hidden_layers: 48,
    num_attention_heads: 32,
    num_key_value_heads: 4,
    head_dim: 128,
    decoder_sparse_step: 1,
    mlp_only_layers: [],
    tie_word_embeddings: false,
  };
  /** Makers print one or two digits and round, or cut, as they like: within one unit of the last digit. */
  const near = (x: number, published: number, unit: number) => expect(Math.abs(x - published)).toBeLessThan(unit);
  it.each([
    // config, published total, published activated (billions), is the published activated with the embedding?
    ["Kimi K2 (1T total, 32B activated)", kimiK2, 1000, 32, false],
    ["DeepSeek-V2-Lite (15.7B, 2.4B activated)", deepseekV2Lite, 15.7, 2.4, false],
    ["Qwen1.5-MoE-A2.7B (14.3B, 2.7B activated)", qwen15MoeA27b, 14.3, 2.7, true],
    ["Qwen3-30B-A3B (30.5B, 3.3B activated)", qwen3MoeA3b, 30.5, 3.3, true],
  ] as const)("%s", (_name, config, total, activated, withEmbedding) => {
    const json = planToJson(planModel(config));
    near(json.total_params / 1e9, total, total >= 1000 ? 100 : 0.1);
    near((withEmbedding ? json.activated_params_with_embedding : json.activated_params) / 1e9, activated, Number.isInteger(activated) ? 1 : 0.1);
  });

  it("MLA without q_lora_rank (V2-Lite) caches 576 values per layer, like V3", () => {
    expect(planToJson(planModel(deepseekV2Lite)).kv_cache_bytes_per_token).toBe(27 * 576 * 2);
  });

  it("experts per token include the shared expert (Kimi K2: 8 + 1; Qwen3-MoE has none)", () => {
    expect(planToJson(planModel(kimiK2)).ep_decode!.experts_per_token).toBe(9);
    expect(planToJson(planModel(qwen3MoeA3b)).ep_decode!.experts_per_token).toBe(8);
  });
});
