/**
 * The logits processors that depend on a sequence's own tokens, with vLLM's (V1 sampler) semantics and order,
 * applied to a copy of a raw logits row before the Sampler (temperature, min_p, top-k, top-p) sees it:
 *   1. logit_bias: logits[id] += bias                                  (LogitBiasLogitsProcessor)
 *   2. min_tokens: while the output is shorter than min_tokens, every stop id (EOS unless ignore_eos, and
 *      stop_token_ids) gets -Infinity                                  (MinTokensLogitsProcessor)
 *   3. repetition_penalty r over every token of the prompt or the output: a positive logit is divided by r,
 *      any other multiplied by r
 *   4. frequency_penalty f: logits[id] -= f * (times id is in the output)
 *   5. presence_penalty p: logits[id] -= p once for every id in the output       (apply_penalties)
 * Every step is the float32 operation vLLM's kernels do (Math.fround after each), so the result is exactly
 * the float32 logits vLLM would sample from. Logprobs stay those of the raw logits (vLLM's default).
 *
 * Only the tokens a step touches are visited: the bias list, the stop ids, and the distinct tokens of the
 * prompt and output (tracked incrementally in push()), so a step costs one O(V) copy plus O(distinct
 * tokens). The result depends on this sequence's tokens and parameters alone, never on its batch.
 *
 * priorOutputTokens: a request migrated to another decode instance restarts with its earlier output
 * appended to the prompt; those last N prompt tokens count as output here (frequency, presence and the
 * min_tokens count), so the continuation is penalised as the uninterrupted one would have been.
 */
import { InvalidArgumentError } from "@moela/core";

export interface PenaltyParams {
  /** [-2, 2]; 0 = off. */
  readonly presencePenalty?: number;
  /** [-2, 2]; 0 = off. */
  readonly frequencyPenalty?: number;
  /** (0, 2]; 1 = off. */
  readonly repetitionPenalty?: number;
  /** [token id, bias in [-100, 100]] pairs, each id at most once. */
  readonly logitBias?: readonly (readonly [number, number])[];
  /** Stop ids cannot be sampled before this many output tokens; 0 = off. */
  readonly minTokens?: number;
  /** The last N prompt tokens are output of an earlier attempt of this request (a migration); default 0. */
  readonly priorOutputTokens?: number;
}

/** vLLM's bounds. */
export const MAX_PRESENCE_FREQUENCY_PENALTY = 2;
export const MAX_REPETITION_PENALTY = 2;
export const MAX_LOGIT_BIAS_VALUE = 100;

/** Throws InvalidArgumentError naming the first bad field. */
export function validatePenaltyParams(p: PenaltyParams, vocabSize?: number): void {
  const inRange = (v: number | undefined, lo: number, hi: number): boolean => v === undefined || (typeof v === "number" && v >= lo && v <= hi);
  if (!inRange(p.presencePenalty, -MAX_PRESENCE_FREQUENCY_PENALTY, MAX_PRESENCE_FREQUENCY_PENALTY)) {
    throw new InvalidArgumentError(`presence_penalty must be in [-2, 2], got ${p.presencePenalty}`);
  }
  if (!inRange(p.frequencyPenalty, -MAX_PRESENCE_FREQUENCY_PENALTY, MAX_PRESENCE_FREQUENCY_PENALTY)) {
    throw new InvalidArgumentError(`frequency_penalty must be in [-2, 2], got ${p.frequencyPenalty}`);
  }
  const r = p.repetitionPenalty;
  if (r !== undefined && !(typeof r === "number" && r > 0 && r <= MAX_REPETITION_PENALTY)) {
    throw new InvalidArgumentError(`repetition_penalty must be in (0, 2], got ${r}`);
  }
  for (const k of ["minTokens", "priorOutputTokens"] as const) {
    const v = p[k];
    if (v !== undefined && !(Number.isSafeInteger(v) && v >= 0)) {
      throw new InvalidArgumentError(`${k === "minTokens" ? "min_tokens" : "prior_output_tokens"} must be an integer >= 0, got ${v}`);
    }
  }
  const seen = new Set<number>();
  for (const pair of p.logitBias ?? []) {
    const [id, bias] = pair;
    if (!Number.isInteger(id) || id < 0 || (vocabSize !== undefined && id >= vocabSize)) {
      throw new InvalidArgumentError(`logit_bias token id ${id} is outside the vocabulary${vocabSize !== undefined ? ` of ${vocabSize}` : ""}`);
    }
    if (seen.has(id)) throw new InvalidArgumentError(`logit_bias names token id ${id} twice`);
    seen.add(id);
    if (!(typeof bias === "number" && bias >= -MAX_LOGIT_BIAS_VALUE && bias <= MAX_LOGIT_BIAS_VALUE)) {
      throw new InvalidArgumentError(`logit_bias of token ${id} must be in [-100, 100], got ${bias}`);
    }
  }
}

/** Whether any processor of `p` changes logits (else the raw row is sampled as it is). */
export function hasPenalties(p: PenaltyParams): boolean {
  return (
    (p.presencePenalty ?? 0) !== 0 ||
    (p.frequencyPenalty ?? 0) !== 0 ||
    (p.repetitionPenalty ?? 1) !== 1 ||
    (p.logitBias?.length ?? 0) > 0 ||
    (p.minTokens ?? 0) > 0
  );
}

const f32 = Math.fround;

/** One sequence's processors and the token counts they need (see the module comment). */
export class LogitsProcessor {
  private readonly presence: number;
  private readonly frequency: number;
  private readonly repetition: number;
  private readonly biasIds: Int32Array;
  private readonly biasValues: Float32Array;
  private readonly minTokens: number;
  private readonly stopIds: Int32Array;
  /** Output token -> occurrences (prior output included); kept when frequency or presence is on. */
  private readonly counts = new Map<number, number>();
  /** The keys of `counts` in first-seen order (iterated without allocating). */
  private readonly outputIds: number[] = [];
  /** Distinct tokens of the prompt and the output, first-seen order; kept when repetition is on. */
  private readonly seenIds: number[] = [];
  /** [vocab] 1 where seenIds holds the token (repetition only; empty otherwise). */
  private readonly seen: Uint8Array;
  /** Output tokens so far (prior output included). */
  private outputLen = 0;

  constructor(
    private readonly vocabSize: number,
    params: PenaltyParams,
    prompt: readonly number[],
    /** Ids min_tokens holds back: EOS (unless ignore_eos) and stop_token_ids. */
    stopIds: Iterable<number>,
  ) {
    validatePenaltyParams(params, vocabSize);
    this.presence = f32(params.presencePenalty ?? 0);
    this.frequency = f32(params.frequencyPenalty ?? 0);
    this.repetition = f32(params.repetitionPenalty ?? 1);
    const bias = params.logitBias ?? [];
    this.biasIds = Int32Array.from(bias, (b) => b[0]);
    this.biasValues = Float32Array.from(bias, (b) => b[1]);
    this.minTokens = params.minTokens ?? 0;
    this.stopIds = Int32Array.from([...new Set(stopIds)].filter((id) => id >= 0 && id < vocabSize));
    this.seen = this.repetition !== 1 ? new Uint8Array(vocabSize) : new Uint8Array(0);
    const prior = Math.min(params.priorOutputTokens ?? 0, prompt.length);
    for (let i = 0; i < prompt.length - prior; i++) this.see(prompt[i]!);
    for (let i = prompt.length - prior; i < prompt.length; i++) this.push(prompt[i]!);
  }

  private see(id: number): void {
    if (this.repetition === 1 || this.seen[id] === 1) return;
    this.seen[id] = 1;
    this.seenIds.push(id);
  }

  /** Count one more output token (Sequence.emit calls it for every token it appends). */
  push(id: number): void {
    this.outputLen++;
    this.see(id);
    if (this.frequency === 0 && this.presence === 0) return;
    const c = this.counts.get(id);
    if (c === undefined) this.outputIds.push(id);
    this.counts.set(id, (c ?? 0) + 1);
  }

  /** Output tokens counted so far. */
  get outputTokens(): number {
    return this.outputLen;
  }

  /**
   * out[vocab] = the processed logits for the next token after the tokens pushed so far, plus `extra` when
   * it is a token id (a draft being verified: the row after it sees it as output). raw is not changed.
   * Allocates nothing.
   */
  apply(raw: Float32Array, out: Float32Array, extra = -1): Float32Array {
    if (raw.length !== this.vocabSize || out.length !== this.vocabSize) {
      throw new InvalidArgumentError(`logits have length ${raw.length} (out ${out.length}), expected vocab size ${this.vocabSize}`);
    }
    out.set(raw);
    // 1. logit_bias (Float32Array stores round each sum to float32, as vLLM's float32 add).
    for (let j = 0; j < this.biasIds.length; j++) {
      const id = this.biasIds[j]!;
      out[id] = out[id]! + this.biasValues[j]!;
    }
    // 2. min_tokens.
    const outputLen = this.outputLen + (extra >= 0 ? 1 : 0);
    if (outputLen < this.minTokens) for (let j = 0; j < this.stopIds.length; j++) out[this.stopIds[j]!] = -Infinity;
    // 3. repetition, once per token of the prompt or the output.
    const r = this.repetition;
    if (r !== 1) {
      for (let j = 0; j < this.seenIds.length; j++) {
        const id = this.seenIds[j]!;
        const v = out[id]!;
        out[id] = v > 0 ? v / r : v * r;
      }
      if (extra >= 0 && this.seen[extra] !== 1) {
        const v = out[extra]!;
        out[extra] = v > 0 ? v / r : v * r;
      }
    }
    // 4-5. frequency then presence (vLLM: logits -= f * counts; logits -= p * mask; float32 each).
    const f = this.frequency;
    const p = this.presence;
    if (f !== 0 || p !== 0) {
      let extraCounted = extra < 0;
      for (let j = 0; j < this.outputIds.length; j++) {
        const id = this.outputIds[j]!;
        let count = this.counts.get(id)!;
        if (id === extra) {
          count++;
          extraCounted = true;
        }
        if (f !== 0) out[id] = out[id]! - f32(f * count);
        if (p !== 0) out[id] = out[id]! - p;
      }
      if (!extraCounted) {
        if (f !== 0) out[extra] = out[extra]! - f;
        if (p !== 0) out[extra] = out[extra]! - p;
      }
    }
    return out;
  }
}
