/**
 * The MoE router: which routed experts each token goes to, and with what weight.
 *
 * V3 (`noaux_tc`): scores = sigmoid(logits). The per-expert `e_score_correction_bias` is added only to
 * CHOOSE experts (auxiliary-loss-free balancing), never to the weights. Experts form `n_group` groups;
 * a group scores the sum of its top-2 biased scores; only the best `topk_group` groups are eligible
 * (node-limited routing); top-k by biased score among eligible experts; weights are the unbiased scores,
 * normalised when `norm_topk_prob`, then scaled by `routed_scaling_factor`.
 * Ineligible experts are excluded outright (-inf, as DeepSeek's own inference code does) rather than
 * set to 0.0 as HF transformers does: the two agree whenever biased scores are positive, and -inf keeps
 * the node limit a guarantee.
 * V2 (`greedy` / `group_limited_greedy`): scores = softmax(logits); plain top-k, or top-k within the best
 * groups by group max; normalised when `norm_topk_prob` (and k > 1), otherwise scaled by
 * `routed_scaling_factor` (the remote code applies the factor only when it does not normalise).
 * Ties go to the lower expert id, so every path routes identically.
 */
import type { ModelConfig } from "../config.js";
import { softmaxExp } from "../tensor/softmax.js";

export interface RouterScratch {
  scores: Float64Array; // [E] unbiased scores
  choice: Float64Array; // [E] biased scores used for selection
  groupScore: Float64Array; // [n_group]
  groupOk: Uint8Array; // [n_group]
  groupIdx: Int32Array; // [topk_group]
  expertOk: Uint8Array; // [E] 1 where the expert's group is eligible
}

export function createRouterScratch(cfg: ModelConfig): RouterScratch {
  return {
    scores: new Float64Array(cfg.nRoutedExperts),
    choice: new Float64Array(cfg.nRoutedExperts),
    groupScore: new Float64Array(cfg.nGroup),
    groupOk: new Uint8Array(cfg.nGroup),
    groupIdx: new Int32Array(cfg.topkGroup),
    expertOk: new Uint8Array(cfg.nRoutedExperts),
  };
}

/** Indices of the k largest values of a[0..n) where allowed(i), largest first, ties to the lower index. Also training's. */
export function topkInto(a: Float64Array, n: number, k: number, out: Int32Array, outOff: number, allowed: Uint8Array | null): void {
  let filled = 0;
  for (let i = 0; i < n; i++) {
    if (allowed !== null && allowed[i] !== 1) continue;
    const v = a[i]!;
    // insertion into the sorted prefix out[outOff .. outOff+filled)
    let j = Math.min(filled, k);
    while (j > 0 && a[out[outOff + j - 1]!]! < v) {
      if (j < k) out[outOff + j] = out[outOff + j - 1]!;
      j--;
    }
    if (j < k) {
      out[outOff + j] = i;
      if (filled < k) filled++;
    }
  }
  if (filled < k) throw new Error(`router: only ${filled} eligible experts for top-${k}`);
}

/** V3's group score: the sum of the two largest of a[from..to) (the group's top-2 biased scores). Also training's. */
export function topTwoSum(a: Float64Array, from: number, to: number): number {
  let first = -Infinity;
  let second = -Infinity;
  for (let e = from; e < to; e++) {
    const v = a[e]!;
    if (v > first) {
      second = first;
      first = v;
    } else if (v > second) second = v;
  }
  return first + second;
}

/**
 * Route T tokens. logits: [T, E] gate logits (x @ W_gate^T). ids/weights: [T, k] outputs.
 */
export function routeTokens(
  cfg: ModelConfig,
  logits: Float32Array,
  T: number,
  bias: Float32Array | null,
  ids: Int32Array,
  weights: Float32Array,
  scratch: RouterScratch,
): void {
  const E = cfg.nRoutedExperts;
  const k = cfg.numExpertsPerTok;
  const G = cfg.nGroup;
  const perGroup = E / G;
  const { scores, choice, groupScore, groupOk, groupIdx, expertOk } = scratch;
  for (let t = 0; t < T; t++) {
    const lo = t * E;
    if (cfg.scoringFunc === "sigmoid") {
      for (let e = 0; e < E; e++) scores[e] = 1 / (1 + Math.exp(-logits[lo + e]!));
    } else {
      const z = softmaxExp(logits, lo, scores, E);
      for (let e = 0; e < E; e++) scores[e] = scores[e]! / z;
    }
    for (let e = 0; e < E; e++) choice[e] = scores[e]! + (cfg.topkMethod === "noaux_tc" && bias ? bias[e]! : 0);

    let allowed: Uint8Array | null = null;
    if (cfg.topkMethod !== "greedy" && cfg.topkGroup < G) {
      for (let g = 0; g < G; g++) {
        let s: number;
        if (cfg.topkMethod === "noaux_tc") {
          s = topTwoSum(choice, g * perGroup, (g + 1) * perGroup);
        } else {
          s = -Infinity;
          for (let e = g * perGroup; e < (g + 1) * perGroup; e++) s = Math.max(s, choice[e]!);
        }
        groupScore[g] = s;
      }
      topkInto(groupScore, G, cfg.topkGroup, groupIdx, 0, null);
      groupOk.fill(0);
      for (let j = 0; j < groupIdx.length; j++) groupOk[groupIdx[j]!] = 1;
      for (let e = 0; e < E; e++) expertOk[e] = groupOk[Math.floor(e / perGroup)]!;
      allowed = expertOk;
    }
    const o = t * k;
    topkInto(choice, E, k, ids, o, allowed);

    let sum = 0;
    for (let j = 0; j < k; j++) sum += scores[ids[o + j]!]!;
    for (let j = 0; j < k; j++) {
      let w = scores[ids[o + j]!]!;
      if (cfg.modelType === "deepseek_v3") {
        if (cfg.normTopkProb) w = w / (sum + 1e-20);
        w *= cfg.routedScalingFactor;
      } else if (k > 1 && cfg.normTopkProb) {
        w = w / (sum + 1e-20);
      } else {
        w *= cfg.routedScalingFactor;
      }
      weights[o + j] = w;
    }
  }
}
