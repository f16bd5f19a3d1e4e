/**
 * Checkpoints whose files are well-formed but whose contents contradict config.json, and configs with
 * impossible values: each must fail at load with a clear error naming the file and the tensor or field.
 */
import { afterAll, describe, expect, it } from "vitest";
import { cpSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { CheckpointError, ConfigError } from "@moela/core";
import { DeepseekModel, readSafetensorsFile, writeSafetensorsFile } from "@moela/engine";
import { makeCheckpoint, removeCheckpoints } from "../../helpers/checkpoints.js";

const copies: string[] = [];
afterAll(() => {
  removeCheckpoints();
  for (const d of copies) rmSync(d, { recursive: true, force: true });
});

let base: string | undefined;
/** A fresh copy of one small single-file tiny V3 checkpoint (generated once per file). */
function freshCheckpoint(): string {
  base ??= makeCheckpoint({ preset: "tiny-v3", maxShardBytes: null, config: { num_hidden_layers: 2 } });
  const dir = mkdtempSync(join(tmpdir(), "moela-bad-"));
  cpSync(base, dir, { recursive: true });
  copies.push(dir);
  return dir;
}

/** A single-file tiny V3 checkpoint, rewritten through `edit` (tensor list) and/or `patchConfig`. */
function mutated(
  edit: (tensors: { name: string; dtype: string; shape: number[]; data: Uint8Array }[]) => typeof tensors,
  patchConfig: (c: Record<string, unknown>) => void = () => {},
): string {
  const dir = freshCheckpoint();
  const file = join(dir, "model.safetensors");
  const tensors = [...readSafetensorsFile(file).values()].map((t) => ({ name: t.name, dtype: t.dtype, shape: [...t.shape], data: t.bytes.slice() }));
  writeSafetensorsFile(file, edit(tensors) as Parameters<typeof writeSafetensorsFile>[1]);
  const cfgFile = join(dir, "config.json");
  const cfg = JSON.parse(readFileSync(cfgFile, "utf8")) as Record<string, unknown>;
  patchConfig(cfg);
  writeFileSync(cfgFile, JSON.stringify(cfg));
  return dir;
}

function loadError(dir: string): Error {
  try {
    DeepseekModel.load(dir);
  } catch (err) {
    return err as Error;
  }
  throw new Error("load succeeded");
}

describe("checkpoint contents that contradict config.json", () => {
  it("a tensor the config needs is missing", () => {
    const name = "model.layers.1.self_attn.kv_b_proj.weight";
    const err = loadError(mutated((ts) => ts.filter((t) => t.name !== name)));
    expect(err).toBeInstanceOf(CheckpointError);
    expect(err.message).toContain(name);
    expect(err.message).toMatch(/missing/);
  });

  it("the router's correction bias is missing", () => {
    const name = "model.layers.1.mlp.gate.e_score_correction_bias";
    const err = loadError(mutated((ts) => ts.filter((t) => t.name !== name)));
    expect(err).toBeInstanceOf(CheckpointError);
    expect(err.message).toContain(name);
  });

  it("a tensor's shape contradicts the config", () => {
    // config says hidden 256; the final norm claims 128 values (and the bytes agree with the claim).
    const err = loadError(mutated((ts) => ts.map((t) => (t.name === "model.norm.weight" ? { ...t, shape: [128], data: t.data.subarray(0, 128 * 2) } : t))));
    expect(err).toBeInstanceOf(CheckpointError);
    expect(err.message).toContain("model.norm.weight");
    expect(err.message).toMatch(/shape \[128\] contradicts config\.json \(expected \[256\]\)/);
  });

  it("the config's kv_lora_rank disagrees with every attention tensor", () => {
    const err = loadError(
      mutated(
        (ts) => ts,
        (c) => (c.kv_lora_rank = 48),
      ),
    );
    expect(err).toBeInstanceOf(CheckpointError);
    expect(err.message).toMatch(/kv_a_proj_with_mqa\.weight/);
  });

  it("an FP8 weight without its scale tensor", () => {
    const name = "model.layers.0.self_attn.o_proj.weight";
    const err = loadError(mutated((ts) => ts.filter((t) => t.name !== `${name}_scale_inv`)));
    expect(err).toBeInstanceOf(CheckpointError);
    expect(err.message).toContain(name);
    expect(err.message).toMatch(/scale/);
  });
});

describe("configs with impossible values", () => {
  it.each([
    ["topk_group larger than n_group", { topk_group: 9 }, /topk_group 9 exceeds n_group 4/],
    ["experts not divisible into groups", { n_routed_experts: 18 }, /not divisible by n_group/],
    ["more experts per token than experts", { num_experts_per_tok: 32 }, /exceeds n_routed_experts/],
    ["negative hidden size", { hidden_size: -4 }, /hidden_size/],
    ["non-integer layer count", { num_hidden_layers: 2.5 }, /num_hidden_layers/],
    ["odd rope head dim", { qk_rope_head_dim: 15 }, /must be even/],
    ["dense prefix longer than the model", { first_k_dense_replace: 9 }, /first_k_dense_replace/],
    ["unknown model type", { model_type: "llama" }, /model_type/],
    ["unsupported activation", { hidden_act: "gelu" }, /hidden_act/],
    ["eos id outside the vocabulary", { eos_token_id: 99999 }, /outside the vocabulary/],
    ["groups that cannot hold top-k", { topk_group: 1, num_experts_per_tok: 5 }, /cannot hold/],
  ])("%s", (_name, patch, message) => {
    const err = loadError(
      mutated(
        (ts) => ts,
        (c) => Object.assign(c, patch),
      ),
    );
    expect(err).toBeInstanceOf(ConfigError);
    expect(err.message).toMatch(/^config\.json: /);
    expect(err.message).toMatch(message);
  });

  it("config.json that is not JSON names the file", () => {
    const dir = freshCheckpoint();
    writeFileSync(join(dir, "config.json"), "{ not json");
    const err = loadError(dir);
    expect(err).toBeInstanceOf(CheckpointError);
    expect(err.message).toContain("config.json");
  });
});
