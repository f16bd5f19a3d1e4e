/**
 * Writing a model in the exact Hugging Face layout of the released DeepSeek-V3 checkpoints: config.json,
 * generation_config.json and the weights (one model.safetensors, or shards plus an index) with HF tensor names.
 * Used by the random-weight generator (scripts/lib/tiny-checkpoint.ts) and by training (`moela train` saves
 * its model through it), so both write the same layout.
 *
 * Which tensors are FP8 (when the config has a quantization_config), following the released DeepSeek-V3:
 *  - F8_E4M3 + `<name>_scale_inv` F32 [ceil(out/128), ceil(in/128)]: every 2-D linear of attention
 *    (q_a_proj, q_b_proj / q_proj, kv_a_proj_with_mqa, kv_b_proj, o_proj) and of the MLPs (dense mlp,
 *    routed experts, shared experts), in the main layers and in the MTP layer's decoder block.
 *  - the weight dtype (BF16 or F32): embed_tokens, lm_head, every norm (incl. q_a_layernorm,
 *    kv_a_layernorm), mlp.gate.weight (the router), and the MTP layer's embed_tokens, enorm, hnorm,
 *    eh_proj, shared_head.norm and shared_head.head.
 *  - F32: mlp.gate.e_score_correction_bias.
 *  (scripts/lib/tiny-checkpoint.ts says why eh_proj and shared_head.head stay unquantized.)
 */
import * as fs from "node:fs";
import * as path from "node:path";
import { isMoeLayer, type ModelConfig } from "../config.js";
import { quantizeFp8Block } from "../quant/fp8-block.js";
import { f32ToBf16Bits, type DType } from "../tensor/dtype.js";
import { writeShardedCheckpoint, type TensorToWrite } from "./writer.js";

export type FloatDType = "BF16" | "F32";
export type InitKind = "linear" | "embed" | "head" | "router" | "norm" | "bias";

export interface TensorSpec {
  readonly name: string;
  readonly shape: readonly number[];
  /** What kind of weight it is (how a generator initialises it). */
  readonly init: InitKind;
  /** A linear that the FP8 checkpoints store as F8_E4M3 + _scale_inv. */
  readonly quantizable: boolean;
  /** Fixed dtype regardless of the checkpoint's weight dtype (the F32 e_score_correction_bias). */
  readonly dtype?: DType;
}

/**
 * Every weight tensor of a checkpoint for `cfg`, in HF module order (embedding, layers 0..N-1, the
 * MTP layers N.., final norm, lm_head), without the FP8 scale tensors.
 */
export function checkpointTensorSpecs(cfg: ModelConfig): TensorSpec[] {
  const H = cfg.hiddenSize;
  const out: TensorSpec[] = [];
  const lin = (name: string, rows: number, cols: number, quantizable = true): void => void out.push({ name, shape: [rows, cols], init: "linear", quantizable });
  const norm = (name: string, n: number): void => void out.push({ name, shape: [n], init: "norm", quantizable: false });
  const mlp = (p: string, inter: number): void => {
    lin(`${p}.gate_proj.weight`, inter, H);
    lin(`${p}.up_proj.weight`, inter, H);
    lin(`${p}.down_proj.weight`, H, inter);
  };
  const block = (i: number): void => {
    const p = `model.layers.${i}`;
    const a = `${p}.self_attn`;
    if (cfg.qLoraRank !== null) {
      lin(`${a}.q_a_proj.weight`, cfg.qLoraRank, H);
      norm(`${a}.q_a_layernorm.weight`, cfg.qLoraRank);
      lin(`${a}.q_b_proj.weight`, cfg.numHeads * cfg.qkHeadDim, cfg.qLoraRank);
    } else {
      lin(`${a}.q_proj.weight`, cfg.numHeads * cfg.qkHeadDim, H);
    }
    lin(`${a}.kv_a_proj_with_mqa.weight`, cfg.kvLoraRank + cfg.qkRopeHeadDim, H);
    norm(`${a}.kv_a_layernorm.weight`, cfg.kvLoraRank);
    lin(`${a}.kv_b_proj.weight`, cfg.numHeads * (cfg.qkNopeHeadDim + cfg.vHeadDim), cfg.kvLoraRank);
    lin(`${a}.o_proj.weight`, H, cfg.numHeads * cfg.vHeadDim);
    if (isMoeLayer(cfg, i)) {
      for (let j = 0; j < cfg.nRoutedExperts; j++) mlp(`${p}.mlp.experts.${j}`, cfg.moeIntermediateSize);
      out.push({ name: `${p}.mlp.gate.weight`, shape: [cfg.nRoutedExperts, H], init: "router", quantizable: false });
      if (cfg.topkMethod === "noaux_tc") {
        out.push({ name: `${p}.mlp.gate.e_score_correction_bias`, shape: [cfg.nRoutedExperts], init: "bias", quantizable: false, dtype: "F32" });
      }
      if (cfg.nSharedExperts > 0) mlp(`${p}.mlp.shared_experts`, cfg.moeIntermediateSize * cfg.nSharedExperts);
    } else {
      mlp(`${p}.mlp`, cfg.intermediateSize);
    }
    norm(`${p}.input_layernorm.weight`, H);
    norm(`${p}.post_attention_layernorm.weight`, H);
  };

  out.push({ name: "model.embed_tokens.weight", shape: [cfg.vocabSize, H], init: "embed", quantizable: false });
  for (let i = 0; i < cfg.numHiddenLayers; i++) block(i);
  for (let k = 0; k < cfg.numNextnPredictLayers; k++) {
    const i = cfg.numHiddenLayers + k;
    const p = `model.layers.${i}`;
    out.push({ name: `${p}.embed_tokens.weight`, shape: [cfg.vocabSize, H], init: "embed", quantizable: false });
    norm(`${p}.enorm.weight`, H);
    norm(`${p}.hnorm.weight`, H);
    lin(`${p}.eh_proj.weight`, H, 2 * H, false);
    block(i);
    norm(`${p}.shared_head.norm.weight`, H);
    out.push({ name: `${p}.shared_head.head.weight`, shape: [cfg.vocabSize, H], init: "head", quantizable: false });
  }
  norm("model.norm.weight", H);
  if (!cfg.tieWordEmbeddings) out.push({ name: "lm_head.weight", shape: [cfg.vocabSize, H], init: "head", quantizable: false });
  return out;
}

/** Little-endian bytes of float values as F32 or BF16 (round to nearest even). */
export function encodeFloats(values: ArrayLike<number>, dtype: FloatDType): Uint8Array {
  if (dtype === "F32") {
    const bytes = new Uint8Array(values.length * 4);
    const dv = new DataView(bytes.buffer);
    for (let i = 0; i < values.length; i++) dv.setFloat32(i * 4, values[i]!, true);
    return bytes;
  }
  const bytes = new Uint8Array(values.length * 2);
  for (let i = 0; i < values.length; i++) {
    const b = f32ToBf16Bits(values[i]!);
    bytes[2 * i] = b & 0xff;
    bytes[2 * i + 1] = b >>> 8;
  }
  return bytes;
}

/**
 * The tensors to write for one spec: F8_E4M3 + `_scale_inv` when `fp8Block` is given and the spec is
 * quantizable, else the spec's fixed dtype or `weightDtype`.
 */
export function hfTensorsFor(spec: TensorSpec, values: Float32Array, weightDtype: FloatDType, fp8Block: readonly [number, number] | null): TensorToWrite[] {
  if (fp8Block && spec.quantizable) {
    const [rows, cols] = spec.shape as [number, number];
    const q = quantizeFp8Block(values, rows, cols, fp8Block[0], fp8Block[1]);
    return [
      { name: spec.name, dtype: "F8_E4M3", shape: spec.shape, data: q.data },
      {
        name: `${spec.name}_scale_inv`,
        dtype: "F32",
        shape: [Math.ceil(rows / fp8Block[0]), Math.ceil(cols / fp8Block[1])],
        data: encodeFloats(q.scaleInv, "F32"),
      },
    ];
  }
  const dtype = (spec.dtype ?? weightDtype) as FloatDType;
  return [{ name: spec.name, dtype, shape: spec.shape, data: encodeFloats(values, dtype) }];
}

function sortKeysDeep(v: unknown): unknown {
  if (Array.isArray(v)) return v.map(sortKeysDeep);
  if (typeof v === "object" && v !== null) {
    const out: Record<string, unknown> = {};
    for (const k of Object.keys(v).sort()) out[k] = sortKeysDeep((v as Record<string, unknown>)[k]);
    return out;
  }
  return v;
}

/** JSON as transformers writes it: 2-space indent, sorted keys, trailing newline. */
export function hfJsonFile(v: unknown): string {
  return JSON.stringify(sortKeysDeep(v), null, 2) + "\n";
}

export interface HfWriteOptions {
  /** dtype of every weight that is neither FP8 nor fixed by its spec. */
  readonly weightDtype: FloatDType;
  /** Shard size limit; null writes one model.safetensors whatever the size. */
  readonly maxShardBytes: number | null;
  /** Called after each spec's tensors are encoded. */
  readonly onProgress?: (done: number, total: number, tensorName: string) => void;
}

/**
 * Write config.json, generation_config.json and the weights of `cfg` (parsed from `configJson`) into `dir`;
 * `valuesOf(spec)` gives each tensor's float values (row-major). FP8 when `cfg.fp8BlockSize` is set.
 * Returns the files written (relative to dir) and the tensors' count and bytes.
 */
export function writeHfCheckpoint(
  dir: string,
  configJson: Record<string, unknown>,
  cfg: ModelConfig,
  valuesOf: (spec: TensorSpec) => Float32Array,
  opts: HfWriteOptions,
): { files: string[]; tensorCount: number; tensorBytes: number; weightFiles: number } {
  const specs = checkpointTensorSpecs(cfg);
  const tensors: TensorToWrite[] = [];
  specs.forEach((spec, i) => {
    tensors.push(...hfTensorsFor(spec, valuesOf(spec), opts.weightDtype, cfg.fp8BlockSize));
    opts.onProgress?.(i + 1, specs.length, spec.name);
  });
  fs.mkdirSync(dir, { recursive: true });
  const written = writeShardedCheckpoint(dir, tensors, { maxShardBytes: opts.maxShardBytes ?? Number.MAX_SAFE_INTEGER });
  const files = [...written.files];
  if (written.indexFile) files.push(written.indexFile);
  fs.writeFileSync(path.join(dir, "config.json"), hfJsonFile(configJson));
  files.push("config.json");
  const gen = {
    _from_model_config: true,
    bos_token_id: configJson["bos_token_id"] ?? 0,
    eos_token_id: configJson["eos_token_id"] ?? 1,
    transformers_version: configJson["transformers_version"] ?? "4.46.3",
  };
  fs.writeFileSync(path.join(dir, "generation_config.json"), hfJsonFile(gen));
  files.push("generation_config.json");
  return { files, tensorCount: tensors.length, tensorBytes: written.totalSize, weightFiles: written.files.length };
}
