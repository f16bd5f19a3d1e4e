/**
 * The DeepSeekMoE layer (V3: `noaux_tc` routing) with its backward pass.
 *
 * Router, exactly as the engine's routeTokens: s = sigmoid(x W_g^T) [T, E]; the biased score s + b (b =
 * e_score_correction_bias) only CHOOSES experts: groups score the sum of their top-2 biased scores, the best
 * `topk_group` groups are eligible, top-k by biased score among them (ties to the lower id); the weights are the
 * unbiased scores, divided by their sum (+1e-20) when norm_topk_prob, times routed_scaling_factor.
 * Output: sum_j w_j expert_j(x) (experts in ascending id, as the engine adds them) + shared_expert(x).
 *
 * Selection is piecewise constant in the logits: its gradient is taken where it is (no gradient through the
 * choice), and through the weights w_j into the chosen experts' scores.
 *
 * The optional sequence-wise balance loss (DeepSeek-V3 eq. 17-20), per sequence of S tokens:
 *   f_i = E / (k S) * #{t : i chosen for t},  P_i = 1/S sum_t s_{i,t} / sum_j s_{j,t},  L_bal = alpha sum_i f_i P_i,
 * averaged over the batch's sequences (gradient through P only).
 */
import { topkInto, topTwoSum, type ModelConfig } from "@moela/engine";
import type { Ops, Vec } from "./ops.js";
import type { Param } from "./params.js";
import { linear, linearBack, mlp, mlpBack, mlpParams, type MlpParams, type MlpSaved } from "./layers.js";

export interface MoeParams {
  readonly gate: Param; // [E, hidden]
  readonly bias: Param | null; // [E]
  readonly experts: readonly MlpParams[];
  readonly shared: MlpParams | null;
}

export function moeParams(get: (name: string) => Param, has: (name: string) => boolean, cfg: ModelConfig, layer: number): MoeParams {
  const p = `model.layers.${layer}.mlp`;
  return {
    gate: get(`${p}.gate.weight`),
    bias: has(`${p}.gate.e_score_correction_bias`) ? get(`${p}.gate.e_score_correction_bias`) : null,
    experts: Array.from({ length: cfg.nRoutedExperts }, (_, e) => mlpParams(get, `${p}.experts.${e}`)),
    shared: cfg.nSharedExperts > 0 ? mlpParams(get, `${p}.shared_experts`) : null,
  };
}

/**
 * Route T tokens (the engine's routeTokens for V3): scores [T, E] = sigmoid(logits) in doubles, ids [T, k],
 * weights [T, k] (doubles).
 */
export function route(cfg: ModelConfig, logits: Vec, T: number, bias: Vec | null): { scores: Float64Array; ids: Int32Array; weights: Float64Array } {
  const E = cfg.nRoutedExperts;
  const k = cfg.numExpertsPerTok;
  const G = cfg.nGroup;
  const per = E / G;
  const scores = new Float64Array(T * E);
  const ids = new Int32Array(T * k);
  const weights = new Float64Array(T * k);
  const choice = new Float64Array(E);
  const groupScore = new Float64Array(G);
  const groupIdx = new Int32Array(cfg.topkGroup);
  const expertOk = new Uint8Array(E);
  for (let t = 0; t < T; t++) {
    const so = t * E;
    for (let e = 0; e < E; e++) {
      const s = 1 / (1 + Math.exp(-logits[so + e]!));
      scores[so + e] = s;
      choice[e] = s + (bias !== null ? bias[e]! : 0);
    }
    let allowed: Uint8Array | null = null;
    if (cfg.topkGroup < G) {
      for (let g = 0; g < G; g++) {
        groupScore[g] = topTwoSum(choice, g * per, (g + 1) * per);
      }
      topkInto(groupScore, G, cfg.topkGroup, groupIdx, 0, null);
      expertOk.fill(0);
      for (let j = 0; j < groupIdx.length; j++) expertOk.fill(1, groupIdx[j]! * per, (groupIdx[j]! + 1) * per);
      allowed = expertOk;
    }
    const o = t * k;
    topkInto(choice, E, k, ids, o, allowed);
    let sum = 0;
    for (let j = 0; j < k; j++) sum += scores[so + ids[o + j]!]!;
    for (let j = 0; j < k; j++) {
      let w = scores[so + ids[o + j]!]!;
      if (cfg.normTopkProb) w = w / (sum + 1e-20);
      weights[o + j] = w * cfg.routedScalingFactor;
    }
  }
  return { scores, ids, weights };
}

export interface MoeSaved {
  readonly x: Vec;
  readonly T: number;
  readonly scores: Float64Array; // [T, E]
  readonly ids: Int32Array; // [T, k]
  readonly weights: Float64Array; // [T, k]
  /** Per expert: the entries (t * k + j) it serves, ascending, and its MLP's saved activations. */
  readonly entries: Int32Array[];
  readonly expertSaved: (MlpSaved | null)[];
  readonly expertOut: (Vec | null)[]; // [n_e, hidden] expert outputs (before the weight)
  readonly sharedSaved: MlpSaved | null;
  /** [E] tokens routed to each expert in this call (the balancing rule's load). */
  readonly load: Int32Array;
}

export interface MoeOptions {
  /** Sequence-wise balance loss weight (0: off). */
  readonly balanceAlpha: number;
  /** Tokens per sequence (the balance loss is per sequence). */
  readonly S: number;
  /** Sequences the loss is averaged over (default: this call's, T / S). */
  readonly batchRows?: number;
}

export function moe(ops: Ops, cfg: ModelConfig, p: MoeParams, x: Vec, T: number): { y: Vec; saved: MoeSaved } {
  if (cfg.modelType !== "deepseek_v3" || cfg.scoringFunc !== "sigmoid" || cfg.topkMethod !== "noaux_tc") {
    throw new Error("training supports DeepSeek-V3 routing only (sigmoid scores, noaux_tc)");
  }
  const E = cfg.nRoutedExperts;
  const k = cfg.numExpertsPerTok;
  const hd = cfg.hiddenSize;
  const logits = linear(ops, p.gate, x, T); // [T, E]
  const { scores, ids, weights } = route(cfg, logits, T, p.bias?.data ?? null);
  const load = new Int32Array(E);
  for (let i = 0; i < T * k; i++) load[ids[i]!]!++;
  const entries: Int32Array[] = [];
  const fill = new Int32Array(E);
  for (let e = 0; e < E; e++) entries.push(new Int32Array(load[e]!));
  for (let i = 0; i < T * k; i++) {
    const e = ids[i]!;
    entries[e]![fill[e]!++] = i;
  }
  const y = ops.alloc(T * hd);
  const expertSaved: (MlpSaved | null)[] = [];
  const expertOut: (Vec | null)[] = [];
  for (let e = 0; e < E; e++) {
    const en = entries[e]!;
    const n = en.length;
    if (n === 0) {
      expertSaved.push(null);
      expertOut.push(null);
      continue;
    }
    const xe = ops.scratch(n * hd);
    for (let r = 0; r < n; r++) {
      const t = Math.floor(en[r]! / k);
      xe.set(x.subarray(t * hd, (t + 1) * hd), r * hd);
    }
    const out = mlp(ops, p.experts[e]!, xe, n);
    expertSaved.push(out.saved);
    expertOut.push(out.y);
    for (let r = 0; r < n; r++) {
      const t = Math.floor(en[r]! / k);
      const w = weights[en[r]!]!;
      for (let c = 0; c < hd; c++) y[t * hd + c] = y[t * hd + c]! + w * out.y[r * hd + c]!;
    }
  }
  let sharedSaved: MlpSaved | null = null;
  if (p.shared !== null) {
    const sh = mlp(ops, p.shared, x, T);
    sharedSaved = sh.saved;
    for (let i = 0; i < T * hd; i++) y[i] = y[i]! + sh.y[i]!;
  }
  return { y, saved: { x, T, scores, ids, weights, entries, expertSaved, expertOut, sharedSaved, load } };
}

/** The sequence-wise balance loss of a layer's routing (see the file comment), before any gradient. */
export function balanceLoss(cfg: ModelConfig, s: MoeSaved, S: number, alpha: number, batchRows = s.T / S): number {
  if (alpha === 0) return 0;
  const { f, P } = balanceTerms(cfg, s, S);
  let L = 0;
  for (let i = 0; i < f.length; i++) L += f[i]! * P[i]!;
  return (alpha * L) / batchRows;
}

/** f [B, E] and P [B, E] of the balance loss. */
function balanceTerms(cfg: ModelConfig, s: MoeSaved, S: number): { f: Float64Array; P: Float64Array } {
  const E = cfg.nRoutedExperts;
  const k = cfg.numExpertsPerTok;
  const B = s.T / S;
  const f = new Float64Array(B * E);
  const P = new Float64Array(B * E);
  for (let t = 0; t < s.T; t++) {
    const b = Math.floor(t / S);
    for (let j = 0; j < k; j++) f[b * E + s.ids[t * k + j]!]! += E / (k * S);
    let z = 0;
    for (let e = 0; e < E; e++) z += s.scores[t * E + e]!;
    for (let e = 0; e < E; e++) P[b * E + e]! += s.scores[t * E + e]! / z / S;
  }
  return { f, P };
}

export function moeBack(ops: Ops, cfg: ModelConfig, p: MoeParams, s: MoeSaved, dy: Vec, opts: MoeOptions, dxAcc?: Vec): Vec {
  const E = cfg.nRoutedExperts;
  const k = cfg.numExpertsPerTok;
  const hd = cfg.hiddenSize;
  const T = s.T;
  const dx = dxAcc ?? ops.alloc(T * hd);
  if (p.shared !== null) mlpBack(ops, p.shared, s.sharedSaved!, dy, dx);
  const dw = new Float64Array(T * k); // d loss / d weights
  for (let e = 0; e < E; e++) {
    const en = s.entries[e]!;
    const n = en.length;
    if (n === 0) continue;
    const ye = s.expertOut[e]!;
    const dye = ops.scratch(n * hd);
    for (let r = 0; r < n; r++) {
      const t = Math.floor(en[r]! / k);
      const w = s.weights[en[r]!]!;
      let d = 0;
      for (let c = 0; c < hd; c++) {
        const g = dy[t * hd + c]!;
        d += g * ye[r * hd + c]!;
        dye[r * hd + c] = w * g;
      }
      dw[en[r]!] = d;
    }
    const dxe = mlpBack(ops, p.experts[e]!, s.expertSaved[e]!, dye);
    for (let r = 0; r < n; r++) {
      const t = Math.floor(en[r]! / k);
      for (let c = 0; c < hd; c++) dx[t * hd + c] = dx[t * hd + c]! + dxe[r * hd + c]!;
    }
  }
  // weights -> scores: w_j = rsf * s_j / (sum_sel s + 1e-20) (or rsf * s_j)
  const ds = new Float64Array(T * E);
  const rsf = cfg.routedScalingFactor;
  for (let t = 0; t < T; t++) {
    const o = t * k;
    if (cfg.normTopkProb) {
      let sum = 0;
      let dot = 0;
      for (let j = 0; j < k; j++) {
        const sj = s.scores[t * E + s.ids[o + j]!]!;
        sum += sj;
        dot += dw[o + j]! * sj;
      }
      const Z = sum + 1e-20;
      for (let j = 0; j < k; j++) ds[t * E + s.ids[o + j]!]! += rsf * (dw[o + j]! / Z - dot / (Z * Z));
    } else {
      for (let j = 0; j < k; j++) ds[t * E + s.ids[o + j]!]! += rsf * dw[o + j]!;
    }
  }
  if (opts.balanceAlpha !== 0) {
    const S = opts.S;
    const B = opts.batchRows ?? T / S;
    const { f } = balanceTerms(cfg, s, S);
    for (let t = 0; t < T; t++) {
      const b = Math.floor(t / S);
      let z = 0;
      for (let e = 0; e < E; e++) z += s.scores[t * E + e]!;
      // L = alpha / B * sum_i f_i * 1/S * s_i / z:  dL/ds_i = alpha/(B S) * (f_i - sum_j f_j s_j / z) / z
      let fs = 0;
      for (let e = 0; e < E; e++) fs += f[b * E + e]! * s.scores[t * E + e]!;
      const c = opts.balanceAlpha / (B * S);
      for (let e = 0; e < E; e++) ds[t * E + e]! += (c * (f[b * E + e]! - fs / z)) / z;
    }
  }
  const dlogits = ops.scratch(T * E);
  for (let i = 0; i < T * E; i++) {
    const sc = s.scores[i]!;
    dlogits[i] = ds[i]! * sc * (1 - sc);
  }
  linearBack(ops, p.gate, s.x, dlogits, T, dx);
  return dx;
}
