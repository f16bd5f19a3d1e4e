import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { fileURLToPath } from "node:url";
import { afterAll, describe, expect, it } from "vitest";
import { CheckpointTensors, dequantFp8Tensor, parseModelConfig, toFloat32 } from "@moela/engine";
import { checkpointTensorSpecs, generateCheckpoint, resolveConfig } from "../../../scripts/lib/tiny-checkpoint.js";
import { SMALL_V3 } from "../../helpers/checkpoints.js";

const tmpRoot = fs.mkdtempSync(path.join(os.tmpdir(), "moela-gen-"));
afterAll(() => fs.rmSync(tmpRoot, { recursive: true, force: true }));
let counter = 0;
const tmpDir = (): string => path.join(tmpRoot, `g${counter++}`);

function filesOf(dir: string): Map<string, Buffer> {
  return new Map(
    fs
      .readdirSync(dir)
      .sort()
      .map((f) => [f, fs.readFileSync(path.join(dir, f))]),
  );
}

describe("tiny checkpoint generator", () => {
  it("is deterministic: same seed -> byte-identical files, other seed -> other weights", () => {
    const a = generateCheckpoint(SMALL_V3, tmpDir(), 7);
    const b = generateCheckpoint(SMALL_V3, tmpDir(), 7);
    const c = generateCheckpoint(SMALL_V3, tmpDir(), 8);
    const fa = filesOf(a.dir);
    const fb = filesOf(b.dir);
    expect([...fa.keys()]).toEqual(["README.md", "config.json", "generation_config.json", "model.safetensors"]);
    expect([...fb.keys()]).toEqual([...fa.keys()]);
    for (const [name, bytes] of fa) expect(bytes.equals(fb.get(name)!), name).toBe(true);
    expect(fs.readFileSync(path.join(c.dir, "model.safetensors")).equals(fa.get("model.safetensors")!)).toBe(false);
  });

  it("writes the HF tensor names, shapes and the release's dtype choices", () => {
    const g = generateCheckpoint(SMALL_V3, tmpDir(), 1);
    const cfg = parseModelConfig(JSON.parse(fs.readFileSync(path.join(g.dir, "config.json"), "utf8")));
    expect(cfg.fp8BlockSize).toEqual([128, 128]);
    expect(cfg.numNextnPredictLayers).toBe(1);
    const ck = CheckpointTensors.open(g.dir);
    const d = (n: string): [string, readonly number[]] => [ck.describe(n).dtype, ck.describe(n).shape];
    expect(d("model.embed_tokens.weight")).toEqual(["BF16", [200, 64]]);
    expect(d("lm_head.weight")).toEqual(["BF16", [200, 64]]);
    expect(d("model.layers.0.mlp.gate_proj.weight")).toEqual(["F8_E4M3", [96, 64]]); // dense layer 0
    expect(d("model.layers.0.mlp.gate_proj.weight_scale_inv")).toEqual(["F32", [1, 1]]);
    expect(d("model.layers.1.self_attn.q_b_proj.weight")).toEqual(["F8_E4M3", [2 * 24, 48]]);
    expect(d("model.layers.1.self_attn.kv_a_proj_with_mqa.weight")).toEqual(["F8_E4M3", [32 + 8, 64]]);
    expect(d("model.layers.1.self_attn.kv_b_proj.weight")).toEqual(["F8_E4M3", [2 * (16 + 16), 32]]);
    expect(d("model.layers.1.self_attn.o_proj.weight")).toEqual(["F8_E4M3", [64, 2 * 16]]);
    expect(d("model.layers.1.self_attn.q_a_layernorm.weight")).toEqual(["BF16", [48]]);
    expect(d("model.layers.1.mlp.experts.7.down_proj.weight")).toEqual(["F8_E4M3", [64, 32]]);
    expect(d("model.layers.1.mlp.shared_experts.up_proj.weight")).toEqual(["F8_E4M3", [32, 64]]);
    expect(d("model.layers.1.mlp.gate.weight")).toEqual(["BF16", [8, 64]]);
    expect(d("model.layers.1.mlp.gate.e_score_correction_bias")).toEqual(["F32", [8]]);
    // MTP layer 2: own embedding/head, eh_proj BF16 without a scale, a full MoE block in FP8.
    expect(d("model.layers.2.embed_tokens.weight")).toEqual(["BF16", [200, 64]]);
    expect(d("model.layers.2.eh_proj.weight")).toEqual(["BF16", [64, 128]]);
    expect(ck.has("model.layers.2.eh_proj.weight_scale_inv")).toBe(false);
    expect(d("model.layers.2.shared_head.head.weight")).toEqual(["BF16", [200, 64]]);
    expect(d("model.layers.2.shared_head.norm.weight")).toEqual(["BF16", [64]]);
    expect(d("model.layers.2.mlp.experts.0.up_proj.weight")).toEqual(["F8_E4M3", [32, 64]]);
    expect(ck.has("model.layers.3.input_layernorm.weight")).toBe(false);
    // every FP8 weight has its scale and vice versa
    const names = ck.names();
    const fp8 = names.filter((n) => ck.describe(n).dtype === "F8_E4M3");
    expect(names.filter((n) => n.endsWith("_scale_inv")).sort()).toEqual(fp8.map((n) => `${n}_scale_inv`).sort());
    expect(names.length).toBe(checkpointTensorSpecs(cfg).length + fp8.length);
  });

  it("initialises weights with the documented scales (norms near 1, linears 1/sqrt(fan_in))", () => {
    const g = generateCheckpoint(SMALL_V3, tmpDir(), 3);
    const ck = CheckpointTensors.open(g.dir);
    const stats = (v: Float32Array): { mean: number; std: number } => {
      const mean = v.reduce((a, b) => a + b, 0) / v.length;
      return { mean, std: Math.sqrt(v.reduce((a, b) => a + (b - mean) ** 2, 0) / v.length) };
    };
    const norm = stats(toFloat32(ck.get("model.layers.1.input_layernorm.weight")));
    expect(norm.mean).toBeGreaterThan(0.95);
    expect(norm.mean).toBeLessThan(1.05);
    expect(norm.std).toBeGreaterThan(0.05); // not all ones: a skipped norm weight must show
    const w = dequantFp8Tensor(ck.get("model.layers.1.mlp.experts.3.gate_proj.weight"), ck.get("model.layers.1.mlp.experts.3.gate_proj.weight_scale_inv"));
    const s = stats(w);
    expect(s.std).toBeGreaterThan(0.8 / 8); // fan_in 64 -> std 1/8
    expect(s.std).toBeLessThan(1.2 / 8);
  });

  it("the bf16 preset writes shards + index and the same underlying weights", () => {
    const small = { ...SMALL_V3, preset: "tiny-v3-bf16" as const, maxShardBytes: 20_000 };
    const g = generateCheckpoint(small, tmpDir(), 1);
    expect(g.fp8).toBe(false);
    expect(g.files).toContain("model.safetensors.index.json");
    const ck = CheckpointTensors.open(g.dir);
    expect(ck.files.length).toBeGreaterThan(2);
    expect(JSON.parse(fs.readFileSync(path.join(g.dir, "config.json"), "utf8")).quantization_config).toBeUndefined();
    const fp8 = CheckpointTensors.open(generateCheckpoint(SMALL_V3, tmpDir(), 1).dir);
    const name = "model.layers.1.self_attn.o_proj.weight";
    const bf = toFloat32(ck.get(name));
    const q = dequantFp8Tensor(fp8.get(name), fp8.get(`${name}_scale_inv`));
    let maxAbs = 0;
    let maxDiff = 0;
    for (let i = 0; i < bf.length; i++) {
      maxAbs = Math.max(maxAbs, Math.abs(bf[i]!));
      maxDiff = Math.max(maxDiff, Math.abs(bf[i]! - q[i]!));
    }
    expect(maxDiff).toBeGreaterThan(0); // different roundings...
    expect(maxDiff).toBeLessThan(maxAbs / 8); // ...of the same values
  });

  it("tiny-v2-lite: q_proj, no correction bias, no MTP, F32", () => {
    const g = generateCheckpoint({ preset: "tiny-v2-lite", config: { ...SMALL_V3.config, q_lora_rank: null, n_group: 1, topk_group: 1 } }, tmpDir(), 1);
    const ck = CheckpointTensors.open(g.dir);
    expect(g.modelConfig.modelType).toBe("deepseek_v2");
    expect(ck.describe("model.layers.1.self_attn.q_proj.weight").dtype).toBe("F32");
    expect(ck.describe("model.layers.1.self_attn.q_proj.weight").shape).toEqual([2 * 24, 64]);
    expect(ck.has("model.layers.1.self_attn.q_a_proj.weight")).toBe(false);
    expect(ck.has("model.layers.1.mlp.gate.e_score_correction_bias")).toBe(false);
    expect(ck.describe("model.layers.1.mlp.shared_experts.gate_proj.weight").shape).toEqual([2 * 32, 64]);
    expect(ck.names().some((n) => n.startsWith("model.layers.2."))).toBe(false);
  });

  it("writes tokenizer files when the vocabulary fits them", () => {
    const { config } = resolveConfig("tiny-v3");
    const g = generateCheckpoint({ ...SMALL_V3, config: { ...SMALL_V3.config, vocab_size: config["vocab_size"] } }, tmpDir(), 1);
    expect(g.tokenizer).toBe(true);
    const tj = JSON.parse(fs.readFileSync(path.join(g.dir, "tokenizer.json"), "utf8"));
    const ids = [...Object.values(tj.model.vocab as Record<string, number>), ...tj.added_tokens.map((t: { id: number }) => t.id)];
    expect(Math.max(...ids)).toBe((config["vocab_size"] as number) - 1);
    const gen = JSON.parse(fs.readFileSync(path.join(g.dir, "generation_config.json"), "utf8"));
    expect([gen.bos_token_id, gen.eos_token_id]).toEqual([0, 1]);
    expect(tj.added_tokens[0].content).toBe("<｜begin▁of▁sentence｜>");
    expect(tj.added_tokens[1].content).toBe("<｜end▁of▁sentence｜>");
  });

  it("the committed models/tiny-v3 is byte-identical to what the generator writes for seed 0", () => {
    const committed = fileURLToPath(new URL("../../../models/tiny-v3", import.meta.url));
    const g = generateCheckpoint("tiny-v3", tmpDir(), 0);
    const want = filesOf(committed);
    const got = filesOf(g.dir);
    expect([...got.keys()]).toEqual([...want.keys()]);
    for (const [name, bytes] of want) expect(got.get(name)!.equals(bytes), `${name} differs: regenerate models/tiny-v3`).toBe(true);
  });
});
