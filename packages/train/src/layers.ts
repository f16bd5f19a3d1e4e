/**
 * The engine's elementary layers with their backward passes, written once over `Vec` (Float32Array or
 * Float64Array). Each forward computes exactly what the engine's forward computes (same eps, same rotary
 * tables, same SwiGLU); each backward takes what its forward saved and the gradient of its output, adds into
 * the parameters' gradients and returns (or accumulates) the gradient of its input.
 * Shapes: T rows (tokens), row-major.
 */
import type { Ops, Vec } from "./ops.js";
import type { Param } from "./params.js";

/** Copy of x (same element type). */
export function clone(ops: Ops, x: Vec): Vec {
  const y = ops.alloc(x.length);
  y.set(x);
  return y;
}

/** a += b, elementwise. */
export function addInPlace(a: Vec, b: Vec): void {
  for (let i = 0; i < a.length; i++) a[i] = a[i]! + b[i]!;
}

// --------------------------------------------------------------------------------------------- linear

/** y [T, out] = x [T, in] W^T, W [out, in]. */
export function linear(ops: Ops, W: Param, x: Vec, T: number): Vec {
  const [O, I] = W.shape as [number, number];
  const y = ops.scratch(T * O);
  ops.nt(x, W.data, T, O, I, y);
  return y;
}

/** W.grad += dy^T x (not for a frozen W: weightGrad false); returns dx = dy W (or adds it into `dxAcc`). */
export function linearBack(ops: Ops, W: Param, x: Vec, dy: Vec, T: number, dxAcc?: Vec, weightGrad = true): Vec {
  const [O, I] = W.shape as [number, number];
  if (weightGrad) ops.tn(dy, x, O, I, T, W.grad, true);
  if (dxAcc !== undefined) {
    ops.nn(dy, W.data, T, I, O, dxAcc, true);
    return dxAcc;
  }
  const dx = ops.scratch(T * I);
  ops.nn(dy, W.data, T, I, O, dx);
  return dx;
}

// --------------------------------------------------------------------------------------------- embedding

/** out [T, hidden] = rows of E [V, hidden]; a negative id gives a zero row (the MTP input at position 0). */
export function embed(ops: Ops, E: Param, ids: ArrayLike<number>, T: number): Vec {
  const [V, h] = E.shape as [number, number];
  const out = ops.alloc(T * h);
  for (let t = 0; t < T; t++) {
    const id = ids[t]!;
    if (id < 0) continue;
    if (!(Number.isInteger(id) && id < V)) throw new RangeError(`token id ${id} is outside the vocabulary of ${V}`);
    out.set(E.data.subarray(id * h, (id + 1) * h), t * h);
  }
  return out;
}

/** E.grad[id] += dout[t] for every row (t ascending: a fixed order, so the same bits every run). */
export function embedBack(E: Param, ids: ArrayLike<number>, T: number, dout: Vec): void {
  const h = E.shape[1]!;
  const g = E.grad;
  for (let t = 0; t < T; t++) {
    const id = ids[t]!;
    if (id < 0) continue;
    const go = id * h;
    const o = t * h;
    for (let c = 0; c < h; c++) g[go + c] = g[go + c]! + dout[o + c]!;
  }
}

// --------------------------------------------------------------------------------------------- RMSNorm

export interface RmsSaved {
  readonly x: Vec;
  /** [T] 1 / sqrt(mean(x^2) + eps) per row. */
  readonly inv: Float64Array;
}

/** out = x / sqrt(mean(x^2) + eps) * w per row of n (the engine's rmsNorm, sums in doubles). */
export function rmsNorm(ops: Ops, x: Vec, T: number, n: number, w: Param, eps: number): { y: Vec; saved: RmsSaved } {
  const y = ops.scratch(T * n);
  const inv = new Float64Array(T);
  const wd = w.data;
  for (let t = 0; t < T; t++) {
    const o = t * n;
    let ss = 0;
    for (let i = 0; i < n; i++) {
      const v = x[o + i]!;
      ss += v * v;
    }
    const r = 1 / Math.sqrt(ss / n + eps);
    inv[t] = r;
    for (let i = 0; i < n; i++) y[o + i] = x[o + i]! * r * wd[i]!;
  }
  return { y, saved: { x, inv } };
}

/**
 * dx_i = r (w_i dy_i) - x_i r^3 / n * sum_j w_j dy_j x_j;  dw_i += sum_t dy_i x_i r.
 * Writes dx into `dx` (adding when `acc`), allocating it when absent.
 */
export function rmsNormBack(ops: Ops, s: RmsSaved, T: number, n: number, w: Param, dy: Vec, dx?: Vec, acc = false): Vec {
  const out = dx ?? ops.scratch(T * n);
  const wd = w.data;
  const gw = w.grad;
  const x = s.x;
  for (let t = 0; t < T; t++) {
    const o = t * n;
    const r = s.inv[t]!;
    let dot = 0;
    for (let i = 0; i < n; i++) {
      const g = dy[o + i]!;
      const xi = x[o + i]!;
      dot += g * wd[i]! * xi;
      gw[i] = gw[i]! + g * xi * r;
    }
    const c = (dot * r * r * r) / n;
    if (acc) for (let i = 0; i < n; i++) out[o + i] = out[o + i]! + (r * wd[i]! * dy[o + i]! - x[o + i]! * c);
    else for (let i = 0; i < n; i++) out[o + i] = r * wd[i]! * dy[o + i]! - x[o + i]! * c;
  }
  return out;
}

// --------------------------------------------------------------------------------------------- rotary

/** Rotary tables for positions 0..S-1 ([S, dr/2] each), from the engine's rotaryTables. */
export interface RopeTables {
  readonly cos: Float64Array;
  readonly sin: Float64Array;
  readonly half: number;
}

/**
 * Rotate the interleaved pairs of `dr` values at v[row * stride + off] of each of T rows, row t at position
 * t mod S (the engine's applyRotary). `inverse`: the transposed map (the backward pass).
 */
export function rope(v: Vec, T: number, S: number, stride: number, off: number, tab: RopeTables, inverse = false, heads = 1, headStride = 0): void {
  const half = tab.half;
  for (let t = 0; t < T; t++) {
    const to = (t % S) * half;
    for (let h = 0; h < heads; h++) {
      const base = t * stride + off + h * headStride;
      for (let i = 0; i < half; i++) {
        const a = v[base + 2 * i]!;
        const b = v[base + 2 * i + 1]!;
        const c = tab.cos[to + i]!;
        const s = tab.sin[to + i]!;
        if (!inverse) {
          v[base + 2 * i] = a * c - b * s;
          v[base + 2 * i + 1] = b * c + a * s;
        } else {
          v[base + 2 * i] = a * c + b * s;
          v[base + 2 * i + 1] = b * c - a * s;
        }
      }
    }
  }
}

// --------------------------------------------------------------------------------------------- SwiGLU MLP

export interface MlpParams {
  readonly gate: Param; // [inter, hidden]
  readonly up: Param; // [inter, hidden]
  readonly down: Param; // [hidden, inter]
}

export interface MlpSaved {
  readonly x: Vec;
  readonly g: Vec; // [T, inter] gate_proj(x)
  readonly u: Vec; // [T, inter] up_proj(x)
  readonly a: Vec; // [T, inter] silu(g) * u
  readonly sig: Vec; // [T, inter] sigmoid(g)
  readonly T: number;
}

export function mlpParams(get: (name: string) => Param, prefix: string): MlpParams {
  return { gate: get(`${prefix}.gate_proj.weight`), up: get(`${prefix}.up_proj.weight`), down: get(`${prefix}.down_proj.weight`) };
}

/** down(silu(gate(x)) * up(x)), silu(a) = a / (1 + exp(-a)) as the engine computes it. */
export function mlp(ops: Ops, m: MlpParams, x: Vec, T: number): { y: Vec; saved: MlpSaved } {
  const g = linear(ops, m.gate, x, T);
  const u = linear(ops, m.up, x, T);
  const a = ops.scratch(g.length);
  const sig = ops.scratch(g.length);
  for (let i = 0; i < g.length; i++) {
    const v = g[i]!;
    const e = 1 + Math.exp(-v);
    a[i] = (v / e) * u[i]!;
    sig[i] = 1 / e;
  }
  return { y: linear(ops, m.down, a, T), saved: { x, g, u, a, sig, T } };
}

export function mlpBack(ops: Ops, m: MlpParams, s: MlpSaved, dy: Vec, dxAcc?: Vec): Vec {
  const T = s.T;
  const da = linearBack(ops, m.down, s.a, dy, T);
  const dg = da; // reused in place: da -> dg
  const du = ops.scratch(da.length);
  for (let i = 0; i < da.length; i++) {
    const v = s.g[i]!;
    const sig = s.sig[i]!;
    const d = da[i]!;
    du[i] = d * v * sig;
    dg[i] = d * s.u[i]! * sig * (1 + v * (1 - sig));
  }
  const dx = linearBack(ops, m.gate, s.x, dg, T, dxAcc);
  linearBack(ops, m.up, s.x, du, T, dx);
  return dx;
}

// --------------------------------------------------------------------------------------------- cross-entropy

/**
 * Mean cross-entropy of logits [T, V] against `targets` (a negative target is skipped), scaled by `weight`;
 * writes dlogits (softmax - onehot) * weight / count into `logits` in place. Returns the unweighted mean loss.
 */
export function crossEntropyInPlace(logits: Vec, T: number, V: number, targets: ArrayLike<number>, weight: number, count: number): number {
  return crossEntropy(logits, T, V, targets, weight, count).loss;
}

/** The index in [0, V) of the largest of logits[o, o + V) (the lowest on ties; 0 when every value is -Infinity). */
export function rowArgmax(logits: Vec, o: number, V: number): number {
  let m = -Infinity;
  let arg = 0;
  for (let i = 0; i < V; i++) {
    if (logits[o + i]! > m) {
      m = logits[o + i]!;
      arg = i;
    }
  }
  return arg;
}

/** crossEntropyInPlace, also counting the rows whose largest logit is the target (ties to the lower id). */
export function crossEntropy(logits: Vec, T: number, V: number, targets: ArrayLike<number>, weight: number, count: number): { loss: number; correct: number } {
  let loss = 0;
  let correct = 0;
  const scale = count > 0 ? weight / count : 0;
  for (let t = 0; t < T; t++) {
    const o = t * V;
    const y = targets[t]!;
    if (y < 0) {
      logits.fill(0, o, o + V);
      continue;
    }
    const arg = rowArgmax(logits, o, V);
    const m = logits[o + arg]!;
    if (arg === y) correct++;
    const ly = logits[o + y]!;
    let z = 0;
    for (let i = 0; i < V; i++) {
      const e = Math.exp(logits[o + i]! - m);
      logits[o + i] = e;
      z += e;
    }
    loss += m + Math.log(z) - ly;
    const f = scale / z;
    for (let i = 0; i < V; i++) logits[o + i] = logits[o + i]! * f;
    logits[o + y] = logits[o + y]! - scale;
  }
  return { loss: count > 0 ? loss / count : 0, correct };
}
