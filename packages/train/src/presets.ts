/**
 * Model shapes to train, as Hugging Face DeepSeek-V3 config.json objects without vocab_size (which comes from
 * the tokenizer or the data). No quantization_config: training runs unquantized, saving adds it for FP8.
 */
export type TrainPresetName = "v3-tiny" | "v3-small" | "v3-deep" | "v3-medium";

const V3_COMMON: Record<string, unknown> = {
  architectures: ["DeepseekV3ForCausalLM"],
  model_type: "deepseek_v3",
  attention_bias: false,
  attention_dropout: 0.0,
  hidden_act: "silu",
  initializer_range: 0.02,
  first_k_dense_replace: 1,
  moe_layer_freq: 1,
  n_shared_experts: 1,
  norm_topk_prob: true,
  num_nextn_predict_layers: 1,
  rms_norm_eps: 1e-6,
  rope_scaling: null,
  rope_theta: 10000,
  routed_scaling_factor: 2.5,
  scoring_func: "sigmoid",
  tie_word_embeddings: false,
  topk_method: "noaux_tc",
  torch_dtype: "bfloat16",
  transformers_version: "4.46.3",
  use_cache: true,
  ep_size: 1,
};

export const TRAIN_PRESETS: Readonly<Record<TrainPresetName, { description: string; config: Record<string, unknown> }>> = {
  "v3-tiny": {
    description: "smoke tests: hidden 64, 2 layers (1 dense, 1 MoE with 8 experts in 4 groups, top-2), MTP",
    config: {
      ...V3_COMMON,
      hidden_size: 64,
      intermediate_size: 128,
      moe_intermediate_size: 32,
      num_hidden_layers: 2,
      num_attention_heads: 2,
      num_key_value_heads: 2,
      n_routed_experts: 8,
      n_group: 4,
      topk_group: 2,
      num_experts_per_tok: 2,
      kv_lora_rank: 32,
      q_lora_rank: 48,
      qk_nope_head_dim: 16,
      qk_rope_head_dim: 8,
      v_head_dim: 16,
      max_position_embeddings: 512,
    },
  },
  "v3-small": {
    description: "the one-hour CPU run: hidden 384, 6 layers (1 dense, 5 MoE with 32 experts in 8 groups, top-4 of 4 groups, 1 shared), MTP",
    config: {
      ...V3_COMMON,
      hidden_size: 384,
      intermediate_size: 1024,
      moe_intermediate_size: 192,
      num_hidden_layers: 6,
      num_attention_heads: 6,
      num_key_value_heads: 6,
      n_routed_experts: 32,
      n_group: 8,
      topk_group: 4,
      num_experts_per_tok: 4,
      kv_lora_rank: 128,
      q_lora_rank: 192,
      qk_nope_head_dim: 32,
      qk_rope_head_dim: 16,
      v_head_dim: 32,
      max_position_embeddings: 1024,
    },
  },
  // Speculation on a CPU: a verifying step's extra rows pay for the routed experts they pick on their own, so this
  // shape keeps those small (one expert of 16 per token) and puts the weights every token reads in a larger shared
  // expert and twice v3-small's layers. docs/PERFORMANCE.md measured what that buys ("A shape for speculation").
  "v3-deep": {
    description:
      "speculation on CPUs: hidden 384, 12 layers (1 dense, 11 MoE with 16 experts of 384 in 4 groups, top-1 of 2 groups, a shared expert of 768), MTP",
    config: {
      ...V3_COMMON,
      hidden_size: 384,
      intermediate_size: 1024,
      moe_intermediate_size: 384,
      n_shared_experts: 2,
      num_hidden_layers: 12,
      num_attention_heads: 6,
      num_key_value_heads: 6,
      n_routed_experts: 16,
      n_group: 4,
      topk_group: 2,
      num_experts_per_tok: 1,
      kv_lora_rank: 128,
      q_lora_rank: 192,
      qk_nope_head_dim: 32,
      qk_rope_head_dim: 16,
      v_head_dim: 32,
      max_position_embeddings: 1024,
    },
  },
  "v3-medium": {
    description: "hidden 512, 8 layers (1 dense, 7 MoE with 64 experts in 8 groups, top-6 of 4 groups, 1 shared), MTP",
    config: {
      ...V3_COMMON,
      hidden_size: 512,
      intermediate_size: 1408,
      moe_intermediate_size: 192,
      num_hidden_layers: 8,
      num_attention_heads: 8,
      num_key_value_heads: 8,
      n_routed_experts: 64,
      n_group: 8,
      topk_group: 4,
      num_experts_per_tok: 6,
      kv_lora_rank: 128,
      q_lora_rank: 256,
      qk_nope_head_dim: 32,
      qk_rope_head_dim: 16,
      v_head_dim: 32,
      max_position_embeddings: 1024,
    },
  },
};

export function isTrainPresetName(s: string): s is TrainPresetName {
  return Object.hasOwn(TRAIN_PRESETS, s);
}
