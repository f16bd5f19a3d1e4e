/**
 * A whole run as `moela train` drives it: a text file encoded with a tokenizer folder, checkpoints and a resume
 * that ends on the same bits (the CLI itself, and `moela generate` on its FP8 output: test/e2e/train-cli.test.ts).
 */
import * as fs from "node:fs";
import * as path from "node:path";
import { describe, expect, it } from "vitest";
import { DEFAULT_RUN_OPTIONS, runTraining, type RunOptions } from "@moela/train";
import { trainingInputsForFile } from "../../helpers/train.js";

const { tmp, text, tokenizer } = trainingInputsForFile("moela-run-");
const base: RunOptions = {
  ...DEFAULT_RUN_OPTIONS,
  config: "v3-tiny",
  data: text,
  tokenizer,
  steps: 6,
  batch: 2,
  seqLen: 16,
  warmup: 2,
  lr: 5e-3,
  seed: 3,
};

describe("runTraining (moela train)", () => {
  it("a run interrupted after a checkpoint and resumed ends on the same weights as an uninterrupted one", async () => {
    const whole = path.join(tmp, "whole");
    await runTraining({ ...base, out: whole, fp8: false });
    const ck = path.join(tmp, "ckpt");
    await runTraining({ ...base, steps: 3, checkpointDir: ck });
    const steps: number[] = [];
    const resumed = path.join(tmp, "resumed");
    await runTraining({ ...base, checkpointDir: ck, resume: true, out: resumed, fp8: false }, (s) => steps.push(s.step));
    expect(steps).toEqual([4, 5, 6]);
    const a = fs.readFileSync(path.join(whole, "model.safetensors"));
    const b = fs.readFileSync(path.join(resumed, "model.safetensors"));
    expect(b.equals(a)).toBe(true);
    const cfg = JSON.parse(fs.readFileSync(path.join(whole, "config.json"), "utf8")) as Record<string, unknown>;
    expect(cfg["vocab_size"]).toBeGreaterThan(200);
    expect(cfg["quantization_config"]).toBeUndefined();
  });

  it("takes a lone tokenizer.json (no tokenizer_config.json) and saves a loadable tokenizer with the model", async () => {
    const tokDir = path.join(tmp, "tok-only");
    fs.mkdirSync(tokDir);
    fs.copyFileSync(path.join(tokenizer, "tokenizer.json"), path.join(tokDir, "tokenizer.json"));
    const out = path.join(tmp, "tok-only-model");
    await runTraining({ ...base, tokenizer: path.join(tokDir, "tokenizer.json"), steps: 1, out });
    expect(fs.existsSync(path.join(out, "tokenizer_config.json"))).toBe(true);
    const { Tokenizer } = await import("@moela/tokenizer");
    expect(Tokenizer.fromDir(out).encode("hello").length).toBeGreaterThan(0);
  });
});
