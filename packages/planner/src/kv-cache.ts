/**
 * KV-cache bytes per token: what one more token of context costs in memory, over all layers.
 * MLA caches one latent row per layer (kv_lora_rank + qk_rope_head_dim values: c_kv and the shared k_pe);
 * GQA/MHA caches K and V for every KV head (2 x num_key_value_heads x head_dim values).
 */
import type { Architecture } from "./config.js";

export interface KvCache {
  /** Values cached per token in one layer. */
  readonly valuesPerLayer: number;
  /** Bytes per value (2: bf16/fp16; 1: fp8). */
  readonly bytesPerValue: number;
  /** Main layers counted (num_hidden_layers). */
  readonly layers: number;
  /** Bytes per token over the main layers: the figure the paper quotes. */
  readonly bytesPerToken: number;
  /** With the MTP modules' layers too (what a server that drafts with MTP also keeps). */
  readonly bytesPerTokenWithMtp: number;
}

export function kvValuesPerLayer(a: Architecture): number {
  const at = a.attention;
  return at.kind === "mla" ? at.kvLoraRank + at.qkRopeHeadDim : 2 * at.numKvHeads * at.headDim;
}

export function kvCache(a: Architecture, bytesPerValue: number): KvCache {
  const v = kvValuesPerLayer(a);
  return {
    valuesPerLayer: v,
    bytesPerValue,
    layers: a.numLayers,
    bytesPerToken: v * a.numLayers * bytesPerValue,
    bytesPerTokenWithMtp: v * (a.numLayers + a.mtpModules) * bytesPerValue,
  };
}
