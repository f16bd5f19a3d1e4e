/**
 * Speculative sampling (Leviathan et al. 2023, "Fast Inference from Transformers via Speculative
 * Decoding"; Chen et al. 2023, "Accelerating LLM Decoding with Speculative Sampling").
 *
 * Draft token d_i was drawn from the draft's processed distribution q_i; the target scored the same
 * positions, giving p_0..p_k (p_k is the position after the last draft). Walking i = 0..k-1:
 * accept d_i with probability min(1, p_i(d_i) / q_i(d_i)); at the first rejection emit a token
 * drawn from norm(max(0, p_i - q_i)) and stop; if all k are accepted emit a bonus token from p_k.
 * Every emitted token is then distributed exactly as the target would have sampled it.
 *
 * With temperature 0 both sides are one-hot, so this reduces to: accept while the draft equals
 * the target argmax, then emit the target argmax, i.e. greedy output with speculation equals
 * greedy output without it.
 *
 * Random draws: one per examined draft, plus one for the final token, so a seeded run replays.
 */
import { InvalidArgumentError } from "@moela/core";
import type { RandomSource } from "./rng.js";
import { sampleFromProbs } from "./sampler.js";

export interface DraftVerificationInput {
  /** [k] drafted token ids. */
  draftTokens: readonly number[];
  /** [k] of [vocab]: q_i, the draft's processed distribution each draft token was drawn from. */
  draftProbs: readonly Float32Array[];
  /** [k+1] of [vocab]: p_0..p_k, the target's processed distributions (same sampling params). */
  targetProbs: readonly Float32Array[];
  rng: RandomSource;
}

export interface DraftVerificationResult {
  /** How many drafted tokens were accepted (0..k). */
  accepted: number;
  /** The accepted drafts followed by exactly one more token: accepted + 1 tokens in all. */
  tokens: number[];
}

export function verifyDraft(input: DraftVerificationInput): DraftVerificationResult {
  const { draftTokens, draftProbs, targetProbs, rng } = input;
  const k = draftTokens.length;
  if (draftProbs.length !== k) {
    throw new InvalidArgumentError(`draftProbs has ${draftProbs.length} distributions for ${k} draft tokens`);
  }
  if (targetProbs.length !== k + 1) {
    throw new InvalidArgumentError(`targetProbs has ${targetProbs.length} distributions, expected ${k + 1} (one per draft token plus the bonus position)`);
  }
  const vocab = targetProbs[0]!.length;
  if (vocab === 0) throw new InvalidArgumentError("targetProbs[0] is empty");
  for (let i = 0; i <= k; i++) {
    if (targetProbs[i]!.length !== vocab) {
      throw new InvalidArgumentError(`targetProbs[${i}] has length ${targetProbs[i]!.length}, expected ${vocab}`);
    }
  }
  for (let i = 0; i < k; i++) {
    if (draftProbs[i]!.length !== vocab) {
      throw new InvalidArgumentError(`draftProbs[${i}] has length ${draftProbs[i]!.length}, expected ${vocab}`);
    }
    const d = draftTokens[i]!;
    if (!Number.isInteger(d) || d < 0 || d >= vocab) {
      throw new InvalidArgumentError(`draftTokens[${i}] = ${d} is not a token id in [0, ${vocab})`);
    }
  }

  const tokens: number[] = [];
  for (let i = 0; i < k; i++) {
    const d = draftTokens[i]!;
    const p = targetProbs[i]!;
    const q = draftProbs[i]!;
    const pd = p[d]!;
    const qd = q[d]!;
    // u < p/q written without the division: q(d) = 0 (a draft q says is impossible) is then
    // accepted iff p(d) > 0 (ratio +inf), and rejected when p(d) = 0 too.
    if (rng.next() * qd < pd) {
      tokens.push(d);
      continue;
    }
    tokens.push(sampleResidual(p, q, rng, `targetProbs[${i}]`));
    return { accepted: i, tokens };
  }
  tokens.push(sampleFromProbs(targetProbs[k]!, rng, `targetProbs[${k}]`));
  return { accepted: k, tokens };
}

/**
 * Draws from norm(max(0, p - q)). When that is all zero (p <= q everywhere: only possible when
 * p(d) = q(d) = 0 for the rejected draft, or for unnormalised inputs) it falls back to p, which
 * is the correct conditional: rejection then carried no information about p.
 */
function sampleResidual(p: Float32Array, q: Float32Array, rng: RandomSource, name: string): number {
  let total = 0;
  for (let j = 0; j < p.length; j++) {
    const r = p[j]! - q[j]!;
    if (r > 0) total += r;
  }
  if (!(total > 0)) return sampleFromProbs(p, rng, name);
  const target = rng.next() * total;
  let cum = 0;
  let lastPositive = 0;
  for (let j = 0; j < p.length; j++) {
    const r = p[j]! - q[j]!;
    if (r <= 0) continue;
    cum += r;
    lastPositive = j;
    if (target < cum) return j;
  }
  return lastPositive; // rounding left cum a hair below total
}
