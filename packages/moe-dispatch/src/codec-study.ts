/**
 * The codec study behind `moela codec-study`: what each dispatch codec costs in bytes and error on
 * real and synthetic activations, and what it does to a model's outputs. It answers the claim of
 * DeepSeek's "Insights into DeepSeek-V3" (ISCA'25) that LogFMT-8 is more accurate than FP8 E4M3
 * at the same size, on data we can measure.
 *
 * Three pieces, each usable alone:
 *   1. STUDY_CODECS: every codec as a rounding (roundTrip) plus its exact wire size, including the
 *      study-only ones (FP8 E5M2, LogFMT-n for n != 8: the wire has no dtype for them).
 *   2. codecError / dataStats / syntheticActivations: error of a codec on a matrix, and the shape
 *      of the data (tails, in-tile dynamic range) that explains it.
 *   3. studyModel: a teacher-forced run of a model with the exact profile that records the
 *      activations at every MoE layer's input (RecordingExpertExecutor), then the same run once
 *      per (dispatch, combine) pair with the routed experts' input and output rounded through the
 *      codecs (CodecExpertExecutor), compared with exact logits step by step.
 *
 * Decisions (docs/PAPER.md, "Codec study", says them too):
 * - Only the routed experts' traffic is rounded, as in the cluster: the shared expert and the gate
 *   see exact activations, the latent KV stays float32, so the differences are the codecs' alone.
 * - One expert-host: the combine codec rounds the whole weighted sum once. With H hosts each host's
 *   partial sum is rounded (CodecExpertExecutor with the registered codecs gives the bits of
 *   createInProcessExperts(model, 1, profile); a test checks it).
 * - Teacher forcing: a context is prefilled, then every step feeds the next token of the given
 *   text (not the model's own choice), so all variants see the same inputs and step k of every
 *   variant is compared with step k of exact. Decode steps run one token per sequence, the shape
 *   that dispatch has in serving.
 */
import { InvalidArgumentError } from "@moela/core";
import { PagedLatentCache, Rng, type DeepseekModel, type ExpertExecutor } from "@moela/engine";
import { bf16Bytes, roundTripBf16 } from "./codec/bf16.js";
import { fp8E5M2TilesBytes, roundTripFp8E5M2Tiles } from "./codec/fp8-e5m2-tile.js";
import { fp8TilesBytes, roundTripFp8Tiles } from "./codec/fp8-tile.js";
import type { DispatchCodecName } from "./codec/index.js";
import { logFmtBytes, roundTripLogFmt } from "./codec/logfmt.js";
import { createInProcessExperts } from "./transports/in-process.js";

// ---------------------------------------------------------------------------------------- codecs

/** A codec as the study sees it: its rounding and its exact size on the wire. */
export interface StudyCodec {
  /** fp8-tile is E4M3 (the dispatch codec of that name); fp8-e5m2-tile and logfmt<n> as named. */
  readonly name: string;
  /** For tables: "FP8 E4M3", "LogFMT-8", ... */
  readonly label: string;
  /** The registered dispatch codec (it has a wire dtype), or null for a study-only codec. */
  readonly dispatchCodec: DispatchCodecName | null;
  /** Wire bytes per value for rows of `cols` values: payload plus per-tile metadata. */
  bytesPerValue(cols: number): number;
  /** decode(encode(x)) into `out` ([rows * cols]); bit-identical to the codec's wire path. */
  roundTrip(x: Float32Array, rows: number, cols: number, out: Float32Array): Float32Array;
}

function logFmtCodec(n: number): StudyCodec {
  return {
    name: `logfmt${n}`,
    label: `LogFMT-${n}`,
    dispatchCodec: n === 8 ? "logfmt8" : null,
    bytesPerValue: (cols) => logFmtBytes(1, cols, n) / cols,
    roundTrip: (x, rows, cols, out) => roundTripLogFmt(x, rows, cols, out, n),
  };
}

/** Every codec the study compares, in table order. */
export const STUDY_CODECS: readonly StudyCodec[] = Object.freeze([
  {
    name: "f32",
    label: "F32",
    dispatchCodec: "f32",
    bytesPerValue: () => 4,
    roundTrip: (x, rows, cols, out) => {
      out.set(x.subarray(0, rows * cols));
      return out;
    },
  },
  { name: "bf16", label: "BF16", dispatchCodec: "bf16", bytesPerValue: (cols) => bf16Bytes(1, cols) / cols, roundTrip: roundTripBf16 },
  {
    name: "fp8-tile",
    label: "FP8 E4M3",
    dispatchCodec: "fp8-tile",
    bytesPerValue: (cols) => fp8TilesBytes(1, cols) / cols,
    roundTrip: (x, rows, cols, out) => roundTripFp8Tiles(x, rows, cols, out),
  },
  {
    name: "fp8-e5m2-tile",
    label: "FP8 E5M2",
    dispatchCodec: null,
    bytesPerValue: (cols) => fp8E5M2TilesBytes(1, cols) / cols,
    roundTrip: (x, rows, cols, out) => roundTripFp8E5M2Tiles(x, rows, cols, out),
  },
  ...[6, 7, 8, 9, 10].map(logFmtCodec),
] satisfies StudyCodec[]);

export function studyCodec(name: string): StudyCodec {
  const c = STUDY_CODECS.find((s) => s.name === name);
  if (c === undefined) throw new InvalidArgumentError(`unknown study codec "${name}"; known: ${STUDY_CODECS.map((s) => s.name).join(", ")}`);
  return c;
}

// ------------------------------------------------------------------------------- error and data

export interface CodecError {
  readonly codec: string;
  readonly bytesPerValue: number;
  /** ||y - x||_2 / ||x||_2 over the whole matrix (0 for an all-zero x). */
  readonly relRms: number;
  /** Mean over nonzero x of |y - x| / |x|: every value counts alike, however small (relRms favours the large ones). */
  readonly meanRelErr: number;
  /** max |y - x|. */
  readonly maxAbsErr: number;
  /** max over values of |y - x| / amax of its 1x128 tile: the worst error in the tile's own scale. */
  readonly maxTileRelErr: number;
  /** Fraction of nonzero inputs that decode to zero (underflow / range clipping). */
  readonly flushedToZero: number;
}

/** The 1 x `tile` tiles of a [rows, cols] matrix, row by row: row r, columns [c0, c1). */
function* tiles(rows: number, cols: number, tile: number): Generator<{ r: number; c0: number; c1: number }> {
  for (let r = 0; r < rows; r++) for (let c0 = 0; c0 < cols; c0 += tile) yield { r, c0, c1: Math.min(c0 + tile, cols) };
}

/** Error of `codec` on the [rows, cols] matrix x. */
export function codecError(codec: StudyCodec, x: Float32Array, rows: number, cols: number, tile = 128): CodecError {
  const n = rows * cols;
  const y = codec.roundTrip(x, rows, cols, new Float32Array(n));
  // Sums of squared errors and of squared inputs, of relative errors over nonzero inputs; counts of those and of the flushed.
  const sum = { sqErr: 0, sqRef: 0, relErr: 0 };
  const count = { nonzero: 0, flushed: 0 };
  let maxAbs = 0;
  let maxTileRel = 0;
  for (const { r, c0, c1 } of tiles(rows, cols, tile)) {
    let amax = 0;
    for (let c = c0; c < c1; c++) amax = Math.max(amax, Math.abs(x[r * cols + c]!));
    for (let c = c0; c < c1; c++) {
      const i = r * cols + c;
      const d = Math.abs(y[i]! - x[i]!);
      sum.sqErr += d * d;
      sum.sqRef += x[i]! * x[i]!;
      if (d > maxAbs) maxAbs = d;
      if (amax > 0 && d / amax > maxTileRel) maxTileRel = d / amax;
      if (x[i] !== 0) {
        count.nonzero++;
        sum.relErr += d / Math.abs(x[i]!);
        if (y[i] === 0) count.flushed++;
      }
    }
  }
  return {
    codec: codec.name,
    bytesPerValue: codec.bytesPerValue(cols),
    relRms: sum.sqRef === 0 ? 0 : Math.sqrt(sum.sqErr / sum.sqRef),
    meanRelErr: count.nonzero === 0 ? 0 : sum.relErr / count.nonzero,
    maxAbsErr: maxAbs,
    maxTileRelErr: maxTileRel,
    flushedToZero: count.nonzero === 0 ? 0 : count.flushed / count.nonzero,
  };
}

/** The shape of a matrix's values: what decides which codec wins. */
export interface DataStats {
  readonly rows: number;
  readonly cols: number;
  readonly rms: number;
  readonly amax: number;
  /** E[x^4] / E[x^2]^2 (3 for a gaussian; larger means heavier tails). */
  readonly kurtosis: number;
  /** Mean over 1x128 tiles of amax / rms of the tile (about 2.6 for gaussian tiles). */
  readonly tileCrest: number;
  /** Median over tiles of log2(max |x| / min nonzero |x|): the span LogFMT's levels must cover. */
  readonly tileLog2Range: number;
  /** Fraction of exact zeros. */
  readonly zeros: number;
}

export function dataStats(x: Float32Array, rows: number, cols: number, tile = 128): DataStats {
  const n = rows * cols;
  let s2 = 0;
  let s4 = 0;
  let amax = 0;
  let zeros = 0;
  let crest = 0;
  let nonzeroTiles = 0;
  const ranges: number[] = [];
  for (const { r, c0, c1 } of tiles(rows, cols, tile)) {
    let tmax = 0;
    let tmin = Infinity;
    let t2 = 0;
    for (let c = c0; c < c1; c++) {
      const v = x[r * cols + c]!;
      const a = Math.abs(v);
      const sq = v * v;
      s2 += sq;
      s4 += sq * sq;
      t2 += sq;
      if (a > tmax) tmax = a;
      if (a !== 0 && a < tmin) tmin = a;
      if (a === 0) zeros++;
    }
    if (tmax > 0) {
      crest += tmax / Math.sqrt(t2 / (c1 - c0));
      ranges.push(Math.log2(tmax / tmin));
      nonzeroTiles++;
    }
    amax = Math.max(amax, tmax);
  }
  ranges.sort((a, b) => a - b);
  const m2 = s2 / n;
  return {
    rows,
    cols,
    rms: Math.sqrt(m2),
    amax,
    kurtosis: m2 === 0 ? 0 : s4 / n / (m2 * m2),
    tileCrest: nonzeroTiles === 0 ? 0 : crest / nonzeroTiles,
    tileLog2Range: ranges.length === 0 ? 0 : ranges[Math.floor(ranges.length / 2)]!,
    zeros: zeros / n,
  };
}

/** Kinds of synthetic activations: a light-tailed control and two heavy-tailed shapes. */
export const SYNTHETIC_KINDS = ["gaussian", "student-t3", "outlier-channels"] as const;
export type SyntheticKind = (typeof SYNTHETIC_KINDS)[number];

export const SYNTHETIC_DESCRIPTIONS: Readonly<Record<SyntheticKind, string>> = {
  gaussian: "standard normal (light tails; the control)",
  "student-t3": "Student-t with 3 degrees of freedom (heavy tails in every channel; infinite kurtosis)",
  "outlier-channels": "standard normal with 1% of channels (fixed, as in LLM activations) scaled x30",
};

/** [rows * cols] seeded synthetic activations of the given kind. */
export function syntheticActivations(kind: SyntheticKind, rows: number, cols: number, seed = 0): Float32Array {
  const rng = new Rng(seed);
  const normal = (): number => {
    let u = 0;
    while (u === 0) u = rng.next();
    return Math.sqrt(-2 * Math.log(u)) * Math.cos(2 * Math.PI * rng.next());
  };
  const x = new Float32Array(rows * cols);
  const scale = new Float64Array(cols).fill(1);
  if (kind === "outlier-channels") {
    const k = Math.max(1, Math.round(cols / 100));
    for (let i = 0; i < k; i++) scale[Math.floor(rng.next() * cols)] = 30;
  }
  for (let i = 0; i < rows * cols; i++) {
    const z = normal();
    if (kind === "student-t3") {
      const a = normal();
      const b = normal();
      const c = normal();
      x[i] = z / Math.sqrt((a * a + b * b + c * c) / 3);
    } else x[i] = z * scale[i % cols]!;
  }
  return x;
}

/**
 * [rows * cols] values of random sign with magnitudes 2^(-binades * u), u uniform in [0, 1): every
 * 1x128 tile spans close to `binades` binades, evenly in log. The knob that decides LogFMT against
 * FP8: LogFMT spreads its levels over the tile's span, FP8 keeps a fixed relative step.
 */
export function logUniformActivations(rows: number, cols: number, binades: number, seed = 0): Float32Array {
  if (!(binades >= 0)) throw new InvalidArgumentError(`binades must be >= 0, got ${binades}`);
  const rng = new Rng(seed);
  const x = new Float32Array(rows * cols);
  for (let i = 0; i < x.length; i++) x[i] = (rng.next() < 0.5 ? -1 : 1) * 2 ** (-binades * rng.next());
  return x;
}

// ----------------------------------------------------------------------------------- executors

export interface RecordingOptions {
  /** Keep each call's routed expert ids ([T, k], k = this) in `routes`; 0 (default) keeps none. */
  readonly expertsPerToken?: number;
  /** Keep the input rows (default true). */
  readonly activations?: boolean;
}

/** Passes every call to `inner` and keeps a copy of each MoE layer's input rows (and, if asked, its routing). */
export class RecordingExpertExecutor implements ExpertExecutor {
  /** layer -> captured [T, hidden] blocks, in call order. */
  readonly captured = new Map<number, Float32Array[]>();
  /** Every call's [T, k] expert ids, in call order (with RecordingOptions.expertsPerToken). */
  readonly routes: Int32Array[] = [];
  private readonly k: number;
  private readonly keepX: boolean;

  constructor(
    private readonly inner: ExpertExecutor,
    private readonly hidden: number,
    o: RecordingOptions = {},
  ) {
    this.k = o.expertsPerToken ?? 0;
    this.keepX = o.activations ?? true;
  }

  async runRouted(layer: number, x: Float32Array, T: number, ids: Int32Array, weights: Float32Array, out: Float32Array): Promise<void> {
    if (this.keepX) {
      let list = this.captured.get(layer);
      if (list === undefined) this.captured.set(layer, (list = []));
      list.push(x.slice(0, T * this.hidden));
    }
    if (this.k > 0) this.routes.push(ids.slice(0, T * this.k));
    await this.inner.runRouted(layer, x, T, ids, weights, out);
  }

  /** The captured rows of one layer, or of every layer in layer order, as one [rows, hidden] matrix. */
  matrix(layer?: number): { x: Float32Array; rows: number } {
    const layers = layer === undefined ? [...this.captured.keys()].sort((a, b) => a - b) : [layer];
    const blocks = layers.flatMap((l) => this.captured.get(l) ?? []);
    const total = blocks.reduce((s, b) => s + b.length, 0);
    const x = new Float32Array(total);
    let off = 0;
    for (const b of blocks) {
      x.set(b, off);
      off += b.length;
    }
    return { x, rows: total / this.hidden };
  }
}

/**
 * Rounds the routed experts' input through `dispatch` and their weighted sum through `combine`,
 * as one expert-host with those codecs would; the caller's x is left as it was (the shared expert
 * reads it).
 */
export class CodecExpertExecutor implements ExpertExecutor {
  private scratch = new Float32Array(0);

  constructor(
    private readonly inner: ExpertExecutor,
    private readonly hidden: number,
    readonly dispatch: StudyCodec,
    readonly combine: StudyCodec,
  ) {}

  async runRouted(layer: number, x: Float32Array, T: number, ids: Int32Array, weights: Float32Array, out: Float32Array): Promise<void> {
    const n = T * this.hidden;
    if (this.scratch.length < n) this.scratch = new Float32Array(n);
    const xs = this.dispatch.roundTrip(x, T, this.hidden, this.scratch); // [T, hidden] as the hosts decode it
    await this.inner.runRouted(layer, xs, T, ids, weights, out);
    this.combine.roundTrip(out, T, this.hidden, out); // [T, hidden] as the dispatcher decodes it
  }
}

// --------------------------------------------------------------------------- teacher-forced runs

/** One sequence of a teacher-forced run: a context, then the tokens fed one per step. */
export interface TeacherForcedSeq {
  readonly context: readonly number[];
  /** Step k's logits predict next[k]; next[0 .. steps-2] are fed. Needs at least `steps` tokens. */
  readonly next: readonly number[];
}

/**
 * Prefills every context together, then steps - 1 decode steps of one token per sequence. Calls
 * onStep(k, logits [B, V]) for k = 0..steps-1 (the array is the model's and is reused).
 */
export async function teacherForced(
  model: DeepseekModel,
  seqs: readonly TeacherForcedSeq[],
  steps: number,
  onStep: (step: number, logits: Float32Array) => void,
): Promise<void> {
  if (!(Number.isInteger(steps) && steps >= 1)) throw new InvalidArgumentError(`steps must be a positive integer, got ${steps}`);
  for (const [i, s] of seqs.entries()) {
    if (s.context.length < 1) throw new InvalidArgumentError(`sequence ${i} has an empty context`);
    if (s.next.length < steps) throw new InvalidArgumentError(`sequence ${i} has ${s.next.length} next tokens, ${steps} steps need ${steps}`);
  }
  const blockSize = 16;
  const need = seqs.reduce((a, s) => a + Math.ceil((s.context.length + steps) / blockSize), 0);
  const cache = new PagedLatentCache({ numLayers: model.cacheLayers, latentDim: model.config.latentDim, blockSize, numBlocks: need });
  const tables = seqs.map((s) => {
    const t: number[] = [];
    cache.ensureCapacity(t, s.context.length + steps);
    return t;
  });
  let r = await model.forward(
    cache,
    seqs.map((s, i) => ({ blockTable: tables[i]!, start: 0, tokens: s.context, logits: "last" as const })),
    { attention: "absorbed" },
  );
  onStep(0, r.logits);
  for (let k = 1; k < steps; k++) {
    r = await model.forward(
      cache,
      seqs.map((s, i) => ({ blockTable: tables[i]!, start: s.context.length + k - 1, tokens: [s.next[k - 1]!], logits: "last" as const })),
      { attention: "absorbed" },
    );
    onStep(k, r.logits);
  }
}

/** How far one variant's logits are from exact over every (step, sequence). */
export interface LogitDiff {
  /** Fraction of (step, sequence) pairs whose argmax equals exact's. */
  readonly top1Agreement: number;
  /** Mean over pairs and vocabulary of |logit - exact logit|. */
  readonly meanAbsDiff: number;
  readonly maxAbsDiff: number;
  /** Mean over pairs of KL(exact softmax || variant softmax), nats. */
  readonly meanKl: number;
  /** Pairs compared. */
  readonly pairs: number;
}

function argmax(v: Float32Array, off: number, n: number): number {
  let best = 0;
  for (let i = 1; i < n; i++) if (v[off + i]! > v[off + best]!) best = i;
  return best;
}

function logSumExp(v: Float32Array, off: number, n: number): number {
  let m = -Infinity;
  for (let i = 0; i < n; i++) m = Math.max(m, v[off + i]!);
  let s = 0;
  for (let i = 0; i < n; i++) s += Math.exp(v[off + i]! - m);
  return m + Math.log(s);
}

/** Accumulates LogitDiff over rows of [V] logits. */
export class LogitDiffAccumulator {
  private pairs = 0;
  private agree = 0;
  private absSum = 0;
  private absMax = 0;
  private klSum = 0;

  constructor(private readonly vocab: number) {}

  add(exact: Float32Array, exactOff: number, got: Float32Array, gotOff: number): void {
    const V = this.vocab;
    this.pairs++;
    if (argmax(exact, exactOff, V) === argmax(got, gotOff, V)) this.agree++;
    const lzE = logSumExp(exact, exactOff, V);
    const lzG = logSumExp(got, gotOff, V);
    let kl = 0;
    for (let i = 0; i < V; i++) {
      const e = exact[exactOff + i]!;
      const g = got[gotOff + i]!;
      const d = Math.abs(g - e);
      this.absSum += d;
      if (d > this.absMax) this.absMax = d;
      const lpE = e - lzE;
      kl += Math.exp(lpE) * (lpE - (g - lzG));
    }
    this.klSum += Math.max(0, kl);
  }

  result(): LogitDiff {
    const p = Math.max(1, this.pairs);
    return {
      top1Agreement: this.agree / p,
      meanAbsDiff: this.absSum / (p * this.vocab),
      maxAbsDiff: this.absMax,
      meanKl: this.klSum / p,
      pairs: this.pairs,
    };
  }
}

/**
 * Mean over tokens of |experts chosen in `got` and in `exact`| / k, call by call (both runs made the
 * same calls in the same order, as teacher-forced runs of one model do).
 */
export function routingAgreement(exact: readonly Int32Array[], got: readonly Int32Array[], k: number): number {
  if (exact.length !== got.length) throw new InvalidArgumentError(`routingAgreement: ${exact.length} calls against ${got.length}`);
  let same = 0;
  let slots = 0;
  for (let c = 0; c < exact.length; c++) {
    const e = exact[c]!;
    const g = got[c]!;
    if (e.length !== g.length) throw new InvalidArgumentError(`routingAgreement: call ${c} has ${e.length} ids against ${g.length}`);
    for (let t = 0; t < e.length; t += k) {
      for (let j = 0; j < k; j++) {
        const id = g[t + j]!;
        for (let i = 0; i < k; i++) {
          if (e[t + i] === id) {
            same++;
            break;
          }
        }
      }
      slots += k;
    }
  }
  return slots === 0 ? 1 : same / slots;
}

// ---------------------------------------------------------------------------------- model study

export interface OutputVariant {
  readonly dispatch: StudyCodec;
  readonly combine: StudyCodec;
}

/** The output variants of the study: every dispatch codec with BF16 combine (the paper's) and F32 combine (the control). */
export function defaultOutputVariants(): OutputVariant[] {
  const f32 = studyCodec("f32");
  const bf16 = studyCodec("bf16");
  const out: OutputVariant[] = [{ dispatch: f32, combine: bf16 }];
  for (const d of STUDY_CODECS) {
    if (d.name === "f32") continue;
    out.push({ dispatch: d, combine: bf16 }, { dispatch: d, combine: f32 });
  }
  return out;
}

export interface ModelStudy {
  readonly hidden: number;
  readonly vocab: number;
  readonly sequences: number;
  readonly contextTokens: number;
  readonly steps: number;
  /** The captured MoE-input activations, every MoE layer pooled: their shape and each codec's error. */
  readonly activations: { readonly stats: DataStats; readonly errors: readonly CodecError[] };
  /** The same per MoE layer. */
  readonly perLayer: ReadonlyArray<{ readonly layer: number; readonly stats: DataStats; readonly errors: readonly CodecError[] }>;
  /** RMS of the exact logits, to read the logit differences against. */
  readonly exactLogitRms: number;
  /** Median over (step, sequence) of the exact top-1 logit minus the runner-up: how easily top-1 flips. */
  readonly exactTop1Margin: number;
  readonly outputs: ReadonlyArray<VariantResult>;
}

export interface VariantResult extends LogitDiff {
  readonly dispatch: string;
  readonly combine: string;
  /** Fraction of routed expert choices (token, slot) that match the exact run's, over every MoE layer and step. */
  readonly routingAgreement: number;
}

export interface StudyModelOptions {
  readonly codecs?: readonly StudyCodec[];
  readonly variants?: readonly OutputVariant[];
  /** Called before each run ("exact", then "<dispatch>+<combine>"), for progress. */
  readonly onRun?: (name: string, index: number, total: number) => void;
}

/**
 * Runs the study on a loaded model (load it with kvDtype f32 and every routed expert). Leaves the
 * model's expert executor set to the exact one.
 */
export async function studyModel(model: DeepseekModel, seqs: readonly TeacherForcedSeq[], steps: number, o: StudyModelOptions = {}): Promise<ModelStudy> {
  if (model.kvDtype !== "f32") throw new InvalidArgumentError(`codec study: load the model with kvDtype f32 (got ${model.kvDtype}) so only the codecs differ`);
  const codecs = o.codecs ?? STUDY_CODECS;
  const variants = o.variants ?? defaultOutputVariants();
  const hidden = model.config.hiddenSize;
  const V = model.config.vocabSize;
  const B = seqs.length;
  const exactExperts = createInProcessExperts(model, 1, "exact").executor;
  const k = model.config.numExpertsPerTok;
  const recorder = new RecordingExpertExecutor(exactExperts, hidden, { expertsPerToken: k });
  const total = 1 + variants.length;

  // Exact run: keep its logits and record the MoE inputs.
  o.onRun?.("exact", 0, total);
  model.setExpertExecutor(recorder);
  const exact = new Float32Array(steps * B * V); // [steps, B, V]
  let sq = 0;
  await teacherForced(model, seqs, steps, (step, logits) => exact.set(logits.subarray(0, B * V), step * B * V));
  for (let i = 0; i < exact.length; i++) sq += exact[i]! * exact[i]!;
  const margins: number[] = [];
  for (let row = 0; row < steps * B; row++) {
    let a = -Infinity;
    let b = -Infinity;
    for (let i = 0; i < V; i++) {
      const v = exact[row * V + i]!;
      if (v > a) [a, b] = [v, a];
      else if (v > b) b = v;
    }
    margins.push(a - b);
  }
  margins.sort((p, q) => p - q);

  const pooled = recorder.matrix();
  const measure = (x: Float32Array, rows: number) => ({ stats: dataStats(x, rows, hidden), errors: codecs.map((c) => codecError(c, x, rows, hidden)) });
  const activations = measure(pooled.x, pooled.rows);
  const perLayer = [...recorder.captured.keys()]
    .sort((a, b) => a - b)
    .map((layer) => {
      const m = recorder.matrix(layer);
      return { layer, ...measure(m.x, m.rows) };
    });
  recorder.captured.clear();

  const outputs: VariantResult[] = [];
  try {
    for (const [i, v] of variants.entries()) {
      o.onRun?.(`${v.dispatch.name}+${v.combine.name}`, i + 1, total);
      const routes = new RecordingExpertExecutor(new CodecExpertExecutor(exactExperts, hidden, v.dispatch, v.combine), hidden, {
        expertsPerToken: k,
        activations: false,
      });
      model.setExpertExecutor(routes);
      const acc = new LogitDiffAccumulator(V);
      await teacherForced(model, seqs, steps, (step, logits) => {
        for (let b = 0; b < B; b++) acc.add(exact, (step * B + b) * V, logits, b * V);
      });
      outputs.push({
        dispatch: v.dispatch.name,
        combine: v.combine.name,
        ...acc.result(),
        routingAgreement: routingAgreement(recorder.routes, routes.routes, k),
      });
    }
  } finally {
    model.setExpertExecutor(exactExperts);
  }
  return {
    hidden,
    vocab: V,
    sequences: B,
    contextTokens: seqs[0]?.context.length ?? 0,
    steps,
    activations,
    perLayer,
    exactLogitRms: Math.sqrt(sq / exact.length),
    exactTop1Margin: margins[Math.floor(margins.length / 2)] ?? 0,
    outputs,
  };
}

// ------------------------------------------------------------------------------------ the claim

/** LogFMT-8 against FP8 E4M3 on one data set. */
export interface ClaimOnData {
  readonly data: string;
  readonly e4m3RelRms: number;
  readonly logfmt8RelRms: number;
  /** e4m3RelRms / logfmt8RelRms: above 1, LogFMT-8 is the more accurate. */
  readonly ratio: number;
  readonly e4m3MeanRelErr: number;
  readonly logfmt8MeanRelErr: number;
  /** The narrowest LogFMT-n whose relative RMS error is at most E4M3's, or null if none is. */
  readonly narrowestLogFmtAsGood: string | null;
}

export function claimOnData(data: string, errors: readonly CodecError[]): ClaimOnData {
  const get = (name: string): CodecError => {
    const e = errors.find((x) => x.codec === name);
    if (e === undefined) throw new InvalidArgumentError(`claimOnData: no ${name} result`);
    return e;
  };
  const e4 = get("fp8-tile").relRms;
  const l8 = get("logfmt8").relRms;
  const e4Mean = get("fp8-tile").meanRelErr;
  const l8Mean = get("logfmt8").meanRelErr;
  const asGood = errors.filter((e) => /^logfmt\d+$/.test(e.codec) && e.relRms <= e4).sort((a, b) => a.bytesPerValue - b.bytesPerValue)[0];
  return {
    data,
    e4m3RelRms: e4,
    logfmt8RelRms: l8,
    ratio: l8 === 0 ? Infinity : e4 / l8,
    e4m3MeanRelErr: e4Mean,
    logfmt8MeanRelErr: l8Mean,
    narrowestLogFmtAsGood: asGood?.codec ?? null,
  };
}
