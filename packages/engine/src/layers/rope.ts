/**
 * Rotary position embedding on the `qk_rope_head_dim` part of queries and of the shared key k_pe.
 *
 * DeepSeek checkpoints store the rope dimensions as interleaved pairs (x[2i], x[2i+1]); HF de-interleaves
 * and applies rotate_half, which is the same rotation of each pair by pos * inv_freq[i]. We rotate the
 * pairs in place and keep the checkpoint's interleaved order (dot products are identical).
 * With YaRN the frequencies blend interpolation and extrapolation, and cos/sin carry the attention factor
 * (HF `_compute_yarn_parameters`; DeepSeek-V2 remote code `DeepseekV2YarnRotaryEmbedding`).
 */
import type { ModelConfig } from "../config.js";

function yarnGetMscale(scale: number, mscale = 1): number {
  return scale <= 1 ? 1 : 0.1 * mscale * Math.log(scale) + 1;
}

export interface RotaryParams {
  /** [dim / 2] angle per position for each pair. */
  readonly invFreq: Float64Array;
  /** Multiplies cos and sin (YaRN attention factor; 1 without scaling). */
  readonly attentionFactor: number;
  /** Softmax scale: qk_head_dim^-0.5, times mscale^2 with YaRN's mscale_all_dim. */
  readonly softmaxScale: number;
}

export function rotaryParams(cfg: ModelConfig): RotaryParams {
  const dim = cfg.rope.dim;
  const base = cfg.rope.theta;
  const half = dim / 2;
  const invFreq = new Float64Array(half);
  const yarn = cfg.rope.yarn;
  let attentionFactor = 1;
  let softmaxScale = 1 / Math.sqrt(cfg.qkHeadDim);
  if (yarn === null) {
    for (let i = 0; i < half; i++) invFreq[i] = 1 / base ** ((2 * i) / dim);
  } else {
    const { factor } = yarn;
    const correctionDim = (rotations: number) => (dim * Math.log(yarn.originalMaxPositionEmbeddings / (rotations * 2 * Math.PI))) / (2 * Math.log(base));
    let low = correctionDim(yarn.betaFast);
    let high = correctionDim(yarn.betaSlow);
    if (yarn.truncate) {
      low = Math.floor(low);
      high = Math.ceil(high);
    }
    low = Math.max(low, 0);
    high = Math.min(high, dim - 1);
    if (low === high) high += 0.001;
    for (let i = 0; i < half; i++) {
      const posFreq = base ** ((2 * i) / dim);
      const extrapolation = 1 / posFreq;
      const interpolation = 1 / (factor * posFreq);
      const ramp = Math.min(1, Math.max(0, (i - low) / (high - low)));
      const extrapolationFactor = 1 - ramp;
      invFreq[i] = interpolation * (1 - extrapolationFactor) + extrapolation * extrapolationFactor;
    }
    if (yarn.attentionFactor !== undefined) attentionFactor = yarn.attentionFactor;
    else if (cfg.modelType === "deepseek_v2") {
      // Remote code: mscale defaults to 1 and mscale_all_dim to 0.
      attentionFactor = yarnGetMscale(factor, yarn.mscale ?? 1) / yarnGetMscale(factor, yarn.mscaleAllDim ?? 0);
    } else if (yarn.mscale && yarn.mscaleAllDim) {
      attentionFactor = yarnGetMscale(factor, yarn.mscale) / yarnGetMscale(factor, yarn.mscaleAllDim);
    } else {
      attentionFactor = yarnGetMscale(factor);
    }
    if (yarn.mscaleAllDim) {
      const m = yarnGetMscale(factor, yarn.mscaleAllDim);
      softmaxScale *= m * m;
    }
  }
  return { invFreq, attentionFactor, softmaxScale };
}

/** Fill cos/sin tables [T, dim/2] for the given positions (float64). */
export function rotaryTables(p: RotaryParams, positions: ArrayLike<number>, T: number, cos: Float64Array, sin: Float64Array): void {
  const half = p.invFreq.length;
  for (let t = 0; t < T; t++) {
    const pos = positions[t]!;
    for (let i = 0; i < half; i++) {
      const angle = pos * p.invFreq[i]!;
      cos[t * half + i] = Math.cos(angle) * p.attentionFactor;
      sin[t * half + i] = Math.sin(angle) * p.attentionFactor;
    }
  }
}

/** Rotate the interleaved pairs of v[off .. off+dim) in place with row `t` of the tables. */
export function applyRotary(v: Float32Array, off: number, cos: Float64Array, sin: Float64Array, t: number, half: number): void {
  const to = t * half;
  for (let i = 0; i < half; i++) {
    const a = v[off + 2 * i]!;
    const b = v[off + 2 * i + 1]!;
    const c = cos[to + i]!;
    const s = sin[to + i]!;
    v[off + 2 * i] = a * c - b * s;
    v[off + 2 * i + 1] = b * c + a * s;
  }
}
