/**
 * Parameter counts and FLOPs per token, summed tensor by tensor as the HF checkpoints store them.
 *
 * Conventions (DeepSeek's, see README.md):
 * - total: every weight of the main model, the input embedding and the output head included
 *   (a tied head is the embedding, counted once). The MTP modules are counted apart.
 * - activated: the weights one token's forward pass reads: everything except the input embedding
 *   (a lookup, not a product) and the routed experts the token does not go to. DeepSeek-V3's
 *   "37B activated" (36.6B with the 0.9B head) is counted this way.
 * - matmul: the activated weights that are multiplied (not norms, biases or the router bias);
 *   FLOPs per token = 2 x matmul + the attention's products with the cached context.
 */
import type { Architecture, Attention, Ffn } from "./config.js";

/** One block's weights: in all, read by one token, and multiplied by one token. */
export interface Count {
  readonly total: number;
  readonly activated: number;
  readonly matmul: number;
}

const ZERO: Count = { total: 0, activated: 0, matmul: 0 };

function add(...cs: Count[]): Count {
  return cs.reduce((a, c) => ({ total: a.total + c.total, activated: a.activated + c.activated, matmul: a.matmul + c.matmul }), ZERO);
}

function times(c: Count, n: number): Count {
  return { total: c.total * n, activated: c.activated * n, matmul: c.matmul * n };
}

/** A weight matrix every token multiplies. */
const matrix = (rows: number, cols: number): Count => ({ total: rows * cols, activated: rows * cols, matmul: rows * cols });
/** A vector every token reads but does not multiply (norm weight, bias). */
const vector = (n: number): Count => ({ total: n, activated: n, matmul: 0 });

export function attentionCount(a: Attention, d: number): Count {
  if (a.kind === "mla") {
    const qk = a.qkNopeHeadDim + a.qkRopeHeadDim;
    const q =
      a.qLoraRank === null
        ? matrix(d, a.numHeads * qk) // q_proj
        : add(matrix(d, a.qLoraRank), vector(a.qLoraRank), matrix(a.qLoraRank, a.numHeads * qk)); // q_a_proj, q_a_layernorm, q_b_proj
    return add(
      q,
      matrix(d, a.kvLoraRank + a.qkRopeHeadDim), // kv_a_proj_with_mqa: the latent c_kv and the shared k_pe
      vector(a.kvLoraRank), // kv_a_layernorm
      matrix(a.kvLoraRank, a.numHeads * (a.qkNopeHeadDim + a.vHeadDim)), // kv_b_proj: k_nope and v per head
      matrix(a.numHeads * a.vHeadDim, d), // o_proj
    );
  }
  const q = a.numHeads * a.headDim;
  const kv = a.numKvHeads * a.headDim;
  return add(
    matrix(d, q), // q_proj
    matrix(d, kv), // k_proj
    matrix(d, kv), // v_proj
    matrix(q, d), // o_proj
    a.qkvBias ? vector(q + 2 * kv) : ZERO,
    a.oBias ? vector(d) : ZERO,
    a.qkNorm ? vector(2 * a.headDim) : ZERO, // q_norm, k_norm (Qwen3)
  );
}

/** gate_proj, up_proj, down_proj of one SwiGLU MLP of width `w`. */
const swiglu = (d: number, w: number): Count => matrix(3 * d, w);

export interface FfnCount {
  readonly dense: Count;
  readonly routedExperts: Count;
  readonly sharedExperts: Count;
  /** The gate that scores every routed expert (and its bias, and Qwen2-MoE's shared-expert gate). */
  readonly router: Count;
}

export function ffnCount(f: Ffn, d: number): FfnCount {
  if (f.kind === "dense") {
    return {
      dense: add(swiglu(d, f.intermediateSize), f.bias ? vector(2 * f.intermediateSize + d) : ZERO),
      routedExperts: ZERO,
      sharedExperts: ZERO,
      router: ZERO,
    };
  }
  const one = 3 * d * f.expertIntermediateSize;
  return {
    dense: ZERO,
    routedExperts: { total: f.routedExperts * one, activated: f.expertsPerToken * one, matmul: f.expertsPerToken * one },
    sharedExperts: f.sharedIntermediateSize > 0 ? swiglu(d, f.sharedIntermediateSize) : ZERO,
    router: add(matrix(d, f.routedExperts), f.routerBias ? vector(f.routedExperts) : ZERO, f.sharedExpertGate ? matrix(d, 1) : ZERO),
  };
}

export interface ParamBreakdown {
  readonly embedding: Count;
  readonly lmHead: Count;
  readonly attention: Count;
  readonly denseFfn: Count;
  readonly routedExperts: Count;
  readonly sharedExperts: Count;
  readonly router: Count;
  readonly norms: Count;
}

export interface ParamCounts {
  /** The main model (MTP apart). */
  readonly main: Count;
  readonly breakdown: ParamBreakdown;
  /** The MTP modules' own weights; their embedding and output head are the main model's, not counted again. */
  readonly mtp: Count;
}

function decoderLayer(a: Architecture, f: Ffn): { attention: Count; ffn: FfnCount; norms: Count } {
  const d = a.hiddenSize;
  return { attention: attentionCount(a.attention, d), ffn: ffnCount(f, d), norms: vector(2 * d) }; // input_layernorm, post_attention_layernorm
}

export function countParams(a: Architecture): ParamCounts {
  const d = a.hiddenSize;
  const table = a.vocabSize * d;
  // The input embedding is a row lookup: stored, not read in full, not multiplied.
  const embedding: Count = { total: table, activated: 0, matmul: 0 };
  // A tied head multiplies the embedding table: read and multiplied per token, stored once.
  const lmHead: Count = a.tieWordEmbeddings ? { total: 0, activated: table, matmul: table } : matrix(table, 1);
  let attention = ZERO;
  let denseFfn = ZERO;
  let routedExperts = ZERO;
  let sharedExperts = ZERO;
  let router = ZERO;
  let norms = vector(d); // the final norm
  for (const f of a.ffn) {
    const l = decoderLayer(a, f);
    attention = add(attention, l.attention);
    denseFfn = add(denseFfn, l.ffn.dense);
    routedExperts = add(routedExperts, l.ffn.routedExperts);
    sharedExperts = add(sharedExperts, l.ffn.sharedExperts);
    router = add(router, l.ffn.router);
    norms = add(norms, l.norms);
  }
  const breakdown = { embedding, lmHead, attention, denseFfn, routedExperts, sharedExperts, router, norms };
  const main = add(...Object.values(breakdown));
  let mtp = ZERO;
  if (a.mtpModules > 0 && a.mtpFfn !== null) {
    const l = decoderLayer(a, a.mtpFfn);
    const module = add(
      vector(2 * d), // enorm (the token's embedding), hnorm (the previous depth's hidden state)
      matrix(2 * d, d), // eh_proj: the two normed vectors, concatenated, back to hidden
      l.attention,
      l.ffn.dense,
      l.ffn.routedExperts,
      l.ffn.sharedExperts,
      l.ffn.router,
      l.norms,
      vector(d), // shared_head.norm (the head itself is the main model's)
    );
    mtp = times(module, a.mtpModules);
  }
  return { main, breakdown, mtp };
}

export interface FlopsPerToken {
  /** 2 x the activated matmul weights of the main model (one multiply and one add each). */
  readonly matmul: number;
  /** FLOPs added by each token already in the context: q.k scores and the weighted sum of V, over all layers. */
  readonly attentionPerContextToken: number;
}

/**
 * Attention FLOPs per context token, in the MHA-equivalent form: per layer and head, a dot product of
 * the query-key width and one of the value width (MLA: 192 and 128 in V3). Absorbed MLA decode, which
 * works in the 512-wide latent instead, does 2 x heads x (576 + 512) per layer: more FLOPs, fewer bytes.
 */
export function attentionFlopsPerContextToken(a: Architecture): number {
  const at = a.attention;
  const perLayer = at.kind === "mla" ? 2 * at.numHeads * (at.qkNopeHeadDim + at.qkRopeHeadDim + at.vHeadDim) : 2 * at.numHeads * 2 * at.headDim;
  return perLayer * a.numLayers;
}

export function flopsPerToken(a: Architecture, params: ParamCounts): FlopsPerToken {
  return { matmul: 2 * params.main.matmul, attentionPerContextToken: attentionFlopsPerContextToken(a) };
}
