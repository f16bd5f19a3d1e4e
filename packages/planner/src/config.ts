/**
 * Reads a Hugging Face config.json of any family the planner knows into one shape, `Architecture`:
 * the attention (MLA latent or per-head K/V), the feed-forward of every decoder layer (dense or MoE)
 * and the MTP modules. Field names are the ones HF uses for each family; defaults are the HF config
 * classes' defaults where they are harmless (head_dim, num_key_value_heads, tie_word_embeddings) and
 * the engine's rule elsewhere: a DeepSeek config without n_routed_experts is dense, not 256-expert MoE.
 */
import { z } from "zod";
import { ConfigError } from "@moela/core";

const posInt = z.number().int().positive();
const nonNegInt = z.number().int().nonnegative();

/** Multi-head latent attention (DeepSeek-V2/V3, Kimi K2): one latent row per token per layer is cached. */
export interface MlaAttention {
  readonly kind: "mla";
  readonly numHeads: number;
  /** null: queries come straight from the hidden state (DeepSeek-V2-Lite), no q_a/q_b low-rank pair. */
  readonly qLoraRank: number | null;
  readonly kvLoraRank: number;
  readonly qkNopeHeadDim: number;
  readonly qkRopeHeadDim: number;
  readonly vHeadDim: number;
}

/** Grouped-query (or multi-head, when numKvHeads == numHeads) attention: K and V per KV head are cached. */
export interface GqaAttention {
  readonly kind: "gqa";
  readonly numHeads: number;
  readonly numKvHeads: number;
  readonly headDim: number;
  /** Biases on q, k, v (Qwen2: always; Llama: attention_bias). */
  readonly qkvBias: boolean;
  /** Bias on o_proj (Llama with attention_bias only). */
  readonly oBias: boolean;
  /** Per-head RMSNorm on q and k (Qwen3). */
  readonly qkNorm: boolean;
}

export type Attention = MlaAttention | GqaAttention;

/** A SwiGLU MLP: gate, up (hidden -> intermediate) and down (intermediate -> hidden). */
export interface DenseFfn {
  readonly kind: "dense";
  readonly intermediateSize: number;
  readonly bias: boolean;
}

export interface MoeFfn {
  readonly kind: "moe";
  readonly routedExperts: number;
  /** Routed experts each token goes to (num_experts_per_tok). */
  readonly expertsPerToken: number;
  /** Width of one routed expert (moe_intermediate_size; Mixtral: intermediate_size). */
  readonly expertIntermediateSize: number;
  /** Shared experts every token goes to, counted in expert-sized units (DeepSeek n_shared_experts; Qwen2-MoE: 1). */
  readonly sharedExperts: number;
  /** Width of all shared experts together (DeepSeek: n_shared_experts x moe_intermediate_size). */
  readonly sharedIntermediateSize: number;
  /** A sigmoid gate on the shared expert's output (Qwen2-MoE shared_expert_gate: hidden -> 1). */
  readonly sharedExpertGate: boolean;
  /** A per-expert bias that picks experts (DeepSeek-V3 noaux_tc: e_score_correction_bias). */
  readonly routerBias: boolean;
}

export type Ffn = DenseFfn | MoeFfn;

export type Family = "deepseek" | "llama" | "qwen2" | "qwen3" | "mixtral" | "qwen2_moe" | "qwen3_moe";

export interface Architecture {
  readonly family: Family;
  /** model_type as the config states it (deepseek_v3, kimi_k2, llama, ...). */
  readonly modelType: string;
  readonly architectures: readonly string[];
  readonly vocabSize: number;
  readonly hiddenSize: number;
  readonly numLayers: number;
  readonly tieWordEmbeddings: boolean;
  readonly attention: Attention;
  /** One entry per main decoder layer (num_hidden_layers). */
  readonly ffn: readonly Ffn[];
  /** DeepSeek-V3 multi-token-prediction modules (num_nextn_predict_layers); 0 elsewhere. */
  readonly mtpModules: number;
  /** The feed-forward of an MTP module's decoder layer (the layer index after the main ones). */
  readonly mtpFfn: Ffn | null;
}

const SUPPORTED = "DeepSeek-V2/V3 and Kimi K2 (MLA), Llama, Mistral, Qwen2/2.5, Qwen3, Mixtral, Qwen2-MoE and Qwen3-MoE";

const DEEPSEEK_TYPES = new Set(["deepseek_v2", "deepseek_v3", "kimi_k2"]);
const DEEPSEEK_ARCHS = new Set(["DeepseekV2ForCausalLM", "DeepseekV3ForCausalLM", "KimiK2ForCausalLM"]);
const FAMILY_BY_TYPE: Readonly<Record<string, Family>> = {
  llama: "llama",
  mistral: "llama",
  qwen2: "qwen2",
  qwen3: "qwen3",
  mixtral: "mixtral",
  qwen2_moe: "qwen2_moe",
  qwen3_moe: "qwen3_moe",
};
const FAMILY_BY_ARCH: Readonly<Record<string, Family>> = {
  LlamaForCausalLM: "llama",
  MistralForCausalLM: "llama",
  Qwen2ForCausalLM: "qwen2",
  Qwen3ForCausalLM: "qwen3",
  MixtralForCausalLM: "mixtral",
  Qwen2MoeForCausalLM: "qwen2_moe",
  Qwen3MoeForCausalLM: "qwen3_moe",
};

const Common = {
  model_type: z.string().optional(),
  architectures: z.array(z.string()).optional(),
  vocab_size: posInt,
  hidden_size: posInt,
  num_hidden_layers: posInt,
  num_attention_heads: posInt,
  tie_word_embeddings: z.boolean().optional(),
};

const DeepseekSchema = z
  .object({
    ...Common,
    intermediate_size: posInt,
    q_lora_rank: posInt.nullable().optional(),
    kv_lora_rank: posInt,
    qk_nope_head_dim: posInt,
    qk_rope_head_dim: posInt,
    v_head_dim: posInt,
    n_routed_experts: nonNegInt.nullable().optional(),
    n_shared_experts: nonNegInt.nullable().optional(),
    num_experts_per_tok: posInt.nullable().optional(),
    moe_intermediate_size: posInt.optional(),
    first_k_dense_replace: nonNegInt.optional(),
    moe_layer_freq: posInt.optional(),
    num_nextn_predict_layers: nonNegInt.optional(),
    topk_method: z.string().optional(),
  })
  .loose();

const GqaFields = {
  ...Common,
  intermediate_size: posInt,
  num_key_value_heads: posInt.nullable().optional(),
  head_dim: posInt.nullable().optional(),
  attention_bias: z.boolean().optional(),
  mlp_bias: z.boolean().optional(),
};

const LlamaSchema = z.object(GqaFields).loose();

const MixtralSchema = z.object({ ...GqaFields, num_local_experts: posInt.optional(), num_experts_per_tok: posInt.optional() }).loose();

const QwenMoeSchema = z
  .object({
    ...GqaFields,
    num_experts: nonNegInt.optional(),
    num_experts_per_tok: posInt.optional(),
    moe_intermediate_size: posInt.optional(),
    shared_expert_intermediate_size: nonNegInt.optional(),
    decoder_sparse_step: posInt.optional(),
    mlp_only_layers: z.array(nonNegInt).optional(),
  })
  .loose();

function fail(source: string, msg: string): never {
  throw new ConfigError(`${source}: ${msg}`);
}

function parseWith<S extends z.ZodType>(schema: S, json: unknown, source: string, family: string): z.infer<S> {
  const r = schema.safeParse(json);
  if (!r.success) {
    const issue = r.error.issues[0]!;
    const field = issue.path.join(".");
    const got = issue.path.reduce<unknown>((o, k) => (o as Record<PropertyKey, unknown> | undefined)?.[k], json);
    fail(source, `${family} config: field '${field}' ${got === undefined ? "is missing" : `is ${JSON.stringify(got)}`} (${issue.message})`);
  }
  return r.data;
}

/** Which family a config belongs to, from model_type, then architectures, then the MLA fields. */
export function detectFamily(json: Record<string, unknown>, source = "config.json"): Family {
  const modelType = typeof json["model_type"] === "string" ? json["model_type"] : undefined;
  const archs = Array.isArray(json["architectures"]) ? json["architectures"].filter((a): a is string => typeof a === "string") : [];
  if (modelType !== undefined && DEEPSEEK_TYPES.has(modelType)) return "deepseek";
  if (modelType !== undefined && FAMILY_BY_TYPE[modelType]) return FAMILY_BY_TYPE[modelType];
  if (archs.some((a) => DEEPSEEK_ARCHS.has(a))) return "deepseek";
  for (const a of archs) if (FAMILY_BY_ARCH[a]) return FAMILY_BY_ARCH[a];
  if ("kv_lora_rank" in json) return "deepseek";
  const what = modelType !== undefined ? `model_type "${modelType}"` : "no model_type";
  const arch = archs.length > 0 ? `, architectures ${archs.join(", ")}` : "";
  const hint =
    typeof json["text_config"] === "object" && json["text_config"] !== null
      ? " (this looks like a multimodal config: pass the language model's config, its text_config)"
      : "";
  fail(source, `cannot tell the architecture (${what}${arch}); moela plan reads ${SUPPORTED} configs${hint}`);
}

/**
 * Parses a config.json object. `source` names the file in error messages.
 * Throws ConfigError naming the file, the family and the field for anything it cannot read.
 */
export function parseArchitecture(json: unknown, source = "config.json"): Architecture {
  if (typeof json !== "object" || json === null || Array.isArray(json)) fail(source, "must hold one JSON object");
  const raw = json as Record<string, unknown>;
  const family = detectFamily(raw, source);
  switch (family) {
    case "deepseek":
      return parseDeepseek(raw, source);
    case "mixtral":
      return parseMixtral(raw, source);
    case "qwen2_moe":
    case "qwen3_moe":
      return parseQwenMoe(raw, source, family);
    default:
      return parseDenseGqa(raw, source, family);
  }
}

function modelTypeOf(c: { model_type?: string | undefined }, fallback: string): string {
  return c.model_type ?? fallback;
}

function parseDeepseek(raw: Record<string, unknown>, source: string): Architecture {
  const c = parseWith(DeepseekSchema, raw, source, "DeepSeek (MLA)");
  const modelType = modelTypeOf(c, "deepseek_v3");
  const nRouted = c.n_routed_experts ?? 0;
  const nShared = c.n_shared_experts ?? 0;
  const firstDense = c.first_k_dense_replace ?? 0;
  const freq = c.moe_layer_freq ?? 1;
  if (firstDense > c.num_hidden_layers) {
    fail(source, `first_k_dense_replace ${firstDense} exceeds num_hidden_layers ${c.num_hidden_layers}`);
  }
  let moe: MoeFfn | null = null;
  if (nRouted > 0) {
    const k = c.num_experts_per_tok ?? fail(source, "num_experts_per_tok is required with n_routed_experts");
    const w = c.moe_intermediate_size ?? fail(source, "moe_intermediate_size is required with n_routed_experts");
    if (k > nRouted) fail(source, `num_experts_per_tok ${k} exceeds n_routed_experts ${nRouted}`);
    // V3 routes with noaux_tc unless the config says otherwise (as HF and the engine do); its gate carries
    // e_score_correction_bias. V2's greedy and group_limited_greedy gates have no bias.
    const topk = c.topk_method ?? (modelType === "deepseek_v2" ? "greedy" : "noaux_tc");
    moe = {
      kind: "moe",
      routedExperts: nRouted,
      expertsPerToken: k,
      expertIntermediateSize: w,
      sharedExperts: nShared,
      sharedIntermediateSize: nShared * w,
      sharedExpertGate: false,
      routerBias: topk === "noaux_tc",
    };
  }
  const dense: DenseFfn = { kind: "dense", intermediateSize: c.intermediate_size, bias: false };
  // HF's rule (modeling_deepseek.py): layer i is MoE when i >= first_k_dense_replace and i % moe_layer_freq == 0.
  const ffnAt = (i: number): Ffn => (moe !== null && i >= firstDense && i % freq === 0 ? moe : dense);
  const ffn = Array.from({ length: c.num_hidden_layers }, (_, i) => ffnAt(i));
  const mtpModules = c.num_nextn_predict_layers ?? 0;
  const arch: Architecture = {
    family: "deepseek",
    modelType,
    architectures: c.architectures ?? [],
    vocabSize: c.vocab_size,
    hiddenSize: c.hidden_size,
    numLayers: c.num_hidden_layers,
    tieWordEmbeddings: c.tie_word_embeddings ?? false,
    attention: {
      kind: "mla",
      numHeads: c.num_attention_heads,
      qLoraRank: c.q_lora_rank ?? null,
      kvLoraRank: c.kv_lora_rank,
      qkNopeHeadDim: c.qk_nope_head_dim,
      qkRopeHeadDim: c.qk_rope_head_dim,
      vHeadDim: c.v_head_dim,
    },
    ffn,
    mtpModules,
    // The MTP module's decoder layer sits at index num_hidden_layers (model.layers.61 in V3).
    mtpFfn: mtpModules > 0 ? ffnAt(c.num_hidden_layers) : null,
  };
  return Object.freeze(arch);
}

type GqaConfig = z.infer<typeof LlamaSchema>;

function gqaAttention(c: GqaConfig, source: string, family: Family): GqaAttention {
  const numKvHeads = c.num_key_value_heads ?? c.num_attention_heads;
  if (c.num_attention_heads % numKvHeads !== 0) {
    fail(source, `num_attention_heads ${c.num_attention_heads} is not a multiple of num_key_value_heads ${numKvHeads}`);
  }
  let headDim = c.head_dim ?? undefined;
  if (headDim === undefined) {
    if (c.hidden_size % c.num_attention_heads !== 0) {
      fail(source, `no head_dim, and hidden_size ${c.hidden_size} is not a multiple of num_attention_heads ${c.num_attention_heads}`);
    }
    headDim = c.hidden_size / c.num_attention_heads;
  }
  const qwen2 = family === "qwen2" || family === "qwen2_moe";
  const llamaBias = family === "llama" && (c.attention_bias ?? false);
  return {
    kind: "gqa",
    numHeads: c.num_attention_heads,
    numKvHeads,
    headDim,
    // Qwen2 / Qwen2-MoE put biases on q, k and v always; Qwen3 follows attention_bias (default false).
    qkvBias: qwen2 || llamaBias || ((family === "qwen3" || family === "qwen3_moe") && (c.attention_bias ?? false)),
    oBias: llamaBias,
    qkNorm: family === "qwen3" || family === "qwen3_moe",
  };
}

function gqaBase(c: GqaConfig, family: Family, fallbackType: string) {
  return {
    family,
    modelType: modelTypeOf(c, fallbackType),
    architectures: c.architectures ?? [],
    vocabSize: c.vocab_size,
    hiddenSize: c.hidden_size,
    numLayers: c.num_hidden_layers,
    tieWordEmbeddings: c.tie_word_embeddings ?? false,
    mtpModules: 0,
    mtpFfn: null,
  };
}

function parseDenseGqa(raw: Record<string, unknown>, source: string, family: Family): Architecture {
  const c = parseWith(LlamaSchema, raw, source, family);
  const dense: DenseFfn = { kind: "dense", intermediateSize: c.intermediate_size, bias: family === "llama" && (c.mlp_bias ?? false) };
  return Object.freeze({
    ...gqaBase(c, family, family),
    attention: gqaAttention(c, source, family),
    ffn: Array.from({ length: c.num_hidden_layers }, () => dense),
  });
}

function parseMixtral(raw: Record<string, unknown>, source: string): Architecture {
  const c = parseWith(MixtralSchema, raw, source, "mixtral");
  const experts = c.num_local_experts ?? 8;
  const k = c.num_experts_per_tok ?? 2;
  if (k > experts) fail(source, `num_experts_per_tok ${k} exceeds num_local_experts ${experts}`);
  const moe: MoeFfn = {
    kind: "moe",
    routedExperts: experts,
    expertsPerToken: k,
    expertIntermediateSize: c.intermediate_size,
    sharedExperts: 0,
    sharedIntermediateSize: 0,
    sharedExpertGate: false,
    routerBias: false,
  };
  return Object.freeze({
    ...gqaBase(c, "mixtral", "mixtral"),
    attention: gqaAttention(c, source, "mixtral"),
    ffn: Array.from({ length: c.num_hidden_layers }, () => moe),
  });
}

function parseQwenMoe(raw: Record<string, unknown>, source: string, family: "qwen2_moe" | "qwen3_moe"): Architecture {
  const c = parseWith(QwenMoeSchema, raw, source, family);
  const experts = c.num_experts ?? 0;
  const k = c.num_experts_per_tok ?? fail(source, "num_experts_per_tok is required");
  const w = c.moe_intermediate_size ?? fail(source, "moe_intermediate_size is required");
  if (k > experts) fail(source, `num_experts_per_tok ${k} exceeds num_experts ${experts}`);
  const shared = family === "qwen2_moe" ? (c.shared_expert_intermediate_size ?? 0) : 0;
  const moe: MoeFfn = {
    kind: "moe",
    routedExperts: experts,
    expertsPerToken: k,
    expertIntermediateSize: w,
    sharedExperts: shared > 0 ? 1 : 0,
    sharedIntermediateSize: shared,
    sharedExpertGate: shared > 0,
    routerBias: false,
  };
  const dense: DenseFfn = { kind: "dense", intermediateSize: c.intermediate_size, bias: false };
  const step = c.decoder_sparse_step ?? 1;
  const mlpOnly = new Set(c.mlp_only_layers ?? []);
  // HF's rule (modeling_qwen2_moe.py): sparse when not in mlp_only_layers, num_experts > 0 and (i + 1) % step == 0.
  const ffn = Array.from({ length: c.num_hidden_layers }, (_, i): Ffn => (!mlpOnly.has(i) && experts > 0 && (i + 1) % step === 0 ? moe : dense));
  return Object.freeze({ ...gqaBase(c, family, family), attention: gqaAttention(c, source, family), ffn });
}
