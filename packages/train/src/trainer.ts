/**
 * The training loop: batches drawn from a token stream by a seeded generator, forward + backward, global-norm
 * gradient clipping, AdamW (decoupled weight decay on 2-D weights only) under linear warm-up and cosine decay,
 * then DeepSeek-V3's auxiliary-loss-free balancing: each MoE layer's e_score_correction_bias moves by
 * gamma * sign(mean load - load_i) after every step. Everything runs in a fixed order on one thread except
 * the native products, whose bits do not depend on the thread count, so a run is a function of (seed, data,
 * options): two runs give identical bits, and a run resumed from a checkpoint continues bit for bit.
 */
import * as fs from "node:fs";
import * as path from "node:path";
import { readSafetensorsFile, Rng, writeSafetensorsFile, type TensorToWrite } from "@moela/engine";
import { setTrainThreads, type Vec } from "./ops.js";
import { adamRange, partition, reduceRange, type AdamHyper, type OptimSlot } from "./optim.js";
import type { TrainModel, StepResult } from "./model.js";
import { ReplicaPool } from "./replicas.js";

export interface TrainOptions {
  /** Optimizer steps in the whole run (the schedule's length). */
  readonly steps: number;
  /** Sequences per step. */
  readonly batch: number;
  /** Positions per sequence. */
  readonly seqLen: number;
  /** Peak learning rate. */
  readonly lr: number;
  /** Learning rate at the end of the cosine, as a fraction of lr. */
  readonly minLrRatio: number;
  /** Linear warm-up steps. */
  readonly warmup: number;
  readonly weightDecay: number;
  readonly beta1: number;
  readonly beta2: number;
  readonly eps: number;
  /** Global gradient-norm clip (0: off). */
  readonly clip: number;
  /** MTP loss weight lambda. */
  readonly mtpLambda: number;
  /** Sequence-wise balance loss weight (0: off). */
  readonly balanceAlpha: number;
  /** Bias update speed gamma of the auxiliary-loss-free balancing (0: off). */
  readonly biasUpdateSpeed: number;
  /** Seed of the batch sampler. */
  readonly seed: number;
  /** The MTP head's targets: the data ("data") or the main head's top-1 ("main", self-distillation); see LossOptions. */
  readonly mtpTargets: "data" | "main";
  /** Train the MTP module only; the main model (its balancing biases too) stays as it is. */
  readonly mtpOnly: boolean;
  /** Depths of chained drafting the MTP module learns (1: the plain MTP objective); see LossOptions.mtpDepths. */
  readonly mtpDepths: number;
}

export const DEFAULT_TRAIN_OPTIONS: TrainOptions = {
  steps: 1000,
  batch: 8,
  seqLen: 256,
  lr: 3e-3,
  minLrRatio: 0.1,
  warmup: 50,
  weightDecay: 0.1,
  beta1: 0.9,
  beta2: 0.95,
  eps: 1e-8,
  clip: 1.0,
  mtpLambda: 0.3,
  balanceAlpha: 0,
  biasUpdateSpeed: 1e-2,
  seed: 0,
  mtpTargets: "data",
  mtpOnly: false,
  mtpDepths: 1,
};

/** Learning rate of 0-based step `step`: linear warm-up to lr, then cosine decay to lr * minLrRatio. */
export function learningRate(o: Pick<TrainOptions, "lr" | "minLrRatio" | "warmup" | "steps">, step: number): number {
  if (step < o.warmup) return (o.lr * (step + 1)) / o.warmup;
  const span = Math.max(1, o.steps - o.warmup);
  const progress = Math.min(1, (step - o.warmup) / span);
  const min = o.lr * o.minLrRatio;
  return min + 0.5 * (o.lr - min) * (1 + Math.cos(Math.PI * progress));
}

export interface StepStats extends StepResult {
  readonly step: number;
  readonly lr: number;
  /** Global gradient norm before clipping. */
  readonly gradNorm: number;
  /** Tokens (positions) trained on in this step. */
  readonly tokens: number;
  /** Per MoE layer: max load / mean load (1 = perfectly balanced). */
  readonly maxLoadRatio: number;
}

export interface EvalStats {
  readonly mainLoss: number;
  readonly mtpLoss: number;
  /** Fraction of positions whose top-1 prediction is the next token (main) / the token after next (MTP). */
  readonly mainAccuracy: number;
  readonly mtpAccuracy: number;
  /**
   * With mtpDepths above 1: the chained depths' losses (summed over depths, as the training loss) and the fraction of
   * their positions whose top-1 was the target (null without them).
   */
  readonly mtpChainLoss: number | null;
  readonly mtpChainAccuracy: number | null;
  readonly positions: number;
}

/** Token ids to draw training rows from. */
export interface TokenData {
  readonly tokens: Int32Array;
}

export class Trainer {
  readonly model: TrainModel;
  readonly opts: TrainOptions;
  private readonly data: Int32Array;
  /** Steps taken so far. */
  step = 0;
  private rng: Rng;
  private readonly m: Map<string, Vec>;
  private readonly v: Map<string, Vec>;
  private replicas: ReplicaPool | null = null;
  /** Per parameter (ParamStore order): what the optimizer updates. */
  private slots: OptimSlot[] = [];

  constructor(model: TrainModel, data: TokenData, opts: TrainOptions) {
    this.model = model;
    this.opts = opts;
    this.data = data.tokens;
    const row = model.rowLength(opts.seqLen);
    if (this.data.length < row) throw new Error(`the training data holds ${this.data.length} tokens, fewer than one row of ${row}`);
    this.rng = new Rng(opts.seed);
    this.m = new Map();
    this.v = new Map();
    for (const p of model.params.list) {
      if (!p.trainable || (opts.mtpOnly && !model.isMtpParam(p.name))) continue;
      this.m.set(p.name, model.ops.alloc(p.data.length));
      this.v.set(p.name, model.ops.alloc(p.data.length));
    }
    this.makeSlots();
  }

  private makeSlots(): void {
    this.slots = this.model.params.list.map((p) => ({
      data: p.data,
      grad: p.grad,
      m: this.m.get(p.name) ?? null,
      v: this.v.get(p.name) ?? null,
      decay: p.decay,
      trainable: p.trainable && this.m.has(p.name),
    }));
  }

  /** The next batch [batch, rowLength(seqLen)]: rows at random offsets of the data. */
  nextBatch(): Int32Array {
    const { batch, seqLen } = this.opts;
    const row = this.model.rowLength(seqLen);
    const out = new Int32Array(batch * row);
    const span = this.data.length - row + 1;
    for (let b = 0; b < batch; b++) {
      const start = Math.floor(this.rng.next() * span);
      out.set(this.data.subarray(start, start + row), b * row);
    }
    return out;
  }

  /**
   * Split every step's rows over `threads` data-parallel replicas (this thread and threads - 1 workers; the
   * model's parameters must live in shared memory: shareParams). The native kernels then run one thread each.
   */
  async startReplicas(configJson: Record<string, unknown>, threads: number): Promise<void> {
    await this.close();
    threads = Math.min(threads, this.opts.batch); // every replica gets at least one row
    if (threads <= 1) return;
    setTrainThreads(1);
    // AdamW's moments move to shared memory: every replica updates its range of the parameters.
    for (const map of [this.m, this.v]) {
      for (const [name, x] of map) {
        const sab = new SharedArrayBuffer(x.byteLength);
        const y = x instanceof Float32Array ? new Float32Array(sab) : new Float64Array(sab);
        y.set(x);
        map.set(name, y);
      }
    }
    this.makeSlots();
    this.replicas = await ReplicaPool.start(configJson, this.model.ops.precision, this.model.params, this.m, this.v, threads - 1);
  }

  /** Stop the worker replicas. */
  async close(): Promise<void> {
    const r = this.replicas;
    this.replicas = null;
    await r?.close();
  }

  /** Forward and backward of one batch over this thread and the replicas; the summed gradients in the model's. */
  private async gradients(tokens: Int32Array): Promise<StepResult> {
    const o = this.opts;
    const params = this.model.params;
    const lo = {
      mtpLambda: o.mtpLambda,
      balanceAlpha: o.balanceAlpha,
      batchRows: o.batch,
      mtpTargets: o.mtpTargets,
      mtpOnly: o.mtpOnly,
      mtpDepths: o.mtpDepths,
    };
    params.zeroGrad();
    const pool = this.replicas;
    if (pool === null) return this.model.step(tokens, o.batch, o.seqLen, lo);
    const parts = pool.size + 1;
    const row = this.model.rowLength(o.seqLen);
    const counts = Array.from({ length: parts }, (_, i) => Math.floor(o.batch / parts) + (i < o.batch % parts ? 1 : 0));
    const pending: Promise<StepResult>[] = [];
    let r0 = counts[0]!;
    for (let w = 1; w < parts; w++) {
      const n = counts[w]!;
      if (n > 0) pending.push(pool.run(w - 1, tokens.slice(r0 * row, (r0 + n) * row), n, o.seqLen, lo));
      r0 += n;
    }
    const results = [this.model.step(tokens.subarray(0, counts[0]! * row), counts[0]!, o.seqLen, lo), ...(await Promise.all(pending))];
    const loads = new Map<number, Int32Array>();
    for (const r of results) {
      for (const [layer, l] of r.loads) {
        const acc = loads.get(layer) ?? new Int32Array(l.length);
        for (let e = 0; e < l.length; e++) acc[e]! += l[e]!;
        loads.set(layer, acc);
      }
    }
    const sum = (f: (r: StepResult) => number): number => results.reduce((a, r) => a + f(r), 0);
    return {
      loss: sum((r) => r.loss),
      mainLoss: sum((r) => r.mainLoss),
      mtpLoss: sum((r) => r.mtpLoss),
      mtpChainLoss: sum((r) => r.mtpChainLoss),
      balanceLoss: sum((r) => r.balanceLoss),
      mainCorrect: sum((r) => r.mainCorrect),
      mtpCorrect: sum((r) => r.mtpCorrect),
      mtpChainCorrect: sum((r) => r.mtpChainCorrect),
      loads,
    };
  }

  /** One optimizer step. */
  async trainStep(): Promise<StepStats> {
    const o = this.opts;
    const model = this.model;
    const params = model.params;
    const tokens = this.nextBatch();
    const r = await this.gradients(tokens);
    if (!Number.isFinite(r.loss)) throw new Error(`loss is ${r.loss} at step ${this.step}`);

    // the replicas' gradients summed into this thread's, and the global gradient norm (doubles, fixed order)
    const pool = this.replicas;
    const cuts = partition(
      params.list.map((p) => p.data.length),
      (pool?.size ?? 0) + 1,
    );
    const others = pool === null ? [] : Array.from({ length: pool.size }, (_, w) => pool.gradsOf(w));
    const partial = pool === null ? [] : Array.from({ length: pool.size }, (_, w) => pool.reduce(w, cuts[w + 1]!, cuts[w + 2]!));
    let ss = reduceRange(this.slots, others, cuts[0]!, cuts[1]!);
    for (const x of await Promise.all(partial)) ss += x;
    const gradNorm = Math.sqrt(ss);
    const clipScale = o.clip > 0 && gradNorm > o.clip ? o.clip / (gradNorm + 1e-6) : 1;

    // AdamW, each thread over its range
    const lr = learningRate(o, this.step);
    const t = this.step + 1;
    const h: AdamHyper = {
      lr,
      weightDecay: o.weightDecay,
      clipScale,
      beta1: o.beta1,
      beta2: o.beta2,
      bc1: 1 - o.beta1 ** t,
      bc2: 1 - o.beta2 ** t,
      eps: o.eps,
    };
    const updates = pool === null ? [] : Array.from({ length: pool.size }, (_, w) => pool.adam(w, cuts[w + 1]!, cuts[w + 2]!, h));
    adamRange(this.slots, cuts[0]!, cuts[1]!, h);
    await Promise.all(updates);

    // auxiliary-loss-free balancing
    let maxLoadRatio = 1;
    for (const [layer, load] of r.loads) {
      let total = 0;
      let max = 0;
      for (let e = 0; e < load.length; e++) {
        total += load[e]!;
        max = Math.max(max, load[e]!);
      }
      const mean = total / load.length;
      maxLoadRatio = Math.max(maxLoadRatio, mean > 0 ? max / mean : 1);
      if (o.biasUpdateSpeed === 0 || (o.mtpOnly && layer < model.config.numHiddenLayers)) continue;
      const name = `model.layers.${layer}.mlp.gate.e_score_correction_bias`;
      if (!params.has(name)) continue;
      const bias = params.get(name).data;
      for (let e = 0; e < load.length; e++) bias[e] = bias[e]! + o.biasUpdateSpeed * Math.sign(mean - load[e]!);
    }
    this.step++;
    return { ...r, step: this.step, lr, gradNorm, tokens: o.batch * o.seqLen, maxLoadRatio };
  }

  /**
   * Losses and top-1 accuracies on held-out token ids: consecutive rows of rowLength(seqLen) from the start of
   * `tokens` (at most `maxRows`, `batch` at a time), no gradients. The same rows every call, so evaluations
   * along a run compare.
   */
  evaluate(tokens: Int32Array, maxRows: number): EvalStats {
    const o = this.opts;
    const row = this.model.rowLength(o.seqLen);
    const rows = Math.min(maxRows, Math.floor(tokens.length / row));
    if (rows === 0) throw new Error(`held-out data of ${tokens.length} tokens holds no row of ${row}`);
    let main = 0;
    let mtp = 0;
    let mainCorrect = 0;
    let mtpCorrect = 0;
    let chain = 0;
    let chainCorrect = 0;
    for (let r0 = 0; r0 < rows; r0 += o.batch) {
      const n = Math.min(o.batch, rows - r0);
      const lo = { mtpLambda: 1, balanceAlpha: 0, batchRows: rows, mtpTargets: o.mtpTargets, mtpDepths: o.mtpDepths };
      const res = this.model.step(tokens.subarray(r0 * row, (r0 + n) * row), n, o.seqLen, lo, false);
      main += res.mainLoss;
      mtp += res.mtpLoss;
      mainCorrect += res.mainCorrect;
      mtpCorrect += res.mtpCorrect;
      chain += res.mtpChainLoss;
      chainCorrect += res.mtpChainCorrect;
    }
    const positions = rows * o.seqLen;
    // Against the main head's top-1, a row's last position has no MTP target.
    const mtpPositions = o.mtpTargets === "main" ? rows * (o.seqLen - 1) : positions;
    // Depth d's targets start at position d - 1 and, as depth 1's, end before a row's last.
    let chainPositions = 0;
    for (let d = 2; d <= o.mtpDepths; d++) chainPositions += rows * Math.max(0, o.seqLen - d);
    return {
      mainLoss: main,
      mtpLoss: mtp,
      mainAccuracy: mainCorrect / positions,
      mtpAccuracy: mtpCorrect / mtpPositions,
      mtpChainLoss: o.mtpDepths > 1 ? chain : null,
      mtpChainAccuracy: o.mtpDepths > 1 ? chainCorrect / chainPositions : null,
      positions,
    };
  }

  // ------------------------------------------------------------------------------------------- checkpoints

  /**
   * Write everything a resumed run needs into `dir`: train-state.json (step, sampler state, options) and
   * train-state.safetensors (parameters, AdamW's m and v, in the run's precision). Written to temporary names
   * and renamed, so a crash mid-write leaves the previous checkpoint whole.
   */
  saveCheckpoint(dir: string, extra: Record<string, unknown> = {}): void {
    fs.mkdirSync(dir, { recursive: true });
    const dtype = this.model.ops.precision === "f64" ? "F64" : "F32";
    const bytes = (v: Vec): Uint8Array => new Uint8Array(v.buffer, v.byteOffset, v.byteLength);
    const tensors: TensorToWrite[] = [];
    for (const p of this.model.params.list) {
      tensors.push({ name: `param.${p.name}`, dtype, shape: p.shape, data: bytes(p.data) });
      const m = this.m.get(p.name);
      const v = this.v.get(p.name);
      if (m && v) {
        tensors.push({ name: `adam_m.${p.name}`, dtype, shape: p.shape, data: bytes(m) });
        tensors.push({ name: `adam_v.${p.name}`, dtype, shape: p.shape, data: bytes(v) });
      }
    }
    writeSafetensorsFile(path.join(dir, "train-state.safetensors"), tensors, { format: "moela-train" });
    const state = { version: 1, step: this.step, rng: this.rng.state(), precision: this.model.ops.precision, options: this.opts, ...extra };
    const tmp = path.join(dir, `train-state.json.tmp-${process.pid}`);
    fs.writeFileSync(tmp, JSON.stringify(state, null, 2) + "\n");
    fs.renameSync(tmp, path.join(dir, "train-state.json"));
  }

  /** Restore parameters, optimizer state, step and sampler from saveCheckpoint's folder. */
  loadCheckpoint(dir: string): Record<string, unknown> {
    const state = JSON.parse(fs.readFileSync(path.join(dir, "train-state.json"), "utf8")) as Record<string, unknown>;
    if (state["version"] !== 1) throw new Error(`${dir}: unknown train-state version ${String(state["version"])}`);
    if (state["precision"] !== this.model.ops.precision) {
      throw new Error(`${dir}: checkpoint precision ${String(state["precision"])} differs from this run's ${this.model.ops.precision}`);
    }
    const tensors = readSafetensorsFile(path.join(dir, "train-state.safetensors"));
    const restore = (name: string, into: Vec): void => {
      const t = tensors.get(name);
      if (t === undefined) throw new Error(`${dir}: checkpoint has no tensor '${name}'`);
      if (t.bytes.length !== into.byteLength) throw new Error(`${dir}: tensor '${name}' has ${t.bytes.length} bytes, expected ${into.byteLength}`);
      new Uint8Array(into.buffer, into.byteOffset, into.byteLength).set(t.bytes);
    };
    for (const p of this.model.params.list) {
      restore(`param.${p.name}`, p.data);
      const m = this.m.get(p.name);
      const v = this.v.get(p.name);
      if (m && v) {
        restore(`adam_m.${p.name}`, m);
        restore(`adam_v.${p.name}`, v);
      }
    }
    this.step = state["step"] as number;
    this.rng = Rng.fromState(state["rng"] as number[]);
    return state;
  }
}
