/**
 * How MLA lays its two attention paths out for the attend kernel (the model's calls, and the kernel tests and
 * benchmark that measure the same calls). Both score q_rope against the k_pe part of the latent rows
 * [c_kv | k_pe] (R + dr floats a position); they differ in the other half of the scores and in the values.
 */
import type { AttendArgs } from "./types.js";

/** MLA's head dimensions, as the HF config names them: heads, kv_lora_rank, qk_nope_head_dim, qk_rope_head_dim. */
export interface MlaHeadDims {
  readonly H: number;
  readonly R: number;
  readonly dn: number;
  readonly dr: number;
}

/** What both paths give for one sequence's n tokens. */
interface MlaAttention {
  /** [positions, R + dr] latent rows [c_kv | k_pe] (absorbed: or a paged cache slab with blockTable). */
  readonly latents: Float32Array;
  /** [T, H, dn + dr] queries [q_nope | q_rope] per head. */
  readonly q: Float32Array;
  /** The sequence's first token row in the query and output arrays. */
  readonly row: number;
  readonly n: number;
  readonly start: number;
  readonly scale: number;
}

/** Absorbed attention (decode): scores qAbs . c_kv + q_rope . k_pe, output softmax . c_kv in latent space. */
export interface AbsorbedAttention extends MlaAttention {
  /** [T, H, R] q_nope folded through W_UK. */
  readonly qAbs: Float32Array;
  /** [T, H, R] the output, in latent space. */
  readonly out: Float32Array;
  readonly blockTable?: Int32Array;
  readonly blockSize?: number;
}

/** Decompressed attention (prefill): scores q_nope . K_nope + q_rope . k_pe, output softmax . V. */
export interface DecompressedAttention extends MlaAttention {
  /**
   * [H, start + n, dn + dv] every head's K_nope | V rebuilt from the latents through kv_b_proj, head-major: a head's
   * positions lie next to each other, so an attend item reads contiguous rows. (Position-major, a head's rows lay
   * H * (dn + dv) floats apart: 16 KiB at V3's 16 heads of 256, so they all fell into the same L1 sets.)
   */
  readonly kv: Float32Array;
  /** [T, H, dv] the output per head. */
  readonly out: Float32Array;
}

/** What differs between the paths: the first query part, the keys and values, and the output. */
interface PathParts {
  /** [T, H, qaHead] the query part scored against ka, lenA of each head's qaHead floats. */
  readonly qa: Float32Array;
  readonly qaHead: number;
  readonly lenA: number;
  readonly keys: Pick<AttendArgs, "ka" | "kaOff" | "kaPos" | "kaHead" | "val" | "valOff" | "valPos" | "valHead" | "lenV">;
  /** [T, H, outHead] */
  readonly out: Float32Array;
  readonly outHead: number;
}

/**
 * attend's arguments: the path's parts, q_rope against the latents' k_pe, and the causal window. One literal (no
 * spreads: this runs per sequence and layer, and a spread-built object measured 35% slower decode on tiny-v3), laid
 * out an operand a line as kernels.h's AttendArgs is.
 */
function mlaAttendArgs(d: MlaHeadDims, a: MlaAttention, p: PathParts): AttendArgs {
  const { H, R, dn, dr } = d;
  const dq = dn + dr;
  const k = p.keys;
  // prettier-ignore
  return {
    qa: p.qa, qaOff: a.row * H * p.qaHead, qaTok: H * p.qaHead, qaHead: p.qaHead, lenA: p.lenA,
    qb: a.q, qbOff: a.row * H * dq + dn, qbTok: H * dq, qbHead: dq, lenB: dr,
    ka: k.ka, kaOff: k.kaOff, kaPos: k.kaPos, kaHead: k.kaHead,
    kb: a.latents, kbOff: R, kbPos: R + dr, kbHead: 0,
    val: k.val, valOff: k.valOff, valPos: k.valPos, valHead: k.valHead, lenV: k.lenV,
    out: p.out, outOff: a.row * H * p.outHead, outTok: H * p.outHead, outHead: p.outHead,
    n: a.n, H, start: a.start, scale: a.scale,
  };
}

/** attend's arguments for absorbed attention, straight over the latent rows (no per-head keys or values). */
export function absorbedAttendArgs(d: MlaHeadDims, a: AbsorbedAttention): AttendArgs {
  const { R, dr } = d;
  const c = a.latents; // keys and values are both c_kv, shared by every head
  const keys = { ka: c, kaOff: 0, kaPos: R + dr, kaHead: 0, val: c, valOff: 0, valPos: R + dr, valHead: 0, lenV: R };
  const args = mlaAttendArgs(d, a, { qa: a.qAbs, qaHead: R, lenA: R, keys, out: a.out, outHead: R });
  if (a.blockTable !== undefined) args.blockTable = a.blockTable;
  if (a.blockSize !== undefined) args.blockSize = a.blockSize;
  return args;
}

/** attend's arguments for decompressed attention over every head's rebuilt K_nope | V. */
export function decompressedAttendArgs(d: MlaHeadDims & { readonly dv: number }, a: DecompressedAttention): AttendArgs {
  const { H, dn, dr, dv } = d;
  const hs = dn + dv; // a head's K_nope | V
  const headSize = (a.start + a.n) * hs; // a head's positions
  if (a.kv.length < H * headSize)
    throw new RangeError(`decompressed attention: kv holds ${a.kv.length} floats, needs ${H * headSize} (H x positions x (dn + dv))`);
  const keys = { ka: a.kv, kaOff: 0, kaPos: hs, kaHead: headSize, val: a.kv, valOff: dn, valPos: hs, valHead: headSize, lenV: dv };
  return mlaAttendArgs(d, a, { qa: a.q, qaHead: dn + dr, lenA: dn, keys, out: a.out, outHead: dv });
}
