/**
 * Token sampling over one row of logits, with vLLM's semantics:
 *   temperature scaling, then min_p, then top-k, then top-p over the renormalised top-k set, then renormalise.
 * min_p drops every token whose probability is below min_p times the most likely one's; on the weights
 * exp((logit - max) / T) that is a weight below min_p (the most likely token's weight is exactly 1). The
 * processors that depend on the sequence's tokens (penalties, logit_bias, min_tokens) run before this, on
 * a copy of the row (sampler-penalties.ts), and then a constrained request's grammar mask (grammar/: -Infinity
 * for every token the grammar does not allow next), so temperature and the filters see only allowed tokens.
 * temperature < GREEDY_TEMPERATURE_EPS means greedy: the argmax, lowest id on ties, no random draw.
 * One deliberate difference: top-k keeps exactly k tokens, lower ids first among logits tied at
 * the k-th place, where vLLM's threshold mask keeps every token tied with the k-th (more than k).
 * Ties are common with bf16 logits; exactly k makes the kept set a pure function of the logits.
 *
 * A `Sampler` is made once per sequence; its scratch buffers sized to the vocabulary (SamplerScratch) are
 * the engine's, lent to every sequence's sampler, so neither a new sequence nor the per-token path allocates. All arithmetic on probabilities is float64 (JS numbers); only
 * the `probs()` output is float32, because that is what flows into speculative verification.
 *
 * Cost per token for a vocabulary V (~130k for DeepSeek-V3):
 * - top-k (k < V): one pass with a size-k min-heap, O(V + k log k) in the worst case and close to
 *   O(V) in practice (most logits lose against the heap root with one comparison); exp() is
 *   computed for the k survivors only.
 * - top-p: we need the smallest set of best-ranked candidates whose mass reaches top_p. Sorting
 *   all candidates costs O(V log V) (~2.2M comparisons at 130k) every token; instead a quickselect
 *   on mass (see selectNucleus) finds that set in expected O(V), whatever its size. The kept set
 *   is then unordered, which sampling does not need. One O(V) pass of exp() gives the total mass.
 */
import { InternalError, InvalidArgumentError, MoelaError } from "@moela/core";
import { Rng, type RandomSource } from "./rng.js";

export interface SamplingParams {
  /** 0 (or below GREEDY_TEMPERATURE_EPS) = greedy. */
  temperature: number;
  /** 1 = off; otherwise in (0, 1). */
  topP: number;
  /** 0 or -1 = off; a value >= the vocabulary size is also off. */
  topK: number;
  /** Safe integer; omitted = seeded from the OS CSPRNG. */
  seed?: number;
  /** [0, 1]; 0 or omitted = off. Greedy ignores it (it never removes the most likely token). */
  minP?: number;
}

/** Above this, temperature flattens any realistic logits to uniform noise; treated as a client mistake. */
export const MAX_TEMPERATURE = 100;
/**
 * vLLM's _SAMPLING_EPS: temperatures below it are greedy. Dividing by such tiny temperatures would
 * make the distribution one-hot anyway, except for exact ties, where greedy's lowest-id rule is
 * the deterministic choice.
 */
export const GREEDY_TEMPERATURE_EPS = 1e-5;
/**
 * Top-p counts the nucleus as complete once its mass is within this of top_p: the probabilities
 * come out of exp() and a float64 sum, so a boundary that is exact on paper (0.5 + 0.25 = 0.75)
 * must not flip on the last bit of rounding. Far below any meaningful difference in top_p.
 */
const TOP_P_SLACK = 1e-9;

/** Throws InvalidArgumentError naming the first bad field. */
export function validateSamplingParams(params: SamplingParams): void {
  const { temperature, topP, topK, seed } = params;
  if (typeof temperature !== "number" || !Number.isFinite(temperature) || temperature < 0) {
    throw new InvalidArgumentError(`temperature must be a finite number >= 0, got ${temperature}`);
  }
  if (temperature > MAX_TEMPERATURE) {
    throw new InvalidArgumentError(`temperature must be at most ${MAX_TEMPERATURE}, got ${temperature}`);
  }
  if (typeof topP !== "number" || !(topP > 0 && topP <= 1)) {
    throw new InvalidArgumentError(`top_p must be in (0, 1], got ${topP}`);
  }
  if (typeof topK !== "number" || !Number.isInteger(topK) || topK < -1) {
    throw new InvalidArgumentError(`top_k must be an integer >= 0, or -1 for off, got ${topK}`);
  }
  if (seed !== undefined && (typeof seed !== "number" || !Number.isSafeInteger(seed))) {
    throw new InvalidArgumentError(`seed must be an integer of at most 53 bits, got ${seed}`);
  }
  const minP = params.minP;
  if (minP !== undefined && !(typeof minP === "number" && minP >= 0 && minP <= 1)) {
    throw new InvalidArgumentError(`min_p must be in [0, 1], got ${minP}`);
  }
}

export function isGreedy(params: SamplingParams): boolean {
  return params.temperature < GREEDY_TEMPERATURE_EPS;
}

function checkVocab(vocabSize: number): void {
  if (!Number.isSafeInteger(vocabSize) || vocabSize < 1) {
    throw new InvalidArgumentError(`vocabSize must be a positive integer, got ${vocabSize}`);
  }
}

function nonFiniteLogit(i: number, v: number): MoelaError {
  // A NaN or +Inf logit means the forward pass broke; that is our fault, not the client's.
  return new InternalError(`logits[${i}] is ${v}; cannot sample from non-finite logits`);
}

function noFiniteLogit(): MoelaError {
  return new InternalError("every logit is -Infinity; the distribution is empty");
}

/** Index of the largest logit, lowest id on ties. Throws on NaN/+Inf or when all are -Inf. */
export function argmax(logits: Float32Array): number {
  let best = 0;
  let bestValue = -Infinity;
  for (let i = 0; i < logits.length; i++) {
    const v = logits[i]!;
    if (v > bestValue) {
      bestValue = v;
      best = i;
    } else if (v !== v) {
      throw nonFiniteLogit(i, v);
    }
  }
  if (bestValue === Infinity) throw nonFiniteLogit(best, bestValue);
  if (bestValue === -Infinity) throw noFiniteLogit();
  return best;
}

/** Max over logits with the same checks as argmax. */
function maxLogit(logits: Float32Array): number {
  return logits[argmax(logits)]!;
}

/** Token a ranks strictly before token b: higher logit, lower id on ties. */
function ranksBefore(logits: Float32Array, a: number, b: number): boolean {
  const la = logits[a]!;
  const lb = logits[b]!;
  return la > lb || (la === lb && a < b);
}

/** Sift down in a heap of ids whose root is the WORST ranked (min-heap on rank). */
function siftDownWorstRoot(logits: Float32Array, heap: Int32Array, size: number, pos: number): void {
  const item = heap[pos]!;
  for (;;) {
    let child = 2 * pos + 1;
    if (child >= size) break;
    const right = child + 1;
    if (right < size && ranksBefore(logits, heap[child]!, heap[right]!)) child = right;
    if (!ranksBefore(logits, item, heap[child]!)) break;
    heap[pos] = heap[child]!;
    pos = child;
  }
  heap[pos] = item;
}

/** Sift down in a heap of ids whose root is the BEST ranked (max-heap on rank). */
function siftDownBestRoot(logits: Float32Array, heap: Int32Array, size: number, pos: number): void {
  const item = heap[pos]!;
  for (;;) {
    let child = 2 * pos + 1;
    if (child >= size) break;
    const right = child + 1;
    if (right < size && ranksBefore(logits, heap[right]!, heap[child]!)) child = right;
    if (!ranksBefore(logits, heap[child]!, item)) break;
    heap[pos] = heap[child]!;
    pos = child;
  }
  heap[pos] = item;
}

/**
 * Writes the ids of the k best-ranked logits (higher logit first, lower id on ties; exactly k even
 * when the k-th logit is tied) into out[0..k) as a heap with the worst at out[0]. Checks every
 * logit for NaN/+Inf on the way. Requires 1 <= k <= logits.length <= out.length.
 */
function selectTopK(logits: Float32Array, k: number, out: Int32Array): void {
  for (let i = 0; i < k; i++) {
    const v = logits[i]!;
    if (v !== v || v === Infinity) throw nonFiniteLogit(i, v);
    out[i] = i;
  }
  for (let p = (k >> 1) - 1; p >= 0; p--) siftDownWorstRoot(logits, out, k, p);
  let floor = logits[out[0]!]!;
  for (let i = k; i < logits.length; i++) {
    const v = logits[i]!;
    // Scanning in increasing id, an equal logit ranks after everything already held.
    if (v > floor) {
      if (v === Infinity) throw nonFiniteLogit(i, v);
      out[0] = i;
      siftDownWorstRoot(logits, out, k, 0);
      floor = logits[out[0]!]!;
    } else if (v !== v) {
      throw nonFiniteLogit(i, v);
    }
  }
}

/**
 * out[j] = exp((logits[ids[j]] - max) * invT) (logits[j] when ids is null), 0 where below minP, for j < n; returns
 * their sum. The fast kernels' version (KernelBackend.softmaxWeights) runs it in float32 with a float64 sum.
 */
export type SamplerWeightsFn = (logits: Float32Array, ids: Int32Array | null, n: number, max: number, invT: number, minP: number, out: Float64Array) => number;

/** The fast kernels' passes over the vocabulary that sampling uses (KernelBackend.sampler). */
export interface SamplerKernels {
  /** The index of the first largest logit, or -1 when the logits hold NaN or +Infinity. */
  readonly argmax: (logits: Float32Array) => number;
  readonly softmaxWeights: SamplerWeightsFn;
  /** selectNucleus, the same operations in the same order (so the same kept set, order and mass). */
  readonly nucleus: (logits: Float32Array, ids: Int32Array, weights: Float64Array, n: number, needed: number) => number;
}

/** argmax(logits) on the kernels when there are some, with argmax's checks and errors. */
export function argmaxOn(kernels: SamplerKernels | null, logits: Float32Array): number {
  if (kernels !== null) {
    const i = kernels.argmax(logits);
    // NaN or +Infinity (-1), or a row of -Infinity only: argmax throws the error that says so.
    if (i >= 0 && logits[i] !== -Infinity) return i;
  }
  return argmax(logits);
}

/**
 * A sampler's vocabulary-sized scratch. The engine owns one and lends it to every sequence's Sampler: sampling is
 * synchronous, so one call at a time uses it. A Sampler made without one allocates its own.
 */
export class SamplerScratch {
  /** [vocab] token ids of the candidates; kept tokens are candidates[0 .. keptCount). */
  readonly candidates: Int32Array;
  /** [vocab] exp((logit - max) / T) of candidates[j], valid for j < keptCount. */
  readonly weights: Float64Array;
  /** Whether candidates holds the identity, which a draw with top-k and top-p off reads as is. */
  identity = true;

  /**
   * @param kernels the passes over the vocabulary (the engine passes its kernels'); without them, TypeScript loops
   * (float64 Math.exp).
   */
  constructor(
    vocabSize: number,
    readonly kernels: SamplerKernels | null = null,
  ) {
    this.candidates = new Int32Array(vocabSize);
    for (let i = 0; i < vocabSize; i++) this.candidates[i] = i;
    this.weights = new Float64Array(vocabSize);
  }
}

export class Sampler {
  readonly vocabSize: number;
  readonly params: Readonly<SamplingParams>;
  /** The sequence's random stream; snapshot it with `rng.state()` to migrate the request. */
  readonly rng: Rng;
  readonly greedy: boolean;
  private readonly invTemperature: number;
  /** Effective top-k: 0 when off (including k >= vocab). */
  private readonly topK: number;
  private readonly topP: number;
  /** Weights below this are dropped (min_p; 0 = off). */
  private readonly minP: number;

  /** Candidates and weights (SamplerScratch), the engine's or this sampler's own. */
  private readonly scratch: SamplerScratch;
  private keptCount = 0;
  /** Sum of weights over the kept range (float64). */
  private keptMass = 0;

  constructor(vocabSize: number, params: SamplingParams, rng?: Rng, scratch?: SamplerScratch) {
    checkVocab(vocabSize);
    validateSamplingParams(params);
    this.vocabSize = vocabSize;
    this.params = Object.freeze({ ...params });
    this.rng = rng ?? new Rng(params.seed);
    this.greedy = isGreedy(params);
    this.invTemperature = this.greedy ? 0 : 1 / params.temperature;
    this.topK = params.topK > 0 && params.topK < vocabSize ? params.topK : 0;
    this.topP = params.topP;
    this.minP = params.minP ?? 0;
    if (scratch !== undefined && scratch.candidates.length !== vocabSize) {
      throw new InvalidArgumentError(`sampler scratch is sized for ${scratch.candidates.length} tokens, expected vocab size ${vocabSize}`);
    }
    this.scratch = scratch ?? new SamplerScratch(vocabSize);
  }

  /** Draws the next token id (one rng draw unless greedy, which draws nothing). */
  sample(logits: Float32Array): number {
    this.checkLogits(logits);
    if (this.greedy) return argmaxOn(this.scratch.kernels, logits);
    this.process(logits);
    const target = this.rng.next() * this.keptMass;
    const c = this.scratch.candidates;
    const w = this.scratch.weights;
    let cum = 0;
    let lastPositive = -1;
    for (let j = 0; j < this.keptCount; j++) {
      const wj = w[j]!;
      if (wj <= 0) continue;
      cum += wj;
      lastPositive = j;
      if (target < cum) return c[j]!;
    }
    // Only reachable when rounding leaves the running sum a hair below keptMass; the max logit has
    // weight exactly 1, so some kept weight is positive.
    return c[lastPositive]!;
  }

  /**
   * Writes the processed distribution (after temperature, top-k, top-p, renormalised) into
   * out[vocab], zeros outside the kept set. Greedy writes a one-hot at the argmax. Draws nothing.
   */
  probs(logits: Float32Array, out: Float32Array): void {
    this.checkLogits(logits);
    if (out.length !== this.vocabSize) {
      throw new InvalidArgumentError(`probs output has length ${out.length}, expected vocab size ${this.vocabSize}`);
    }
    out.fill(0);
    if (this.greedy) {
      out[argmaxOn(this.scratch.kernels, logits)] = 1;
      return;
    }
    this.process(logits);
    const inv = 1 / this.keptMass;
    for (let j = 0; j < this.keptCount; j++) out[this.scratch.candidates[j]!] = this.scratch.weights[j]! * inv;
  }

  private checkLogits(logits: Float32Array): void {
    if (logits.length !== this.vocabSize) {
      throw new InvalidArgumentError(`logits have length ${logits.length}, expected vocab size ${this.vocabSize}`);
    }
  }

  /** Fills candidates/weights/kept range for a non-greedy draw. */
  private process(logits: Float32Array): void {
    const c = this.scratch.candidates;
    const w = this.scratch.weights;
    const invT = this.invTemperature;
    let n: number;
    let max: number;
    if (this.topK > 0) {
      n = this.topK;
      selectTopK(logits, n, c);
      this.scratch.identity = false;
      max = -Infinity;
      for (let j = 0; j < n; j++) {
        const v = logits[c[j]!]!;
        if (v > max) max = v;
      }
      if (max === -Infinity) throw noFiniteLogit();
    } else {
      n = this.vocabSize;
      max = logits[argmaxOn(this.scratch.kernels, logits)]!; // argmax's checks: NaN, +Infinity, all -Infinity
      // Top-p (and top-k, another sequence's on the shared scratch) leave the ids permuted; restore identity
      // so the token drawn for a given random number depends on this row of logits only, not on earlier
      // calls (a migrated sampler with a fresh buffer must draw the same token from the same rng state).
      if (this.topP < 1 || !this.scratch.identity) for (let i = 0; i < n; i++) c[i] = i;
      this.scratch.identity = this.topP >= 1;
    }

    const total = this.weigh(logits, c, n, max, invT);
    if (this.topP >= 1) {
      this.keptCount = n;
      this.keptMass = total;
      return;
    }

    // Top-p over the candidates (already top-k filtered).
    // MIN_VALUE: a top_p below the slack still keeps one token.
    const needed = Math.max((this.topP - TOP_P_SLACK) * total, Number.MIN_VALUE);
    const k = this.scratch.kernels;
    this.keptCount = k !== null ? k.nucleus(logits, c, w, n, needed) : selectNucleus(logits, c, w, n, needed);
    let kept = 0;
    for (let j = 0; j < this.keptCount; j++) kept += w[j]!;
    this.keptMass = kept;
  }

  /** weights[j] = exp((logits[c[j]] - max) * invT), 0 below min_p, for j < n; returns their sum. */
  private weigh(logits: Float32Array, c: Int32Array, n: number, max: number, invT: number): number {
    const w = this.scratch.weights;
    const k = this.scratch.kernels;
    if (k !== null) return k.softmaxWeights(logits, this.scratch.identity ? null : c, n, max, invT, this.minP, w);
    let mass = 0;
    for (let j = 0; j < n; j++) {
      let wj = Math.exp((logits[c[j]!]! - max) * invT);
      if (wj < this.minP) wj = 0;
      w[j] = wj;
      mass += wj;
    }
    return mass;
  }
}

/** Below this many undecided candidates, nucleus selection finishes with an insertion sort. */
const NUCLEUS_SORT_CUTOFF = 16;

/**
 * Reorders ids[0..n) (with weights[0..n) moved alongside) so that ids[0..m) is the nucleus: the
 * shortest run of the best-ranked candidates (higher logit, lower id on ties) whose weight reaches
 * `needed`. Returns m. The nucleus itself is left in no particular order.
 *
 * A quickselect on mass rather than on rank: partition around a pivot; if the better side alone
 * reaches the remaining need, the nucleus ends inside it, else all of it (and the pivot) is in and
 * the search continues on the worse side. Expected O(n) whatever the nucleus size, so a flat
 * distribution at top_p 0.999 costs the same few passes as a peaked one, where a full sort
 * would cost O(n log n) (~2.2M comparisons at 130k) every token. The rank order is total (ids
 * break ties), so the result is the same as cutting a sorted list, independent of pivot choice.
 */
export function selectNucleus(logits: Float32Array, ids: Int32Array, weights: Float64Array, n: number, needed: number): number {
  let lo = 0;
  let hi = n;
  let need = needed;
  while (hi - lo > NUCLEUS_SORT_CUTOFF) {
    // Median of three, so already sorted or reversed logits do not degrade to quadratic.
    const midPos = lo + ((hi - lo) >> 1);
    let pivotPos = midPos;
    const a = ids[lo]!;
    const b = ids[midPos]!;
    const z = ids[hi - 1]!;
    if (ranksBefore(logits, a, b) !== ranksBefore(logits, a, z)) pivotPos = lo;
    else if (ranksBefore(logits, z, b) !== ranksBefore(logits, z, a)) pivotPos = hi - 1;
    swapPair(ids, weights, pivotPos, hi - 1);
    const pivot = ids[hi - 1]!;
    const pivotLogit = logits[pivot]!;
    // Lomuto partition: [lo, store) ranks before the pivot.
    let store = lo;
    let betterMass = 0;
    for (let j = lo; j < hi - 1; j++) {
      const id = ids[j]!;
      const l = logits[id]!;
      if (l > pivotLogit || (l === pivotLogit && id < pivot)) {
        betterMass += weights[j]!;
        swapPair(ids, weights, store, j);
        store++;
      }
    }
    swapPair(ids, weights, store, hi - 1);
    if (betterMass >= need) {
      hi = store;
    } else {
      need -= betterMass + weights[store]!;
      if (need <= 0) return store + 1;
      lo = store + 1;
    }
  }
  // Few left: sort them best-first and take until the need is met.
  for (let i = lo + 1; i < hi; i++) {
    for (let j = i; j > lo && ranksBefore(logits, ids[j]!, ids[j - 1]!); j--) swapPair(ids, weights, j, j - 1);
  }
  let j = lo;
  while (j < hi) {
    need -= weights[j]!;
    j++;
    if (need <= 0) break;
  }
  // Reaching hi with need > 0 only happens through rounding; everything up to hi is then kept.
  return Math.max(j, 1);
}

function swapPair(ids: Int32Array, weights: Float64Array, i: number, j: number): void {
  const id = ids[i]!;
  ids[i] = ids[j]!;
  ids[j] = id;
  const w = weights[i]!;
  weights[i] = weights[j]!;
  weights[j] = w;
}

/**
 * Draws an index from an explicit distribution probs[vocab] (non-negative, any positive total;
 * renormalised in float64 so float32 rounding of the inputs does not bias the draw).
 * One draw from rng. `name` labels the array in error messages.
 */
export function sampleFromProbs(probs: Float32Array, rng: RandomSource, name = "probs"): number {
  let total = 0;
  for (let i = 0; i < probs.length; i++) {
    const v = probs[i]!;
    if (!(v >= 0) || v === Infinity) {
      throw new InvalidArgumentError(`${name}[${i}] is ${v}; a distribution needs finite values >= 0`);
    }
    total += v;
  }
  if (!(total > 0)) throw new InvalidArgumentError(`${name} has no mass (all probabilities are zero)`);
  const target = rng.next() * total;
  let cum = 0;
  let lastPositive = 0;
  for (let i = 0; i < probs.length; i++) {
    const v = probs[i]!;
    if (v <= 0) continue;
    cum += v;
    lastPositive = i;
    if (target < cum) return i;
  }
  return lastPositive; // rounding left cum a hair below total
}

/**
 * out[i] = log_softmax(logits)[i], computed in float64 (max-subtracted, so large logits are safe).
 * -Infinity logits give -Infinity; NaN/+Inf or all -Inf throw.
 */
export function logSoftmax(logits: Float32Array, out: Float64Array): void {
  if (out.length !== logits.length) {
    throw new InvalidArgumentError(`logSoftmax output has length ${out.length}, expected ${logits.length}`);
  }
  const max = maxLogit(logits);
  const logSum = logSumShifted(logits, max);
  for (let i = 0; i < logits.length; i++) out[i] = logits[i]! - max - logSum;
}

/**
 * log(sum(exp(logits - max))). Callers form (logit - max) - this rather than logit - (max + this):
 * the shifted difference is exact, so a logprob near 0 keeps full relative precision even when
 * the logits themselves are large.
 */
function logSumShifted(logits: Float32Array, max: number): number {
  let sum = 0;
  for (let i = 0; i < logits.length; i++) sum += Math.exp(logits[i]! - max);
  return Math.log(sum);
}

/**
 * out = [m, log(sum(exp(logits - m)))] with m the largest logit, in float64: a token's logprob is
 * (logit - m) - out[1]. Never throws: NaN anywhere, +Inf or only -Inf give a NaN out[1]. The fast
 * kernels compute the same pair natively (KernelBackend.logSumExp), in float32 exp and double sums.
 */
export function logSumExp(logits: Float32Array, out: Float64Array): void {
  let m = -Infinity;
  for (let i = 0; i < logits.length; i++) if (logits[i]! > m) m = logits[i]!;
  out[0] = m;
  out[1] = logSumShifted(logits, m);
}

/**
 * The n most likely tokens as [id, logprob], best first (lower id first on ties), where logprob
 * is log_softmax of the RAW logits (no temperature/top-k/top-p), which is what vLLM returns by
 * default. n is clamped to the vocabulary size. Allocates its result (only called when asked for).
 * `lse`: logSumExp's pair for these logits when the caller has it (the emitted token's logprob
 * used it), so a token's own logprob and its entry here are the same number.
 */
export function topLogprobs(logits: Float32Array, n: number, lse?: Float64Array): Array<[number, number]> {
  if (!Number.isInteger(n) || n < 0) {
    throw new InvalidArgumentError(`number of top logprobs must be an integer >= 0, got ${n}`);
  }
  const max = maxLogit(logits); // also rejects NaN/+Inf and all -Inf
  const logSum = lse !== undefined && lse[0] === max ? lse[1]! : logSumShifted(logits, max);
  const k = Math.min(n, logits.length);
  if (k === 0) return [];
  const ids = new Int32Array(k);
  selectTopK(logits, k, ids);
  // Heap-sort into a max-heap then pop: ids end up best-first from the back.
  for (let p = (k >> 1) - 1; p >= 0; p--) siftDownBestRoot(logits, ids, k, p);
  for (let size = k - 1; size > 0; size--) {
    const best = ids[0]!;
    ids[0] = ids[size]!;
    ids[size] = best;
    siftDownBestRoot(logits, ids, size, 0);
  }
  const result: Array<[number, number]> = new Array(k);
  for (let j = 0; j < k; j++) {
    const id = ids[k - 1 - j]!;
    result[j] = [id, logits[id]! - max - logSum];
  }
  return result;
}
