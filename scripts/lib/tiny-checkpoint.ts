/**
 * Deterministic generator of small DeepSeek-V3-family checkpoints in the exact Hugging Face layout of
 * the released models (config.json, safetensors weights with HF tensor names, tokenizer files), with
 * random weights. Same preset + options + seed -> byte-identical files on any machine: the random
 * numbers come from a seeded integer PRNG and only + - * / (no Math.log/cos), so nothing depends on
 * the platform's libm.
 *
 * Which tensors are FP8 (presets with quantization_config), following the released DeepSeek-V3:
 *  - F8_E4M3 + `<name>_scale_inv` F32 [ceil(out/128), ceil(in/128)]: every 2-D linear of attention
 *    (q_a_proj, q_b_proj / q_proj, kv_a_proj_with_mqa, kv_b_proj, o_proj) and of the MLPs (dense mlp,
 *    routed experts, shared experts), in the main layers and in the MTP layer's decoder block.
 *  - BF16: embed_tokens, lm_head, every norm (incl. q_a_layernorm, kv_a_layernorm), mlp.gate.weight
 *    (the router), and the MTP layer's embed_tokens, enorm, hnorm, eh_proj, shared_head.norm and
 *    shared_head.head.
 *  - F32: mlp.gate.e_score_correction_bias.
 *  Source for eh_proj / shared_head.head staying BF16 with no scale: SGLang's DeepSeek NextN model
 *  (python/sglang/srt/models/deepseek_nextn.py) builds eh_proj as a plain torch nn.Linear(2H, H)
 *  with no quant_config while the decoder block gets the FP8 quant_config, and its load_weights would
 *  find no parameter for an `eh_proj.weight_scale_inv`; it skips `shared_head.head` and
 *  `embed_tokens` and uses the target model's BF16 lm_head / embedding instead. vLLM's deepseek_mtp.py
 *  does the same (eh_proj = nn.Linear, head = ParallelLMHead, which the FP8 method leaves
 *  unquantized). DeepSeek's README_WEIGHTS.md says the MTP embedding and head share the main
 *  model's parameters.
 *
 * Initialisation (why not HF's N(0, 0.02)): with hidden 256, std 0.02 makes every block's output
 * ~0.3x its input and the attention path ~0.04x, so the logits would be decided by the embedding and
 * lm_head alone and a broken attention or MoE would not change a single greedy token. Instead linears
 * get std 1/sqrt(fan_in) (unit-scale activations, every block matters), the embedding std 1, lm_head
 * and MTP head std 2/sqrt(hidden) (logits std ~2: a clear but not degenerate argmax), the router
 * 1/sqrt(hidden), e_score_correction_bias std 0.1 (enough to change which experts win), and norms
 * 1 + 0.1 * noise (so a norm weight that is ignored or misapplied shows). Each tensor's values depend
 * only on (seed, tensor name), so tiny-v3 and tiny-v3-bf16 hold the same underlying weights (FP8 vs
 * BF16 roundings of them) and changing one tensor's shape does not reshuffle the others. The MTP
 * layer's embed_tokens and shared_head.head get values of their own, not copies of the main ones:
 * in the release they are copies, but distinct values make "MTP read the wrong embedding/head" bugs
 * visible.
 */
import * as fs from "node:fs";
import * as path from "node:path";
import { ConfigError } from "@moela/core";
import { parseModelConfig, writeHfCheckpoint, type FloatDType, type ModelConfig, type TensorSpec } from "@moela/engine";
import { buildTinyTokenizerFiles, TINY_VOCAB_SIZE } from "@moela/tokenizer";
import { mulberry32 } from "./random.js";

export type PresetName = "tiny-v3" | "tiny-v3-bf16" | "tiny-v2-lite" | "large-v3";
export type { FloatDType, InitKind, TensorSpec } from "@moela/engine";
export { checkpointTensorSpecs } from "@moela/engine";

export interface Preset {
  readonly description: string;
  /** config.json without vocab_size (taken from the tokenizer unless overridden). */
  readonly config: Readonly<Record<string, unknown>>;
  /** dtype of every weight that is not FP8 (and of everything when there is no quantization_config). */
  readonly weightDtype: FloatDType;
  /** Shard size limit; null writes one model.safetensors whatever the size. */
  readonly maxShardBytes: number | null;
}

const FP8_QUANTIZATION = {
  activation_scheme: "dynamic",
  fmt: "e4m3",
  quant_method: "fp8",
  weight_block_size: [128, 128],
};

/** DeepSeek-V3's YaRN settings (factor 4 here) over tiny-v3's 512 original positions. */
const YARN_ROPE_SCALING = {
  beta_fast: 32,
  beta_slow: 1,
  factor: 4,
  mscale: 1.0,
  mscale_all_dim: 1.0,
  original_max_position_embeddings: 512,
  type: "yarn",
};

const TINY_V3_CONFIG: Record<string, unknown> = {
  architectures: ["DeepseekV3ForCausalLM"],
  attention_bias: false,
  attention_dropout: 0.0,
  bos_token_id: 0,
  eos_token_id: 1,
  ep_size: 1,
  first_k_dense_replace: 1,
  hidden_act: "silu",
  hidden_size: 256,
  initializer_range: 0.02,
  intermediate_size: 512,
  kv_lora_rank: 64,
  max_position_embeddings: 2048,
  model_type: "deepseek_v3",
  moe_intermediate_size: 128,
  moe_layer_freq: 1,
  n_group: 4,
  n_routed_experts: 16,
  n_shared_experts: 1,
  norm_topk_prob: true,
  num_attention_heads: 4,
  num_experts_per_tok: 4,
  num_hidden_layers: 4,
  num_key_value_heads: 4,
  num_nextn_predict_layers: 1,
  q_lora_rank: 96,
  qk_nope_head_dim: 32,
  qk_rope_head_dim: 16,
  quantization_config: FP8_QUANTIZATION,
  rms_norm_eps: 1e-6,
  rope_scaling: YARN_ROPE_SCALING,
  rope_theta: 10000,
  routed_scaling_factor: 2.5,
  scoring_func: "sigmoid",
  tie_word_embeddings: false,
  topk_group: 2,
  topk_method: "noaux_tc",
  torch_dtype: "bfloat16",
  transformers_version: "4.46.3",
  use_cache: true,
  v_head_dim: 32,
};

function without(obj: Record<string, unknown>, key: string): Record<string, unknown> {
  const { [key]: _, ...rest } = obj;
  return rest;
}

export const PRESETS: Readonly<Record<PresetName, Preset>> = {
  "tiny-v3": {
    description: "DeepSeek-V3 architecture in miniature (MLA, 16-expert noaux_tc MoE, MTP, YaRN), FP8 128x128 block weights; committed at models/tiny-v3",
    config: TINY_V3_CONFIG,
    weightDtype: "BF16",
    maxShardBytes: null,
  },
  "tiny-v3-bf16": {
    description: "tiny-v3 with every weight in BF16 (no quantization_config), written as several shards plus an index",
    config: without(TINY_V3_CONFIG, "quantization_config"),
    weightDtype: "BF16",
    maxShardBytes: 4 * 1024 * 1024,
  },
  "tiny-v2-lite": {
    description: "DeepSeek-V2-Lite style: no q LoRA (q_proj), softmax gate with greedy top-k, 2 shared experts, no MTP, no rope scaling, F32 weights",
    config: {
      // tiny-v3's sizes; V2-Lite's attention (no q LoRA), gate (softmax, greedy top-k, no groups) and dtype.
      ...without(without(without(TINY_V3_CONFIG, "ep_size"), "num_nextn_predict_layers"), "quantization_config"),
      architectures: ["DeepseekV2ForCausalLM"],
      model_type: "deepseek_v2",
      n_group: 1,
      n_shared_experts: 2,
      norm_topk_prob: false,
      q_lora_rank: null,
      rope_scaling: null,
      routed_scaling_factor: 1.0,
      scoring_func: "softmax",
      topk_group: 1,
      topk_method: "greedy",
      torch_dtype: "float32",
    },
    weightDtype: "F32",
    maxShardBytes: null,
  },
  "large-v3": {
    description: "benchmark model: hidden 1024, 6 layers + MTP, 64 routed experts (8 groups), FP8; about 0.5 GB, not committed",
    config: {
      ...TINY_V3_CONFIG,
      hidden_size: 1024,
      intermediate_size: 2816,
      moe_intermediate_size: 384,
      n_routed_experts: 64,
      n_shared_experts: 1,
      num_experts_per_tok: 6,
      n_group: 8,
      topk_group: 3,
      num_attention_heads: 16,
      num_key_value_heads: 16,
      num_hidden_layers: 6,
      q_lora_rank: 384,
      kv_lora_rank: 256,
      qk_nope_head_dim: 64,
      qk_rope_head_dim: 32,
      v_head_dim: 64,
      max_position_embeddings: 4096,
      rope_scaling: { ...YARN_ROPE_SCALING, original_max_position_embeddings: 1024 },
    },
    weightDtype: "BF16",
    maxShardBytes: 200 * 1000 * 1000,
  },
};

export function isPresetName(s: string): s is PresetName {
  return Object.hasOwn(PRESETS, s);
}

// ---------------------------------------------------------------- deterministic random numbers

/** FNV-1a over the UTF-16 code units of a string, 32-bit. */
function fnv1a(s: string): number {
  let h = 0x811c9dc5;
  for (let i = 0; i < s.length; i++) {
    h ^= s.charCodeAt(i);
    h = Math.imul(h, 0x01000193) >>> 0;
  }
  return h >>> 0;
}

const SQRT3 = Math.sqrt(3); // correctly rounded by IEEE 754, the same everywhere

/**
 * Approximately standard normal values: Irwin-Hall sum of 4 uniforms, centred and scaled to unit
 * variance (bounded at +-2*sqrt(3)). Arithmetic only, so bit-identical on every platform.
 */
function normalStream(seed: number, tensorName: string): () => number {
  const u = mulberry32(fnv1a(`${seed >>> 0}:${tensorName}`));
  return () => (u() + u() + u() + u() - 2) * SQRT3;
}

// ---------------------------------------------------------------- tensor values

/** Float values of one tensor (shape row-major), from (seed, name) only. */
export function initTensorValues(spec: TensorSpec, seed: number): Float32Array {
  const n = spec.shape.reduce((a, b) => a * b, 1);
  const next = normalStream(seed, spec.name);
  const fanIn = spec.shape[spec.shape.length - 1] ?? 1;
  let std: number;
  let mean = 0;
  switch (spec.init) {
    case "linear":
    case "router":
      std = 1 / Math.sqrt(fanIn);
      break;
    case "head":
      std = 2 / Math.sqrt(fanIn);
      break;
    case "embed":
      std = 1;
      break;
    case "norm":
      mean = 1;
      std = 0.1;
      break;
    case "bias":
      std = 0.1;
      break;
  }
  const out = new Float32Array(n);
  for (let i = 0; i < n; i++) out[i] = mean + std * next();
  return out;
}

// ---------------------------------------------------------------- generation

export interface GenerateOptions {
  /** Base preset (default tiny-v3). */
  readonly preset?: PresetName;
  /**
   * Fields merged over the preset's config.json (e.g. {num_hidden_layers: 2, vocab_size: 300,
   * n_routed_experts: 8}). `quantization_config: null` removes quantization (the key is dropped,
   * not written as null, because transformers treats a present key as "pre-quantized").
   */
  readonly config?: Readonly<Record<string, unknown>>;
  readonly weightDtype?: FloatDType;
  /** null: a single model.safetensors. */
  readonly maxShardBytes?: number | null;
  /**
   * Write tokenizer.json / tokenizer_config.json (default true). They are skipped when vocab_size is
   * smaller than the tiny tokenizer (its ids would not fit); a larger vocab_size is fine (padded
   * vocabularies are normal).
   */
  readonly tokenizer?: boolean;
  /** Called after each tensor is generated. */
  readonly onProgress?: (done: number, total: number, tensorName: string) => void;
}

export interface GeneratedCheckpoint {
  readonly dir: string;
  readonly preset: PresetName;
  readonly seed: number;
  /** The config.json written. */
  readonly config: Record<string, unknown>;
  readonly modelConfig: ModelConfig;
  /** Every file written, relative to dir, sorted. */
  readonly files: string[];
  /** Safetensors tensors written (FP8 scale tensors included). */
  readonly tensorCount: number;
  /** Sum of tensor data bytes (the index's total_size). */
  readonly tensorBytes: number;
  readonly fp8: boolean;
  readonly tokenizer: boolean;
}

/** Resolve preset + overrides to the config.json object (validated by the engine's parser). */
export function resolveConfig(presetOrOptions: PresetName | GenerateOptions = {}): {
  preset: PresetName;
  config: Record<string, unknown>;
  modelConfig: ModelConfig;
} {
  const opts: GenerateOptions = typeof presetOrOptions === "string" ? { preset: presetOrOptions } : presetOrOptions;
  const preset = opts.preset ?? "tiny-v3";
  if (!isPresetName(preset)) throw new ConfigError(`unknown preset '${String(preset)}' (known: ${Object.keys(PRESETS).join(", ")})`);
  const config: Record<string, unknown> = { ...PRESETS[preset].config, vocab_size: TINY_VOCAB_SIZE };
  for (const [k, v] of Object.entries(opts.config ?? {})) {
    if (k === "quantization_config" && v === null) delete config[k];
    else config[k] = v;
  }
  return { preset, config, modelConfig: parseModelConfig(config) };
}

/**
 * Write a checkpoint folder: config.json, generation_config.json, the weights (model.safetensors or
 * shards + index), tokenizer files and a README.md saying how it was made.
 */
export function generateCheckpoint(presetOrOptions: PresetName | GenerateOptions, outDir: string, seed = 0): GeneratedCheckpoint {
  const opts: GenerateOptions = typeof presetOrOptions === "string" ? { preset: presetOrOptions } : presetOrOptions;
  const { preset, config, modelConfig: cfg } = resolveConfig(opts);
  const base = PRESETS[preset];
  const weightDtype = opts.weightDtype ?? base.weightDtype;
  const maxShardBytes = opts.maxShardBytes === undefined ? base.maxShardBytes : opts.maxShardBytes;
  const block = cfg.fp8BlockSize;

  fs.mkdirSync(outDir, { recursive: true });
  const written = writeHfCheckpoint(outDir, config, cfg, (spec) => initTensorValues(spec, seed), {
    weightDtype,
    maxShardBytes,
    ...(opts.onProgress ? { onProgress: opts.onProgress } : {}),
  });
  const files = [...written.files];

  const put = (name: string, text: string): void => {
    fs.writeFileSync(path.join(outDir, name), text);
    files.push(name);
  };

  const withTokenizer = (opts.tokenizer ?? true) && cfg.vocabSize >= TINY_VOCAB_SIZE;
  for (const f of ["tokenizer.json", "tokenizer_config.json"]) fs.rmSync(path.join(outDir, f), { force: true });
  if (withTokenizer) {
    const tok = buildTinyTokenizerFiles();
    put("tokenizer.json", JSON.stringify(tok.tokenizerJson, null, 2) + "\n");
    put("tokenizer_config.json", JSON.stringify(tok.tokenizerConfig, null, 2) + "\n");
  }
  const overrides = opts.config && Object.keys(opts.config).length > 0 ? ` with config overrides ${JSON.stringify(opts.config)}` : "";
  put(
    "README.md",
    [
      `# ${preset}`,
      "",
      `Generated by \`scripts/gen-tiny-model.ts\` (preset \`${preset}\`, seed ${seed}${overrides}): random weights, not a trained model.`,
      "",
      base.description + ".",
      "",
      `Weights: ${written.weightFiles} safetensors file(s), ${written.tensorCount} tensors, ${written.tensorBytes} bytes of tensor data` +
        (block
          ? `; linears F8_E4M3 with ${block[0]}x${block[1]} block scales (\`*_scale_inv\`, F32), other weights ${weightDtype}, e_score_correction_bias F32.`
          : `; ${weightDtype}.`),
      "",
      "Regenerate (byte-identical):",
      "",
      "```",
      `npx tsx scripts/gen-tiny-model.ts --preset ${preset} --seed ${seed}${overrides ? " --config '<overrides>'" : ""} --out <folder>`,
      "```",
      "",
    ].join("\n"),
  );
  return {
    dir: outDir,
    preset,
    seed,
    config,
    modelConfig: cfg,
    files: files.sort(),
    tensorCount: written.tensorCount,
    tensorBytes: written.tensorBytes,
    fp8: block !== null,
    tokenizer: withTokenizer,
  };
}
