/**
 * config.json of a DeepSeek-V2/V3-family checkpoint, validated once, with the defaults of
 * Hugging Face transformers' DeepseekV3Config and the DeepSeek-V2 remote-code config.
 * Everything downstream reads this frozen object, never the raw JSON.
 */
import { z } from "zod";
import { ConfigError } from "@moela/core";

const posInt = z.number().int().positive();
const nonNegInt = z.number().int().nonnegative();

const RopeScalingSchema = z
  .object({
    type: z.string().optional(),
    rope_type: z.string().optional(),
    factor: z.number().positive(),
    original_max_position_embeddings: posInt.optional(),
    beta_fast: z.number().positive().optional(),
    beta_slow: z.number().positive().optional(),
    mscale: z.number().optional(),
    mscale_all_dim: z.number().optional(),
    attention_factor: z.number().positive().optional(),
    truncate: z.boolean().optional(),
  })
  .loose();

const RawConfigSchema = z
  .object({
    model_type: z.enum(["deepseek_v3", "deepseek_v2"]),
    vocab_size: posInt,
    hidden_size: posInt,
    intermediate_size: posInt,
    moe_intermediate_size: posInt.optional(),
    num_hidden_layers: posInt,
    num_nextn_predict_layers: nonNegInt.optional(),
    num_attention_heads: posInt,
    n_shared_experts: nonNegInt.nullable().optional(),
    n_routed_experts: nonNegInt.nullable().optional(),
    routed_scaling_factor: z.number().positive().optional(),
    kv_lora_rank: posInt,
    q_lora_rank: posInt.nullable().optional(),
    qk_rope_head_dim: posInt,
    qk_nope_head_dim: posInt,
    v_head_dim: posInt,
    topk_method: z.string().optional(),
    scoring_func: z.string().optional(),
    n_group: posInt.nullable().optional(),
    topk_group: posInt.nullable().optional(),
    num_experts_per_tok: posInt.nullable().optional(),
    moe_layer_freq: posInt.optional(),
    first_k_dense_replace: nonNegInt.optional(),
    norm_topk_prob: z.boolean().optional(),
    hidden_act: z.string().optional(),
    max_position_embeddings: posInt.optional(),
    rms_norm_eps: z.number().positive().optional(),
    rope_theta: z.number().positive().optional(),
    rope_scaling: RopeScalingSchema.nullable().optional(),
    rope_interleave: z.boolean().optional(),
    attention_bias: z.boolean().optional(),
    tie_word_embeddings: z.boolean().optional(),
    bos_token_id: z.number().int().nullable().optional(),
    eos_token_id: z
      .union([z.number().int(), z.array(z.number().int())])
      .nullable()
      .optional(),
    quantization_config: z
      .object({
        quant_method: z.string(),
        fmt: z.string().optional(),
        weight_block_size: z.tuple([posInt, posInt]).optional(),
        activation_scheme: z.string().optional(),
      })
      .loose()
      .nullable()
      .optional(),
  })
  .loose();

export type GateScoring = "sigmoid" | "softmax";
/** noaux_tc: V3 (bias picks experts, groups by top-2 sum); greedy: plain top-k; group_limited_greedy: V2 (groups by max). */
export type TopkMethod = "noaux_tc" | "greedy" | "group_limited_greedy";

export interface RopeConfig {
  readonly theta: number;
  readonly dim: number; // qk_rope_head_dim
  readonly yarn: {
    readonly factor: number;
    readonly originalMaxPositionEmbeddings: number;
    readonly betaFast: number;
    readonly betaSlow: number;
    /** Kept undefined when absent: HF and the V2 remote code treat a missing value differently. */
    readonly mscale: number | undefined;
    readonly mscaleAllDim: number | undefined;
    readonly attentionFactor: number | undefined;
    readonly truncate: boolean;
  } | null;
}

export interface ModelConfig {
  readonly modelType: "deepseek_v3" | "deepseek_v2";
  readonly vocabSize: number;
  readonly hiddenSize: number;
  readonly intermediateSize: number;
  readonly moeIntermediateSize: number;
  readonly numHiddenLayers: number;
  readonly numNextnPredictLayers: number;
  readonly numHeads: number;
  readonly nSharedExperts: number;
  readonly nRoutedExperts: number;
  readonly routedScalingFactor: number;
  readonly kvLoraRank: number;
  readonly qLoraRank: number | null;
  readonly qkRopeHeadDim: number;
  readonly qkNopeHeadDim: number;
  readonly vHeadDim: number;
  readonly qkHeadDim: number;
  readonly topkMethod: TopkMethod;
  readonly scoringFunc: GateScoring;
  readonly nGroup: number;
  readonly topkGroup: number;
  readonly numExpertsPerTok: number;
  readonly moeLayerFreq: number;
  readonly firstKDenseReplace: number;
  readonly normTopkProb: boolean;
  readonly maxPositionEmbeddings: number;
  readonly rmsNormEps: number;
  readonly rope: RopeConfig;
  readonly attentionBias: boolean;
  readonly tieWordEmbeddings: boolean;
  readonly bosTokenId: number | null;
  readonly eosTokenIds: readonly number[];
  /** [rows, cols] of one FP8 scale block when the checkpoint is block-quantized. */
  readonly fp8BlockSize: readonly [number, number] | null;
  /** Values cached per token per layer: kv_lora_rank + qk_rope_head_dim (576 in V3). */
  readonly latentDim: number;
  readonly raw: Readonly<Record<string, unknown>>;
}

/** Is decoder layer `i` (0-based, main layers only) a MoE layer? Same rule as HF. */
export function isMoeLayer(cfg: ModelConfig, i: number): boolean {
  return cfg.nRoutedExperts > 0 && i >= cfg.firstKDenseReplace && i % cfg.moeLayerFreq === 0;
}

function fail(msg: string): never {
  throw new ConfigError(`config.json: ${msg}`);
}

export function parseModelConfig(json: unknown): ModelConfig {
  const parsed = RawConfigSchema.safeParse(json);
  if (!parsed.success) {
    const issue = parsed.error.issues[0]!;
    fail(`field '${issue.path.join(".")}' ${issue.message}`);
  }
  const c = parsed.data;
  const v3 = c.model_type === "deepseek_v3";
  const nRouted = c.n_routed_experts ?? 0;
  const topkMethod = (v3 ? "noaux_tc" : (c.topk_method ?? "greedy")) as string;
  if (!["noaux_tc", "greedy", "group_limited_greedy"].includes(topkMethod)) fail(`unsupported topk_method '${topkMethod}'`);
  const scoring = (c.scoring_func ?? (v3 ? "sigmoid" : "softmax")) as string;
  if (scoring !== "sigmoid" && scoring !== "softmax") fail(`unsupported scoring_func '${scoring}'`);
  const nGroup = c.n_group ?? 1;
  const topkGroup = c.topk_group ?? 1;
  const k = c.num_experts_per_tok ?? (nRouted > 0 ? fail("num_experts_per_tok is required with routed experts") : 1);
  if (c.hidden_act !== undefined && c.hidden_act !== "silu") fail(`unsupported hidden_act '${c.hidden_act}' (only silu)`);
  if (nRouted > 0) {
    if (c.moe_intermediate_size === undefined) fail("moe_intermediate_size is required with routed experts");
    if (k > nRouted) fail(`num_experts_per_tok ${k} exceeds n_routed_experts ${nRouted}`);
    if (nRouted % nGroup !== 0) fail(`n_routed_experts ${nRouted} is not divisible by n_group ${nGroup}`);
    if (topkGroup > nGroup) fail(`topk_group ${topkGroup} exceeds n_group ${nGroup}`);
    if (topkMethod !== "greedy" && topkGroup * (nRouted / nGroup) < k)
      fail(`topk_group ${topkGroup} groups of ${nRouted / nGroup} experts cannot hold num_experts_per_tok ${k}`);
    if (topkMethod === "noaux_tc" && nRouted / nGroup < 2) fail("noaux_tc routing needs at least 2 experts per group");
  }
  const firstDense = c.first_k_dense_replace ?? 0;
  if (firstDense > c.num_hidden_layers) fail(`first_k_dense_replace ${firstDense} exceeds num_hidden_layers ${c.num_hidden_layers}`);
  if (c.qk_rope_head_dim % 2 !== 0) fail(`qk_rope_head_dim ${c.qk_rope_head_dim} must be even`);
  const maxPos = c.max_position_embeddings ?? (v3 ? 4096 : 2048);
  let yarn: RopeConfig["yarn"] = null;
  if (c.rope_scaling) {
    const kind = c.rope_scaling.rope_type ?? c.rope_scaling.type;
    if (kind !== "yarn") fail(`unsupported rope_scaling type '${kind}' (only yarn)`);
    yarn = {
      factor: c.rope_scaling.factor,
      originalMaxPositionEmbeddings: c.rope_scaling.original_max_position_embeddings ?? maxPos,
      betaFast: c.rope_scaling.beta_fast ?? 32,
      betaSlow: c.rope_scaling.beta_slow ?? 1,
      mscale: c.rope_scaling.mscale,
      mscaleAllDim: c.rope_scaling.mscale_all_dim,
      attentionFactor: c.rope_scaling.attention_factor,
      truncate: c.rope_scaling.truncate ?? true,
    };
  }
  let fp8BlockSize: readonly [number, number] | null = null;
  const q = c.quantization_config;
  if (q) {
    if (q.quant_method !== "fp8") fail(`unsupported quantization_config.quant_method '${q.quant_method}'`);
    if (q.fmt !== undefined && q.fmt !== "e4m3") fail(`unsupported fp8 format '${q.fmt}' (only e4m3)`);
    fp8BlockSize = q.weight_block_size ?? [128, 128];
  }
  const eos = c.eos_token_id;
  const eosTokenIds = eos === undefined || eos === null ? [] : Array.isArray(eos) ? eos : [eos];
  for (const id of [...eosTokenIds, c.bos_token_id ?? 0]) {
    if (id < 0 || id >= c.vocab_size) fail(`special token id ${id} is outside the vocabulary of ${c.vocab_size}`);
  }
  return Object.freeze({
    modelType: c.model_type,
    vocabSize: c.vocab_size,
    hiddenSize: c.hidden_size,
    intermediateSize: c.intermediate_size,
    moeIntermediateSize: c.moe_intermediate_size ?? c.intermediate_size,
    numHiddenLayers: c.num_hidden_layers,
    numNextnPredictLayers: c.num_nextn_predict_layers ?? 0,
    numHeads: c.num_attention_heads,
    nSharedExperts: c.n_shared_experts ?? 0,
    nRoutedExperts: nRouted,
    routedScalingFactor: c.routed_scaling_factor ?? 1,
    kvLoraRank: c.kv_lora_rank,
    qLoraRank: c.q_lora_rank ?? null,
    qkRopeHeadDim: c.qk_rope_head_dim,
    qkNopeHeadDim: c.qk_nope_head_dim,
    vHeadDim: c.v_head_dim,
    qkHeadDim: c.qk_nope_head_dim + c.qk_rope_head_dim,
    topkMethod: topkMethod as TopkMethod,
    scoringFunc: scoring as GateScoring,
    nGroup,
    topkGroup,
    numExpertsPerTok: k,
    moeLayerFreq: c.moe_layer_freq ?? 1,
    firstKDenseReplace: firstDense,
    normTopkProb: c.norm_topk_prob ?? v3,
    maxPositionEmbeddings: maxPos,
    rmsNormEps: c.rms_norm_eps ?? 1e-6,
    rope: { theta: c.rope_theta ?? 10000, dim: c.qk_rope_head_dim, yarn },
    attentionBias: c.attention_bias ?? false,
    tieWordEmbeddings: c.tie_word_embeddings ?? false,
    bosTokenId: c.bos_token_id ?? null,
    eosTokenIds,
    fp8BlockSize,
    latentDim: c.kv_lora_rank + c.qk_rope_head_dim,
    raw: c as Record<string, unknown>,
  });
}
