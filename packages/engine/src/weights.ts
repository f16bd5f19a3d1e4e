/**
 * Model weights as the kernels use them, loaded from a Hugging Face checkpoint folder with every tensor
 * checked against config.json. Linear weights stay compact (FP8 + block scales, BF16, F16 or F32);
 * norms, biases and the router's correction bias become float32.
 */
import { CheckpointError } from "@moela/core";
import { isMoeLayer, type ModelConfig } from "./config.js";
import { CheckpointTensors, toFloat32, type TensorInfo } from "./safetensors/index.js";
import { expectedScaleShape } from "./quant/fp8-block.js";
import type { WeightMatrix } from "./tensor/matrix.js";

export interface Linear {
  readonly w: WeightMatrix;
  readonly bias: Float32Array | null;
}

export interface MlpWeights {
  readonly gate: WeightMatrix; // [inter, hidden]
  readonly up: WeightMatrix; // [inter, hidden]
  readonly down: WeightMatrix; // [hidden, inter]
}

/** The query projection: low rank through q_lora_rank (V3, V2), or one matrix when q_lora_rank is null (V2-Lite). */
export type QueryWeights =
  | {
      readonly kind: "lora";
      readonly qA: Linear; // [q_lora_rank, hidden]
      readonly qANorm: Float32Array; // [q_lora_rank]
      readonly qB: WeightMatrix; // [heads * qk_head_dim, q_lora_rank]
    }
  | {
      readonly kind: "direct";
      readonly q: Linear; // [heads * qk_head_dim, hidden]
    };

export interface AttentionWeights {
  readonly query: QueryWeights;
  readonly kvA: Linear; // [kv_lora_rank + qk_rope_head_dim, hidden]
  readonly kvANorm: Float32Array; // [kv_lora_rank]
  readonly kvB: WeightMatrix; // [heads * (qk_nope_head_dim + v_head_dim), kv_lora_rank]
  readonly o: Linear; // [hidden, heads * v_head_dim]
}

export interface MoeWeights {
  readonly gate: WeightMatrix; // [n_routed_experts, hidden]
  readonly bias: Float32Array | null; // [n_routed_experts] e_score_correction_bias (V3)
  /** Routed experts loaded in this process (null where another process holds them). */
  readonly experts: ReadonlyArray<MlpWeights | null>;
  readonly shared: MlpWeights | null; // intermediate = moe_intermediate_size * n_shared_experts
}

/** A block's FFN: a dense SwiGLU MLP (the first first_k_dense_replace layers, and off the moe_layer_freq grid), or MoE. */
export type FfnWeights = { readonly kind: "dense"; readonly mlp: MlpWeights } | ({ readonly kind: "moe" } & MoeWeights);

export interface BlockWeights {
  readonly index: number;
  readonly inputNorm: Float32Array; // [hidden]
  readonly postNorm: Float32Array; // [hidden]
  readonly attn: AttentionWeights;
  readonly ffn: FfnWeights;
}

export interface MtpWeights {
  readonly embed: WeightMatrix; // [vocab, hidden] (the main embedding when the layer has none)
  readonly enorm: Float32Array;
  readonly hnorm: Float32Array;
  readonly ehProj: WeightMatrix; // [hidden, 2 * hidden], input [enorm(embed) ; hnorm(hidden)]
  readonly block: BlockWeights;
  readonly headNorm: Float32Array;
  readonly head: WeightMatrix; // [vocab, hidden]
}

export interface ModelWeights {
  readonly embed: WeightMatrix; // [vocab, hidden]
  readonly layers: readonly BlockWeights[];
  readonly norm: Float32Array;
  readonly lmHead: WeightMatrix; // [vocab, hidden]
  readonly mtp: readonly MtpWeights[];
}

export interface LoadOptions {
  /** Which routed experts to load (default: all). Expert-hosts load their shard, the attention side none. */
  readonly routedExperts?: (layer: number, expert: number) => boolean;
  /** Load the MTP layers when the checkpoint has them (default true). */
  readonly mtp?: boolean;
  /** Called after each part is loaded (a progress bar while a large checkpoint loads). */
  readonly onProgress?: ((p: LoadProgress) => void) | undefined;
}

/**
 * Weight-loading progress. A part is one unit of the load: the embedding, each decoder layer, the final
 * norm with the LM head, each MTP layer (loadWeights); each MoE layer's experts (loadExpertShard).
 * `total` is known before the first part, so `done / total` is a fraction; `bytes` is resident so far.
 */
export interface LoadProgress {
  readonly done: number;
  readonly total: number;
  readonly bytes: number;
}

/**
 * Copy bytes into fresh memory aligned for the element type (also frees the file buffer for GC). The memory is a
 * SharedArrayBuffer so MatmulPool workers (tensor/parallel.ts) read the weights in place, without copies.
 */
function copyAligned(bytes: Uint8Array): SharedArrayBuffer {
  const buf = new SharedArrayBuffer(bytes.byteLength);
  new Uint8Array(buf).set(bytes);
  return buf;
}

/** The same float32 values in a SharedArrayBuffer (scales and F64-converted weights the kernels read). */
function sharedFloat32(v: Float32Array): Float32Array {
  const out = new Float32Array(new SharedArrayBuffer(v.byteLength));
  out.set(v);
  return out;
}

export class WeightLoader {
  private readonly ckpt: CheckpointTensors;
  private readonly cfg: ModelConfig;
  private residentBytes = 0;

  constructor(ckpt: CheckpointTensors, cfg: ModelConfig) {
    this.ckpt = ckpt;
    this.cfg = cfg;
  }

  get bytes(): number {
    return this.residentBytes;
  }

  has(name: string): boolean {
    return this.ckpt.has(name);
  }

  private tensor(name: string, shape: readonly number[]): TensorInfo {
    const t = this.ckpt.get(name);
    if (t.shape.length !== shape.length || t.shape.some((d, i) => d !== shape[i])) {
      throw new CheckpointError(t.file, `shape [${t.shape.join(", ")}] contradicts config.json (expected [${shape.join(", ")}])`, name);
    }
    return t;
  }

  vector(name: string, n: number): Float32Array {
    const v = toFloat32(this.tensor(name, [n]));
    this.residentBytes += v.byteLength;
    return v;
  }

  matrix(name: string, rows: number, cols: number): WeightMatrix {
    const t = this.tensor(name, [rows, cols]);
    let w: WeightMatrix;
    switch (t.dtype) {
      case "F32":
        w = { kind: "f32", rows, cols, data: new Float32Array(copyAligned(t.bytes)) };
        break;
      case "F64":
        w = { kind: "f32", rows, cols, data: sharedFloat32(toFloat32(t)) };
        break;
      case "BF16":
        w = { kind: "bf16", rows, cols, data: new Uint16Array(copyAligned(t.bytes)) };
        break;
      case "F16":
        w = { kind: "f16", rows, cols, data: new Uint16Array(copyAligned(t.bytes)) };
        break;
      case "F8_E4M3": {
        const scaleName = `${name}_scale_inv`;
        if (!this.ckpt.has(scaleName)) {
          throw new CheckpointError(t.file, `FP8 weight has no '${scaleName}' block scale tensor`, name);
        }
        const [br, bc] = this.cfg.fp8BlockSize ?? [128, 128];
        const s = this.tensor(scaleName, expectedScaleShape(rows, cols, br, bc));
        w = { kind: "fp8", rows, cols, data: new Uint8Array(copyAligned(t.bytes)), scaleInv: sharedFloat32(toFloat32(s)), blockRows: br, blockCols: bc };
        break;
      }
    }
    this.residentBytes += w.kind === "fp8" ? w.data.byteLength + w.scaleInv.byteLength : w.data.byteLength;
    return w;
  }

  /**
   * `name`, or `copyOf` itself when the checkpoint stores the same bytes under `name`. DeepSeek-V3 checkpoints
   * repeat the embedding and the output head in every MTP layer (embed_tokens, shared_head.head); sharing the one
   * matrix saves their memory (two vocab x hidden tensors: about 3.7 GB on V3) and lets the MTP head find in cache
   * what the main head has just read. Same values, so the same bits either way.
   */
  matrixOrCopyOf(name: string, rows: number, cols: number, copyOf: WeightMatrix): WeightMatrix {
    const t = this.tensor(name, [rows, cols]);
    const kindOf: Partial<Record<string, WeightMatrix["kind"]>> = { F32: "f32", BF16: "bf16", F16: "f16" };
    if (kindOf[t.dtype] === copyOf.kind && copyOf.rows === rows && copyOf.cols === cols) {
      const held = Buffer.from(copyOf.data.buffer, copyOf.data.byteOffset, copyOf.data.byteLength);
      if (held.equals(t.bytes)) return copyOf;
    }
    return this.matrix(name, rows, cols);
  }

  linear(prefix: string, rows: number, cols: number): Linear {
    const biasName = `${prefix}.bias`;
    return { w: this.matrix(`${prefix}.weight`, rows, cols), bias: this.ckpt.has(biasName) ? this.vector(biasName, rows) : null };
  }

  mlp(prefix: string, inter: number): MlpWeights {
    const h = this.cfg.hiddenSize;
    return {
      gate: this.matrix(`${prefix}.gate_proj.weight`, inter, h),
      up: this.matrix(`${prefix}.up_proj.weight`, inter, h),
      down: this.matrix(`${prefix}.down_proj.weight`, h, inter),
    };
  }

  attention(prefix: string): AttentionWeights {
    const c = this.cfg;
    const h = c.hiddenSize;
    const qOut = c.numHeads * c.qkHeadDim;
    const lora = c.qLoraRank;
    return {
      query:
        lora === null
          ? { kind: "direct", q: this.linear(`${prefix}.q_proj`, qOut, h) }
          : {
              kind: "lora",
              qA: this.linear(`${prefix}.q_a_proj`, lora, h),
              qANorm: this.vector(`${prefix}.q_a_layernorm.weight`, lora),
              qB: this.matrix(`${prefix}.q_b_proj.weight`, qOut, lora),
            },
      kvA: this.linear(`${prefix}.kv_a_proj_with_mqa`, c.kvLoraRank + c.qkRopeHeadDim, h),
      kvANorm: this.vector(`${prefix}.kv_a_layernorm.weight`, c.kvLoraRank),
      kvB: this.matrix(`${prefix}.kv_b_proj.weight`, c.numHeads * (c.qkNopeHeadDim + c.vHeadDim), c.kvLoraRank),
      o: this.linear(`${prefix}.o_proj`, h, c.numHeads * c.vHeadDim),
    };
  }

  block(i: number, opts: LoadOptions): BlockWeights {
    const c = this.cfg;
    const p = `model.layers.${i}`;
    const h = c.hiddenSize;
    return {
      index: i,
      inputNorm: this.vector(`${p}.input_layernorm.weight`, h),
      postNorm: this.vector(`${p}.post_attention_layernorm.weight`, h),
      attn: this.attention(`${p}.self_attn`),
      ffn: isMoeLayer(c, i) ? this.moe(i, opts) : { kind: "dense", mlp: this.mlp(`${p}.mlp`, c.intermediateSize) },
    };
  }

  /** Layer i's MoE: router, the routed experts `opts.routedExperts` asks for (null elsewhere), shared expert. */
  moe(i: number, opts: LoadOptions): FfnWeights {
    const c = this.cfg;
    const p = `model.layers.${i}.mlp`;
    const want = opts.routedExperts ?? (() => true);
    return {
      kind: "moe",
      gate: this.matrix(`${p}.gate.weight`, c.nRoutedExperts, c.hiddenSize),
      bias: c.topkMethod === "noaux_tc" ? this.vector(`${p}.gate.e_score_correction_bias`, c.nRoutedExperts) : null,
      experts: Array.from({ length: c.nRoutedExperts }, (_, e) => (want(i, e) ? this.mlp(`${p}.experts.${e}`, c.moeIntermediateSize) : null)),
      shared: c.nSharedExperts > 0 ? this.mlp(`${p}.shared_experts`, c.moeIntermediateSize * c.nSharedExperts) : null,
    };
  }
}

export function loadWeights(dir: string, cfg: ModelConfig, opts: LoadOptions = {}): { weights: ModelWeights; bytes: number } {
  const ckpt = CheckpointTensors.open(dir);
  const l = new WeightLoader(ckpt, cfg);
  const c = cfg;
  const h = c.hiddenSize;
  // HF transformers drops the MTP weights when it saves; a checkpoint without them simply has no draft head.
  let mtpLayers = 0;
  if (opts.mtp !== false) while (mtpLayers < c.numNextnPredictLayers && l.has(`model.layers.${c.numHiddenLayers + mtpLayers}.eh_proj.weight`)) mtpLayers++;
  const total = 1 + c.numHiddenLayers + 1 + mtpLayers;
  let done = 0;
  const step = (): void => opts.onProgress?.({ done: ++done, total, bytes: l.bytes });
  const embed = l.matrix("model.embed_tokens.weight", c.vocabSize, h);
  step();
  const layers = Array.from({ length: c.numHiddenLayers }, (_, i) => {
    const b = l.block(i, opts);
    step();
    return b;
  });
  const norm = l.vector("model.norm.weight", h);
  const lmHead = c.tieWordEmbeddings && !l.has("lm_head.weight") ? embed : l.matrix("lm_head.weight", c.vocabSize, h);
  step();
  const mtp: MtpWeights[] = [];
  for (let j = 0; j < mtpLayers; j++) {
    const i = c.numHiddenLayers + j;
    const p = `model.layers.${i}`;
    mtp.push({
      embed: l.has(`${p}.embed_tokens.weight`) ? l.matrixOrCopyOf(`${p}.embed_tokens.weight`, c.vocabSize, h, embed) : embed,
      enorm: l.vector(`${p}.enorm.weight`, h),
      hnorm: l.vector(`${p}.hnorm.weight`, h),
      ehProj: l.matrix(`${p}.eh_proj.weight`, h, 2 * h),
      block: l.block(i, opts),
      headNorm: l.vector(`${p}.shared_head.norm.weight`, h),
      head: l.has(`${p}.shared_head.head.weight`) ? l.matrixOrCopyOf(`${p}.shared_head.head.weight`, c.vocabSize, h, lmHead) : lmHead,
    });
    step();
  }
  return { weights: { embed, layers, norm, lmHead, mtp }, bytes: l.bytes };
}

/** The routed experts of one shard: per MoE layer (main and MTP), experts by global id, null where not owned. */
export interface ExpertShard {
  readonly expertsByLayer: ReadonlyMap<number, ReadonlyArray<MlpWeights | null>>;
  /** Per MoE layer, its shared expert when asked for (loadExpertShard's withShared; empty otherwise). */
  readonly sharedByLayer: ReadonlyMap<number, MlpWeights>;
  readonly bytes: number;
}

/**
 * Load only experts (what an expert-host holds): no attention, no embeddings; of the routed experts only
 * those `owned` says, and with `withShared` every MoE layer's shared expert (a host that computes it, as the
 * paper's redundant heavy-load expert). Experts not owned are never read from the files' tensors.
 */
export function loadExpertShard(
  dir: string,
  cfg: ModelConfig,
  owned: (layer: number, expert: number) => boolean,
  onProgress?: (p: LoadProgress) => void,
  withShared = false,
): ExpertShard {
  const ckpt = CheckpointTensors.open(dir);
  const l = new WeightLoader(ckpt, cfg);
  const expertsByLayer = new Map<number, ReadonlyArray<MlpWeights | null>>();
  const sharedByLayer = new Map<number, MlpWeights>();
  const mtpLayers = Array.from({ length: cfg.numNextnPredictLayers }, (_, j) => cfg.numHiddenLayers + j).filter((i) =>
    l.has(`model.layers.${i}.eh_proj.weight`),
  );
  const moeLayers = [...Array.from({ length: cfg.numHiddenLayers }, (_, i) => i), ...mtpLayers].filter((i) => isMoeLayer(cfg, i));
  for (const i of moeLayers) {
    expertsByLayer.set(
      i,
      Array.from({ length: cfg.nRoutedExperts }, (_, e) => (owned(i, e) ? l.mlp(`model.layers.${i}.mlp.experts.${e}`, cfg.moeIntermediateSize) : null)),
    );
    if (withShared && cfg.nSharedExperts > 0) sharedByLayer.set(i, l.mlp(`model.layers.${i}.mlp.shared_experts`, cfg.moeIntermediateSize * cfg.nSharedExperts));
    onProgress?.({ done: expertsByLayer.size, total: moeLayers.length, bytes: l.bytes });
  }
  return { expertsByLayer, sharedByLayer, bytes: l.bytes };
}
