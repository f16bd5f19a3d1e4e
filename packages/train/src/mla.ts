/**
 * Multi-head latent attention (training form: K and V decompressed per head, causal over each sequence), the
 * engine's "decompressed" path with its backward pass. Shapes as in the HF config: B sequences of S tokens,
 * T = B * S rows, H heads, dn = qk_nope_head_dim, dr = qk_rope_head_dim, dq = dn + dr, dv = v_head_dim,
 * R = kv_lora_rank.
 *
 *   q      = q_b_proj(q_a_layernorm(q_a_proj(x)))  or q_proj(x)        [T, H * dq], per head [q_nope | q_pe]
 *   q_pe   = rope(q_pe)
 *   [c_kv | k_pe] = kv_a_proj_with_mqa(x)                             [T, R + dr]
 *   c_kv   = kv_a_layernorm(c_kv) (eps 1e-6, as the engine),  k_pe = rope(k_pe)  (one key shared by all heads)
 *   kv     = kv_b_proj(c_kv)                                         [T, H * (dn + dv)], per head [k_nope | v]
 *   per sequence and head: P = softmax(causal(scale * [q_nope | q_pe] . [k_nope | k_pe])), o = P v
 *   out    = o_proj(o)                                               [T, hidden]
 */
import { rotaryParams, rotaryTables, type ModelConfig } from "@moela/engine";
import type { Ops, Vec } from "./ops.js";
import type { Param } from "./params.js";
import { linear, linearBack, rmsNorm, rmsNormBack, rope, type RmsSaved, type RopeTables } from "./layers.js";

/** q_a_layernorm and kv_a_layernorm use RMSNorm's default eps (the engine's LATENT_NORM_EPS). */
export const LATENT_NORM_EPS = 1e-6;

/** The query projection: low rank through q_lora_rank, or q_proj when it is null (as the engine's QueryWeights). */
export type QueryParams =
  { readonly kind: "lora"; readonly qA: Param; readonly qANorm: Param; readonly qB: Param } | { readonly kind: "direct"; readonly q: Param };

export interface MlaParams {
  readonly query: QueryParams;
  readonly kvA: Param;
  readonly kvANorm: Param;
  readonly kvB: Param;
  readonly o: Param;
}

export function mlaParams(get: (name: string) => Param, cfg: ModelConfig, layer: number): MlaParams {
  const a = `model.layers.${layer}.self_attn`;
  const lora = cfg.qLoraRank !== null;
  return {
    query: lora
      ? { kind: "lora", qA: get(`${a}.q_a_proj.weight`), qANorm: get(`${a}.q_a_layernorm.weight`), qB: get(`${a}.q_b_proj.weight`) }
      : { kind: "direct", q: get(`${a}.q_proj.weight`) },
    kvA: get(`${a}.kv_a_proj_with_mqa.weight`),
    kvANorm: get(`${a}.kv_a_layernorm.weight`),
    kvB: get(`${a}.kv_b_proj.weight`),
    o: get(`${a}.o_proj.weight`),
  };
}

export interface MlaShape {
  readonly H: number;
  readonly dn: number;
  readonly dr: number;
  readonly dq: number;
  readonly dv: number;
  readonly R: number;
  readonly scale: number;
  readonly rope: RopeTables;
}

/** MLA's dimensions and the rotary tables of positions 0..S-1 (the engine's rotaryParams / rotaryTables). */
export function mlaShape(cfg: ModelConfig, S: number): MlaShape {
  if (cfg.attentionBias) throw new Error("training does not support attention_bias");
  const rp = rotaryParams(cfg);
  const half = cfg.qkRopeHeadDim / 2;
  const cos = new Float64Array(S * half);
  const sin = new Float64Array(S * half);
  rotaryTables(
    rp,
    Array.from({ length: S }, (_, i) => i),
    S,
    cos,
    sin,
  );
  return {
    H: cfg.numHeads,
    dn: cfg.qkNopeHeadDim,
    dr: cfg.qkRopeHeadDim,
    dq: cfg.qkHeadDim,
    dv: cfg.vHeadDim,
    R: cfg.kvLoraRank,
    scale: rp.softmaxScale,
    rope: { cos, sin, half },
  };
}

export interface MlaSaved {
  readonly x: Vec;
  /** The low-rank query's activations: qa [T, q_lora_rank], its norm, qn [T, q_lora_rank] normalised. */
  readonly query: { readonly kind: "lora"; readonly qa: Vec; readonly qaNorm: RmsSaved; readonly qn: Vec } | { readonly kind: "direct" };
  readonly q: Vec; // [T, H * dq] with q_pe roped
  readonly ckvNorm: RmsSaved; // over c_kv [T, R]
  readonly ckv: Vec; // [T, R] normalised
  readonly kpe: Vec; // [T, dr] roped
  readonly kv: Vec; // [T, H * (dn + dv)]
  readonly P: Vec; // [B, H, packed causal chunks] softmax (see chunksOf)
  readonly o: Vec; // [T, H * dv]
}

/**
 * Causal attention in row chunks of ATTN_CHUNK queries: chunk c (rows i0..i1) needs keys 0..i1 only, so its
 * scores are one [i1 - i0, i1] product and the products above the diagonal blocks are never computed (about
 * half of the work at S = 256). P is stored packed, chunk after chunk, each [i1 - i0, i1] row-major.
 */
const ATTN_CHUNK = 64;

interface Chunks {
  readonly i0: Int32Array;
  readonly i1: Int32Array;
  /** Offset of each chunk in a head's packed P. */
  readonly off: Int32Array;
  /** Values in a head's packed P. */
  readonly size: number;
}

const chunkCache = new Map<number, Chunks>();

function chunksOf(S: number): Chunks {
  let c = chunkCache.get(S);
  if (c !== undefined) return c;
  const n = Math.ceil(S / ATTN_CHUNK);
  const i0 = new Int32Array(n);
  const i1 = new Int32Array(n);
  const off = new Int32Array(n);
  let size = 0;
  for (let k = 0; k < n; k++) {
    i0[k] = k * ATTN_CHUNK;
    i1[k] = Math.min(S, (k + 1) * ATTN_CHUNK);
    off[k] = size;
    size += (i1[k]! - i0[k]!) * i1[k]!;
  }
  c = { i0, i1, off, size };
  chunkCache.set(S, c);
  return c;
}

/** Per (sequence, head): Q [S, dq], K [S, dq], V [S, dv] gathered contiguous. */
function gatherHead(sh: MlaShape, b: number, h: number, S: number, q: Vec, kv: Vec, kpe: Vec, Q: Vec, K: Vec, V: Vec): void {
  const { H, dn, dr, dq, dv } = sh;
  const hs = dn + dv;
  for (let i = 0; i < S; i++) {
    const t = b * S + i;
    const qo = t * H * dq + h * dq;
    for (let c = 0; c < dq; c++) Q[i * dq + c] = q[qo + c]!;
    const ko = t * H * hs + h * hs;
    for (let c = 0; c < dn; c++) K[i * dq + c] = kv[ko + c]!;
    for (let c = 0; c < dr; c++) K[i * dq + dn + c] = kpe[t * dr + c]!;
    for (let c = 0; c < dv; c++) V[i * dv + c] = kv[ko + dn + c]!;
  }
}

export function mla(ops: Ops, p: MlaParams, sh: MlaShape, x: Vec, B: number, S: number): { y: Vec; saved: MlaSaved } {
  const T = B * S;
  const { H, dn, dr, dq, dv, R } = sh;
  let query: MlaSaved["query"];
  let q: Vec;
  if (p.query.kind === "lora") {
    const r = p.query.qA.shape[0]!;
    const qa = linear(ops, p.query.qA, x, T);
    const n = rmsNorm(ops, qa, T, r, p.query.qANorm, LATENT_NORM_EPS);
    query = { kind: "lora", qa, qaNorm: n.saved, qn: n.y };
    q = linear(ops, p.query.qB, n.y, T);
  } else {
    query = { kind: "direct" };
    q = linear(ops, p.query.q, x, T);
  }
  rope(q, T, S, H * dq, dn, sh.rope, false, H, dq);

  const kva = linear(ops, p.kvA, x, T); // [T, R + dr]
  const ckvRaw = ops.scratch(T * R);
  const kpe = ops.scratch(T * dr);
  for (let t = 0; t < T; t++) {
    ckvRaw.set(kva.subarray(t * (R + dr), t * (R + dr) + R), t * R);
    kpe.set(kva.subarray(t * (R + dr) + R, (t + 1) * (R + dr)), t * dr);
  }
  const nk = rmsNorm(ops, ckvRaw, T, R, p.kvANorm, LATENT_NORM_EPS);
  const ckv = nk.y;
  rope(kpe, T, S, dr, 0, sh.rope);
  const kv = linear(ops, p.kvB, ckv, T); // [T, H * (dn + dv)]

  const ch = chunksOf(S);
  const P = ops.scratch(B * H * ch.size); // per (sequence, head): packed causal chunks of softmax(scores)
  const o = ops.scratch(T * H * dv);
  const Q = ops.scratch(S * dq);
  const K = ops.scratch(S * dq);
  const V = ops.scratch(S * dv);
  const Oh = ops.scratch(S * dv);
  for (let b = 0; b < B; b++) {
    for (let h = 0; h < H; h++) {
      gatherHead(sh, b, h, S, q, kv, kpe, Q, K, V);
      const Ph = P.subarray((b * H + h) * ch.size, (b * H + h + 1) * ch.size);
      for (let k = 0; k < ch.i0.length; k++) {
        const i0 = ch.i0[k]!;
        const i1 = ch.i1[k]!;
        const Pc = Ph.subarray(ch.off[k]!, ch.off[k]! + (i1 - i0) * i1); // [i1 - i0, i1]
        ops.nt(Q.subarray(i0 * dq, i1 * dq), K.subarray(0, i1 * dq), i1 - i0, i1, dq, Pc); // scores
        for (let i = i0; i < i1; i++) {
          const ro = (i - i0) * i1;
          let m = -Infinity;
          for (let j = 0; j <= i; j++) {
            const v = Pc[ro + j]! * sh.scale;
            Pc[ro + j] = v;
            if (v > m) m = v;
          }
          let z = 0;
          for (let j = 0; j <= i; j++) {
            const e = Math.exp(Pc[ro + j]! - m);
            Pc[ro + j] = e;
            z += e;
          }
          for (let j = 0; j <= i; j++) Pc[ro + j] = Pc[ro + j]! / z;
          Pc.fill(0, ro + i + 1, ro + i1);
        }
        ops.nn(Pc, V.subarray(0, i1 * dv), i1 - i0, dv, i1, Oh.subarray(i0 * dv, i1 * dv)); // P V
      }
      for (let i = 0; i < S; i++) {
        const oo = (b * S + i) * H * dv + h * dv;
        for (let c = 0; c < dv; c++) o[oo + c] = Oh[i * dv + c]!;
      }
    }
  }
  const y = linear(ops, p.o, o, T);
  return { y, saved: { x, query, q, ckvNorm: nk.saved, ckv, kpe, kv, P, o } };
}

/** Backward of mla: adds into the parameters' gradients, returns dx [T, hidden] (or adds into dxAcc). */
export function mlaBack(ops: Ops, p: MlaParams, sh: MlaShape, s: MlaSaved, dy: Vec, B: number, S: number, dxAcc?: Vec): Vec {
  const T = B * S;
  const { H, dn, dr, dq, dv, R } = sh;
  const hs = dn + dv;
  const dO = linearBack(ops, p.o, s.o, dy, T); // [T, H * dv]
  const dq_ = ops.scratch(T * H * dq);
  const dkv = ops.scratch(T * H * hs);
  const dkpe = ops.alloc(T * dr);
  const Q = ops.scratch(S * dq);
  const K = ops.scratch(S * dq);
  const V = ops.scratch(S * dv);
  const dOh = ops.scratch(S * dv);
  const dVh = ops.scratch(S * dv);
  const ch = chunksOf(S);
  const dS = ops.scratch(ch.size);
  const dQh = ops.scratch(S * dq);
  const dKh = ops.scratch(S * dq);
  for (let b = 0; b < B; b++) {
    for (let h = 0; h < H; h++) {
      gatherHead(sh, b, h, S, s.q, s.kv, s.kpe, Q, K, V);
      for (let i = 0; i < S; i++) {
        const oo = (b * S + i) * H * dv + h * dv;
        for (let c = 0; c < dv; c++) dOh[i * dv + c] = dO[oo + c]!;
      }
      const Ph = s.P.subarray((b * H + h) * ch.size, (b * H + h + 1) * ch.size);
      dVh.fill(0);
      dKh.fill(0);
      for (let k = 0; k < ch.i0.length; k++) {
        const i0 = ch.i0[k]!;
        const i1 = ch.i1[k]!;
        const n = i1 - i0;
        const Pc = Ph.subarray(ch.off[k]!, ch.off[k]! + n * i1); // [n, i1]
        const dSc = dS.subarray(ch.off[k]!, ch.off[k]! + n * i1);
        const dOc = dOh.subarray(i0 * dv, i1 * dv);
        ops.tn(Pc, dOc, i1, dv, n, dVh.subarray(0, i1 * dv), true); // dV[0:i1] += P^T dO
        ops.nt(dOc, V.subarray(0, i1 * dv), n, i1, dv, dSc); // dP = dO V^T
        // dS = P * (dP - rowsum(P * dP)) * scale, causal
        for (let i = i0; i < i1; i++) {
          const ro = (i - i0) * i1;
          let dot = 0;
          for (let j = 0; j <= i; j++) dot += Pc[ro + j]! * dSc[ro + j]!;
          for (let j = 0; j <= i; j++) dSc[ro + j] = Pc[ro + j]! * (dSc[ro + j]! - dot) * sh.scale;
          dSc.fill(0, ro + i + 1, ro + i1);
        }
        ops.nn(dSc, K.subarray(0, i1 * dq), n, dq, i1, dQh.subarray(i0 * dq, i1 * dq)); // dQ = dS K
        ops.tn(dSc, Q.subarray(i0 * dq, i1 * dq), i1, dq, n, dKh.subarray(0, i1 * dq), true); // dK[0:i1] += dS^T Q
      }
      for (let i = 0; i < S; i++) {
        const t = b * S + i;
        const qo = t * H * dq + h * dq;
        for (let c = 0; c < dq; c++) dq_[qo + c] = dQh[i * dq + c]!;
        const ko = t * H * hs + h * hs;
        for (let c = 0; c < dn; c++) dkv[ko + c] = dKh[i * dq + c]!;
        for (let c = 0; c < dr; c++) dkpe[t * dr + c] = dkpe[t * dr + c]! + dKh[i * dq + dn + c]!;
        for (let c = 0; c < dv; c++) dkv[ko + dn + c] = dVh[i * dv + c]!;
      }
    }
  }
  // kv path
  const dckv = linearBack(ops, p.kvB, s.ckv, dkv, T); // [T, R]
  const dckvRaw = rmsNormBack(ops, s.ckvNorm, T, R, p.kvANorm, dckv);
  rope(dkpe, T, S, dr, 0, sh.rope, true);
  const dkva = ops.scratch(T * (R + dr));
  for (let t = 0; t < T; t++) {
    dkva.set(dckvRaw.subarray(t * R, (t + 1) * R), t * (R + dr));
    dkva.set(dkpe.subarray(t * dr, (t + 1) * dr), t * (R + dr) + R);
  }
  const dx = linearBack(ops, p.kvA, s.x, dkva, T, dxAcc);
  // q path
  rope(dq_, T, S, H * dq, dn, sh.rope, true, H, dq);
  const pq = p.query;
  const sq = s.query;
  if (pq.kind === "lora" && sq.kind === "lora") {
    const r = pq.qA.shape[0]!;
    const dqn = linearBack(ops, pq.qB, sq.qn, dq_, T);
    const dqa = rmsNormBack(ops, sq.qaNorm, T, r, pq.qANorm, dqn);
    linearBack(ops, pq.qA, s.x, dqa, T, dx);
  } else if (pq.kind === "direct" && sq.kind === "direct") {
    linearBack(ops, pq.q, s.x, dq_, T, dx);
  } else {
    throw new Error("the saved query activations are not of the query's kind");
  }
  return dx;
}
