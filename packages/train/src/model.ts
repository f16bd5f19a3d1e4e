/**
 * A DeepSeek-V3 model for training: the engine's forward (embedding, pre-norm blocks of MLA + dense MLP or
 * DeepSeekMoE, final norm, lm_head, and the MTP module) over a batch of B sequences of S tokens, with the
 * losses and the whole backward pass.
 *
 * A batch row holds S + 1 + D tokens (D = MTP depth, 0 or 1): position p (0 <= p < S) reads x[p] and the main
 * head predicts x[p + 1]. The MTP module at p combines the main model's final-normed hidden state h[p] with the
 * embedding of x[p + 1] and predicts x[p + 2], exactly as the engine's forwardMtp runs it (which, as vLLM,
 * zeroes the embedding at position 0). Loss = CE_main + lambda * CE_mtp + sum over MoE layers of the
 * sequence-wise balance loss (when alpha > 0).
 */
import { isMoeLayer, MAX_SPECULATIVE_TOKENS, type ModelConfig } from "@moela/engine";
import { Arena, type Ops, type Vec } from "./ops.js";
import { tiedMtpTensors, type Param, type ParamStore } from "./params.js";
import {
  addInPlace,
  crossEntropy,
  embed,
  embedBack,
  linear,
  linearBack,
  mlp,
  mlpBack,
  mlpParams,
  rmsNorm,
  rmsNormBack,
  rowArgmax,
  type MlpParams,
  type MlpSaved,
  type RmsSaved,
} from "./layers.js";
import { mla, mlaBack, mlaParams, mlaShape, type MlaParams, type MlaSaved, type MlaShape } from "./mla.js";
import { balanceLoss, moe, moeBack, moeParams, type MoeParams, type MoeSaved } from "./moe.js";

export interface LossOptions {
  /** Weight of the MTP loss (DeepSeek-V3: 0.3 early, 0.1 later). */
  readonly mtpLambda: number;
  /** Weight of the sequence-wise balance loss (0: off; DeepSeek-V3 used 1e-4). */
  readonly balanceAlpha: number;
  /**
   * Sequences in the whole step when this call computes only part of it (data-parallel replicas): losses are
   * means over the whole step, so the parts' losses and gradients add up to the whole's. Default: B.
   */
  readonly batchRows?: number;
  /**
   * What the MTP head learns at position p: "data" (default), the data's x[p + 2] as DeepSeek-V3 trains it; or
   * "main", the main head's own top-1 at p + 1, the token that speculative decoding's verification accepts
   * (self-distillation: a draft is worth only as much as it agrees with the model that checks it). The last
   * position of a row, whose p + 1 the main head does not see, then has no target.
   */
  readonly mtpTargets?: "data" | "main";
  /**
   * Only the MTP module learns: no gradient reaches the main model's parameters, its embedding and output head
   * included (the MTP module shares them), and the main head's loss is reported but not differentiated.
   */
  readonly mtpOnly?: boolean;
  /**
   * Depths the MTP module learns (default 1). From 2, with mtpTargets "main", it also learns chained drafting
   * (EngineOptions.speculativeTokens): at depth d its row at q is depth 1's row with its hidden input replaced by
   * depth d - 1's output at q - 1, normed by shared_head.norm as the engine feeds it. It takes the data's x[q + 1]
   * (which the draft before it was, if it landed: the main head's top-1 at q + 1, its target, is conditioned on
   * x[q + 1], not on the main head's guess of it) and learns the main head's top-1 at q + 1. Its gradient flows
   * back through the depths before. One simplification: a depth's rows attend to that depth's earlier rows, where
   * the engine's chained row attends to depth 1's. Backward needs mtpOnly.
   */
  readonly mtpDepths?: number;
}

export interface StepResult {
  /** The total loss that was differentiated. */
  readonly loss: number;
  readonly mainLoss: number;
  readonly mtpLoss: number;
  /** The chained depths' MTP losses (2 to mtpDepths), summed; 0 without them. */
  readonly mtpChainLoss: number;
  readonly balanceLoss: number;
  /** Positions whose main (MTP) head's top-1 prediction was the target. */
  readonly mainCorrect: number;
  readonly mtpCorrect: number;
  /** The chained depths' positions whose MTP top-1 was the target, summed over depths. */
  readonly mtpChainCorrect: number;
  /** Per MoE layer (main layers, then MTP), by layer index: tokens routed to each expert in this batch. */
  readonly loads: Map<number, Int32Array>;
}

interface BlockParams {
  readonly index: number;
  readonly inputNorm: Param;
  readonly postNorm: Param;
  readonly attn: MlaParams;
  readonly ffn: FfnParams;
}

/** A block's FFN: a dense SwiGLU MLP or MoE (as the engine's FfnWeights). */
type FfnParams = { readonly kind: "dense"; readonly mlp: MlpParams } | { readonly kind: "moe"; readonly moe: MoeParams };
type FfnSaved = { readonly kind: "dense"; readonly mlp: MlpSaved } | { readonly kind: "moe"; readonly moe: MoeSaved };

/** One pass of the MTP module over a batch: what its backward needs. */
interface MtpPass {
  readonly loss: number;
  readonly correct: number;
  /** The tokens embedded at each position (negative: a zero row). */
  readonly mids: Int32Array;
  readonly en: RmsSaved;
  readonly hn: RmsSaved;
  /** [T, 2 * hidden] = [enorm(e) ; hnorm(h)], eh_proj's input. */
  readonly cat: Vec;
  readonly blk: BlockSaved;
  readonly fin: RmsSaved;
  /** [T, hidden] the output row normed by shared_head.norm (the head's input, and a chained depth's hidden). */
  readonly normed: Vec;
  /** The head's logits, turned into their gradient by the loss. */
  readonly dlogits: Vec;
}

interface BlockSaved {
  readonly n1: RmsSaved;
  readonly attn: MlaSaved;
  readonly n2: RmsSaved;
  readonly ffn: FfnSaved;
}

export class TrainModel {
  readonly config: ModelConfig;
  readonly params: ParamStore;
  /** The ops of step(): buffers recycled between steps (the public `ops` allocates fresh ones). */
  private readonly arena: Arena;
  private stepOps: Ops;
  readonly ops: Ops;
  private readonly blocks: BlockParams[];
  private readonly mtpBlock: BlockParams | null;
  private shapes = new Map<number, MlaShape>();

  constructor(config: ModelConfig, params: ParamStore, ops: Ops) {
    if (config.numNextnPredictLayers > 1) throw new Error("training supports at most one MTP layer");
    this.config = config;
    this.params = params;
    this.ops = ops;
    this.arena = new Arena(ops);
    this.stepOps = ops;
    this.blocks = Array.from({ length: config.numHiddenLayers }, (_, i) => this.blockParams(i));
    this.mtpBlock = config.numNextnPredictLayers === 1 ? this.blockParams(config.numHiddenLayers) : null;
  }

  /** Tokens per batch row for S positions. */
  rowLength(S: number): number {
    return S + 1 + (this.mtpBlock !== null ? 1 : 0);
  }

  private blockParams(i: number): BlockParams {
    const get = (n: string): Param => this.params.get(n);
    const has = (n: string): boolean => this.params.has(n);
    const moeLayer = isMoeLayer(this.config, i);
    return {
      index: i,
      inputNorm: get(`model.layers.${i}.input_layernorm.weight`),
      postNorm: get(`model.layers.${i}.post_attention_layernorm.weight`),
      attn: mlaParams(get, this.config, i),
      ffn: moeLayer ? { kind: "moe", moe: moeParams(get, has, this.config, i) } : { kind: "dense", mlp: mlpParams(get, `model.layers.${i}.mlp`) },
    };
  }

  private shape(S: number): MlaShape {
    let s = this.shapes.get(S);
    if (s === undefined) {
      s = mlaShape(this.config, S);
      this.shapes.set(S, s);
    }
    return s;
  }

  private block(b: BlockParams, h: Vec, B: number, S: number): { h: Vec; saved: BlockSaved } {
    const ops = this.stepOps;
    const c = this.config;
    const T = B * S;
    const hd = c.hiddenSize;
    const n1 = rmsNorm(ops, h, T, hd, b.inputNorm, c.rmsNormEps);
    const a = mla(ops, b.attn, this.shape(S), n1.y, B, S);
    const h1 = a.y;
    addInPlace(h1, h); // h1 = h + attn
    const n2 = rmsNorm(ops, h1, T, hd, b.postNorm, c.rmsNormEps);
    let f: Vec;
    let ffn: FfnSaved;
    if (b.ffn.kind === "moe") {
      const r = moe(ops, c, b.ffn.moe, n2.y, T);
      f = r.y;
      ffn = { kind: "moe", moe: r.saved };
    } else {
      const r = mlp(ops, b.ffn.mlp, n2.y, T);
      f = r.y;
      ffn = { kind: "dense", mlp: r.saved };
    }
    addInPlace(f, h1); // h2 = h1 + ffn
    return { h: f, saved: { n1: n1.saved, attn: a.saved, n2: n2.saved, ffn } };
  }

  /** dh2 -> dh (dh2 is consumed). */
  private blockBack(b: BlockParams, s: BlockSaved, dh2: Vec, B: number, S: number, alpha: number, batchRows: number): Vec {
    const ops = this.stepOps;
    const c = this.config;
    const T = B * S;
    const hd = c.hiddenSize;
    let dn2: Vec;
    if (b.ffn.kind === "moe" && s.ffn.kind === "moe") dn2 = moeBack(ops, c, b.ffn.moe, s.ffn.moe, dh2, { balanceAlpha: alpha, S, batchRows });
    else if (b.ffn.kind === "dense" && s.ffn.kind === "dense") dn2 = mlpBack(ops, b.ffn.mlp, s.ffn.mlp, dh2);
    else throw new Error(`layer ${b.index}: the saved activations are not of its FFN's kind`);
    const dh1 = rmsNormBack(ops, s.n2, T, hd, b.postNorm, dn2, dh2, true); // dh1 = dh2 + norm'(dn2)
    const dn1 = mlaBack(ops, b.attn, this.shape(S), s.attn, dh1, B, S);
    return rmsNormBack(ops, s.n1, T, hd, b.inputNorm, dn1, dh1, true); // dh = dh1 + norm'(dn1)
  }

  private headParam(): Param {
    return this.params.get(this.config.tieWordEmbeddings ? "model.embed_tokens.weight" : "lm_head.weight");
  }

  /**
   * The MTP module's passes of a step: depth 1 on the main model's final-normed hidden states `hN` and the data's
   * next tokens, then each chained depth on the one before (LossOptions.mtpDepths; `mainTop` is the main head's
   * top-1 per position, null unless mtpTargets is "main").
   */
  private mtpPasses(
    ops: Ops,
    mb: BlockParams,
    hN: Vec,
    mainTop: Int32Array | null,
    tokens: Int32Array,
    B: number,
    S: number,
    depths: number,
    weight: number,
    rows: number,
  ): MtpPass[] {
    const T = B * S;
    const hd = this.config.hiddenSize;
    const L = this.rowLength(S);
    const mids = new Int32Array(T);
    const mtargets = new Int32Array(T);
    for (let b = 0; b < B; b++) {
      for (let q = 0; q < S; q++) {
        mids[b * S + q] = q === 0 ? -1 : tokens[b * L + q + 1]!; // the engine zeroes the embedding at position 0
        if (mainTop === null) mtargets[b * S + q] = tokens[b * L + q + 2]!;
        else mtargets[b * S + q] = q + 1 < S ? mainTop[b * S + q + 1]! : -1;
      }
    }
    const passes = [this.mtpPass(ops, mb, hN, mids, mtargets, B, S, weight, rows)];
    for (let d = 2; d <= depths; d++) {
      const before = passes[d - 2]!.normed;
      const hidden = ops.scratch(T * hd);
      const ctargets = new Int32Array(T);
      for (let t = 0; t < T; t++) {
        const q = t % S;
        // Position 0 has no row before it: there it is a depth-1 row, context for the rest, with no target.
        if (q === 0) hidden.set(hN.subarray(t * hd, (t + 1) * hd), t * hd);
        else hidden.set(before.subarray((t - 1) * hd, t * hd), t * hd);
        ctargets[t] = q >= d - 1 && q + 1 < S ? mainTop![t + 1]! : -1;
      }
      passes.push(this.mtpPass(ops, mb, hidden, mids, ctargets, B, S, weight, rows));
    }
    return passes;
  }

  /**
   * The MTP module over `hidden` [T, hidden] (final-normed rows) and the tokens `mids` (negative: a zero
   * embedding), its loss against `targets` (negative: none) weighted by `weight` over `rows` * S positions.
   */
  private mtpPass(ops: Ops, mb: BlockParams, hidden: Vec, mids: Int32Array, targets: Int32Array, B: number, S: number, weight: number, rows: number): MtpPass {
    const c = this.config;
    const T = B * S;
    const hd = c.hiddenSize;
    const p = `model.layers.${mb.index}`;
    const e = embed(ops, this.params.get("model.embed_tokens.weight"), mids, T);
    const en = rmsNorm(ops, e, T, hd, this.params.get(`${p}.enorm.weight`), c.rmsNormEps);
    const hn = rmsNorm(ops, hidden, T, hd, this.params.get(`${p}.hnorm.weight`), c.rmsNormEps);
    const cat = ops.scratch(T * 2 * hd);
    for (let t = 0; t < T; t++) {
      cat.set(en.y.subarray(t * hd, (t + 1) * hd), t * 2 * hd);
      cat.set(hn.y.subarray(t * hd, (t + 1) * hd), t * 2 * hd + hd);
    }
    const h0 = linear(ops, this.params.get(`${p}.eh_proj.weight`), cat, T);
    const r = this.block(mb, h0, B, S);
    const fin = rmsNorm(ops, r.h, T, hd, this.params.get(`${p}.shared_head.norm.weight`), c.rmsNormEps);
    const ml = linear(ops, this.headParam(), fin.y, T);
    const mc = crossEntropy(ml, T, c.vocabSize, targets, weight, rows * S);
    return { loss: mc.loss, correct: mc.correct, mids, en: en.saved, hn: hn.saved, cat, blk: r.saved, fin: fin.saved, normed: fin.y, dlogits: ml };
  }

  /**
   * Forward over `tokens` [B, rowLength(S)], then (when `backward`) the backward pass, adding into the
   * parameters' gradients (zero them first).
   */
  step(tokens: Int32Array, B: number, S: number, opts: LossOptions, backward = true): StepResult {
    this.arena.reset();
    this.stepOps = this.arena.ops;
    try {
      return this.stepWith(this.arena.ops, tokens, B, S, opts, backward);
    } finally {
      this.stepOps = this.ops;
    }
  }

  private stepWith(ops: Ops, tokens: Int32Array, B: number, S: number, opts: LossOptions, backward: boolean): StepResult {
    const c = this.config;
    const hd = c.hiddenSize;
    const V = c.vocabSize;
    const L = this.rowLength(S);
    if (tokens.length !== B * L) throw new RangeError(`a batch of ${B} x ${S} positions needs ${B * L} tokens, got ${tokens.length}`);
    const T = B * S;
    const rows = opts.batchRows ?? B;
    const ids = new Int32Array(T);
    const targets = new Int32Array(T);
    for (let b = 0; b < B; b++) {
      for (let p = 0; p < S; p++) {
        ids[b * S + p] = tokens[b * L + p]!;
        targets[b * S + p] = tokens[b * L + p + 1]!;
      }
    }
    const E = this.params.get("model.embed_tokens.weight");
    let h = embed(ops, E, ids, T);
    const saved: BlockSaved[] = [];
    const loads = new Map<number, Int32Array>();
    let bal = 0;
    for (const b of this.blocks) {
      const r = this.block(b, h, B, S);
      h = r.h;
      saved.push(r.saved);
      if (r.saved.ffn.kind === "moe") {
        loads.set(b.index, r.saved.ffn.moe.load);
        bal += balanceLoss(c, r.saved.ffn.moe, S, opts.balanceAlpha, rows);
      }
    }
    const fn = rmsNorm(ops, h, T, hd, this.params.get("model.norm.weight"), c.rmsNormEps);
    const hN = fn.y; // [T, hidden] final-normed hidden (the MTP module's input)
    const head = this.headParam();
    const logits = linear(ops, head, hN, T); // [T, V]
    const mainTop = opts.mtpTargets === "main" ? topIds(logits, T, V) : null;
    const mtpOnly = opts.mtpOnly === true;
    const main = crossEntropy(logits, T, V, targets, mtpOnly ? 0 : 1, rows * S); // logits now hold dlogits
    const mainLoss = main.loss;

    // MTP module: depth 1 on the main model's hidden states, then the chained depths, each on the one before
    const mb = this.mtpBlock;
    const depths = opts.mtpDepths ?? 1;
    if (!(Number.isInteger(depths) && depths >= 1 && depths <= MAX_SPECULATIVE_TOKENS))
      throw new RangeError(`mtpDepths must be an integer from 1 to ${MAX_SPECULATIVE_TOKENS}, got ${depths}`);
    if (depths > 1 && (mb === null || mainTop === null)) throw new Error("mtpDepths above 1 needs an MTP layer and mtpTargets main");
    if (depths > 1 && backward && !mtpOnly) throw new Error("mtpDepths above 1 trains the MTP module alone: set mtpOnly");
    const passes = mb !== null ? this.mtpPasses(ops, mb, hN, mainTop, tokens, B, S, depths, opts.mtpLambda, rows) : [];
    if (mb !== null) {
      for (const [d, m] of passes.entries()) {
        if (m.blk.ffn.kind !== "moe") continue;
        // The bias balancing follows depth 1's routing, the one every draft takes.
        if (d === 0) loads.set(mb.index, m.blk.ffn.moe.load);
        bal += balanceLoss(c, m.blk.ffn.moe, S, opts.balanceAlpha, rows);
      }
    }
    const mtpLoss = passes[0]?.loss ?? 0;
    const mtpCorrect = passes[0]?.correct ?? 0;
    const mtpChainLoss = passes.slice(1).reduce((a, m) => a + m.loss, 0);
    const mtpChainCorrect = passes.slice(1).reduce((a, m) => a + m.correct, 0);
    const loss = mainLoss + opts.mtpLambda * (mtpLoss + mtpChainLoss) + bal;
    const result: StepResult = { loss, mainLoss, mtpLoss, mtpChainLoss, balanceLoss: bal, mainCorrect: main.correct, mtpCorrect, mtpChainCorrect, loads };
    if (!backward) return result;

    // ---------------------------------------------------------------- backward
    if (mtpOnly && mb === null) throw new Error("mtpOnly: this model has no MTP layer to train");
    const dhN = mtpOnly ? null : linearBack(ops, head, hN, logits, T); // [T, hidden]
    if (mb !== null) {
      const p = `model.layers.${c.numHiddenLayers}`;
      // The gradient of a depth's normed output from the depth after it (which takes it as its hidden input).
      let carried: Vec | undefined;
      for (let d = passes.length - 1; d >= 0; d--) {
        const m = passes[d]!;
        const dnormed = linearBack(ops, head, m.normed, m.dlogits, T, carried, !mtpOnly);
        const dh = rmsNormBack(ops, m.fin, T, hd, this.params.get(`${p}.shared_head.norm.weight`), dnormed);
        const dh0 = this.blockBack(mb, m.blk, dh, B, S, opts.balanceAlpha, rows);
        const dcat = linearBack(ops, this.params.get(`${p}.eh_proj.weight`), m.cat, dh0, T);
        const den = ops.scratch(T * hd);
        const dhn = ops.scratch(T * hd);
        for (let t = 0; t < T; t++) {
          den.set(dcat.subarray(t * 2 * hd, t * 2 * hd + hd), t * hd);
          dhn.set(dcat.subarray(t * 2 * hd + hd, (t + 1) * 2 * hd), t * hd);
        }
        const de = rmsNormBack(ops, m.en, T, hd, this.params.get(`${p}.enorm.weight`), den);
        if (d > 0) {
          // A chained depth's hidden row at q is the depth before's output at q - 1 (position 0's is the main
          // model's: frozen, as chained depths train with mtpOnly).
          const dhidden = rmsNormBack(ops, m.hn, T, hd, this.params.get(`${p}.hnorm.weight`), dhn);
          carried = ops.alloc(T * hd);
          for (let t = 0; t < T; t++) if (t % S !== 0) carried.set(dhidden.subarray(t * hd, (t + 1) * hd), (t - 1) * hd);
          continue;
        }
        if (dhN === null) {
          // The norms' weights are the MTP module's own; what flows past them into the main model stops here.
          rmsNormBack(ops, m.hn, T, hd, this.params.get(`${p}.hnorm.weight`), dhn);
          continue;
        }
        embedBack(E, m.mids, T, de);
        rmsNormBack(ops, m.hn, T, hd, this.params.get(`${p}.hnorm.weight`), dhn, dhN, true);
      }
    }
    if (dhN === null) return result;
    let dh = rmsNormBack(ops, fn.saved, T, hd, this.params.get("model.norm.weight"), dhN);
    for (let i = this.blocks.length - 1; i >= 0; i--) dh = this.blockBack(this.blocks[i]!, saved[i]!, dh, B, S, opts.balanceAlpha, rows);
    embedBack(E, ids, T, dh);
    return result;
  }

  /** Main-model logits [B * S, V] of `ids` [B, S] (no loss, no MTP): for evaluation and the engine-equality tests. */
  logits(ids: Int32Array, B: number, S: number): { logits: Vec; hidden: Vec } {
    const ops = this.ops;
    const c = this.config;
    const T = B * S;
    let h = embed(ops, this.params.get("model.embed_tokens.weight"), ids, T);
    for (const b of this.blocks) h = this.block(b, h, B, S).h;
    const hN = rmsNorm(ops, h, T, c.hiddenSize, this.params.get("model.norm.weight"), c.rmsNormEps).y;
    return { logits: linear(ops, this.headParam(), hN, T), hidden: hN };
  }

  /** MTP logits [B * S, V] at each position p from the main final-normed hidden [B * S, hidden] and mids (x[p + 1]). */
  mtpLogits(hidden: Vec, mids: Int32Array, B: number, S: number): Vec {
    return this.mtpForward(hidden, mids, B, S).logits;
  }

  /** mtpLogits, and the output rows normed by shared_head.norm (what a chained draft feeds the module next). */
  mtpForward(hidden: Vec, mids: Int32Array, B: number, S: number): { logits: Vec; normed: Vec } {
    const mb = this.mtpBlock;
    if (mb === null) throw new Error("this model has no MTP layer");
    const ops = this.ops;
    const c = this.config;
    const T = B * S;
    const hd = c.hiddenSize;
    const p = `model.layers.${c.numHiddenLayers}`;
    const ids = Int32Array.from(mids, (id, t) => (t % S === 0 ? -1 : id));
    const en = rmsNorm(ops, embed(ops, this.params.get("model.embed_tokens.weight"), ids, T), T, hd, this.params.get(`${p}.enorm.weight`), c.rmsNormEps).y;
    const hn = rmsNorm(ops, hidden, T, hd, this.params.get(`${p}.hnorm.weight`), c.rmsNormEps).y;
    const cat = ops.alloc(T * 2 * hd);
    for (let t = 0; t < T; t++) {
      cat.set(en.subarray(t * hd, (t + 1) * hd), t * 2 * hd);
      cat.set(hn.subarray(t * hd, (t + 1) * hd), t * 2 * hd + hd);
    }
    const h = this.block(mb, linear(ops, this.params.get(`${p}.eh_proj.weight`), cat, T), B, S).h;
    const fin = rmsNorm(ops, h, T, hd, this.params.get(`${p}.shared_head.norm.weight`), c.rmsNormEps).y;
    return { logits: linear(ops, this.headParam(), fin, T), normed: fin };
  }

  /** Is `name` a parameter of the MTP module (the only ones an mtpOnly step gives gradients)? */
  isMtpParam(name: string): boolean {
    return this.mtpBlock !== null && name.startsWith(`model.layers.${this.config.numHiddenLayers}.`);
  }

  /** The values of every checkpoint tensor (the MTP layer's embed_tokens and shared_head.head: the tied ones). */
  tensorValues(name: string): Vec {
    const tied = tiedMtpTensors(this.config).get(name);
    return this.params.get(tied ?? name).data;
  }
}

/** Per row of `logits` [T, V]: the id of its largest value (ties to the lower id, as crossEntropy counts them). */
function topIds(logits: Vec, T: number, V: number): Int32Array {
  const out = new Int32Array(T);
  for (let t = 0; t < T; t++) out[t] = rowArgmax(logits, t * V, V);
  return out;
}
