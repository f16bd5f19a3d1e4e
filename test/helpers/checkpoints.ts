/** Temporary checkpoints made by the project's generator, cached per (options, seed) for one test file. */
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { generateCheckpoint, type GenerateOptions, type PresetName } from "../../scripts/lib/tiny-checkpoint.js";

const made: string[] = [];

/** A very small V3 variant (2 layers and an MTP layer, 8 experts, hidden 64): generated in well under a second. */
export const SMALL_V3: GenerateOptions = {
  preset: "tiny-v3",
  config: {
    hidden_size: 64,
    intermediate_size: 96,
    moe_intermediate_size: 32,
    num_hidden_layers: 2,
    n_routed_experts: 8,
    n_group: 4,
    topk_group: 2,
    num_experts_per_tok: 2,
    q_lora_rank: 48,
    kv_lora_rank: 32,
    qk_nope_head_dim: 16,
    qk_rope_head_dim: 8,
    v_head_dim: 16,
    num_attention_heads: 2,
    vocab_size: 200,
  },
};

export function makeCheckpoint(opts: PresetName | GenerateOptions, seed = 1): string {
  const dir = mkdtempSync(join(tmpdir(), "moela-ckpt-"));
  generateCheckpoint(opts, dir, seed);
  made.push(dir);
  return dir;
}

export function removeCheckpoints(): void {
  for (const d of made.splice(0)) rmSync(d, { recursive: true, force: true });
}
