/**
 * A whole run as `moela train` drives it: a text file encoded with a tokenizer folder, checkpoints and a resume
 * that ends on the same bits (the CLI itself, and `moela generate` on its FP8 output: test/e2e/train-cli.test.ts).
 */
import * as fs from "node:fs";
import * as path from "node:path";
import { describe, expect, it } from "vitest";
import { readSafetensorsFile } from "@moela/engine";
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

  it("--init with --mtp-only: starts from a saved FP8 model, trains its MTP module only, and saves the main model's tensors bit for bit", async () => {
    const first = path.join(tmp, "init-base");
    await runTraining({ ...base, steps: 3, out: first });
    const evals: number[] = [];
    const distilled = path.join(tmp, "init-mtp");
    const last = await runTraining(
      {
        ...base,
        config: path.join(first, "config.json"),
        init: first,
        mtpOnly: true,
        mtpTargets: "main",
        steps: 4,
        lr: 2e-2,
        valData: text,
        evalRows: 4,
        out: distilled,
      },
      undefined,
      undefined,
      undefined,
      (e) => evals.push(e.mainLoss),
    );
    expect(last?.step).toBe(4);
    const a = readSafetensorsFile(path.join(first, "model.safetensors"));
    const b = readSafetensorsFile(path.join(distilled, "model.safetensors"));
    expect([...b.keys()].sort()).toEqual([...a.keys()].sort());
    const mtpLayer = `model.layers.${JSON.parse(fs.readFileSync(path.join(first, "config.json"), "utf8")).num_hidden_layers as number}.`;
    let same = 0;
    let moved = 0;
    for (const [name, t] of a) {
      const equal = Buffer.from(t.bytes).equals(Buffer.from(b.get(name)!.bytes));
      // the MTP layer's copies of the embedding and the head are the main model's tensors
      const tied = name.endsWith("embed_tokens.weight") || name.endsWith("shared_head.head.weight");
      if (!name.startsWith(mtpLayer) || tied) {
        expect(equal, `${name} changed`).toBe(true);
        same++;
      } else if (!equal) moved++;
    }
    expect(same).toBeGreaterThan(30);
    expect(moved).toBeGreaterThan(10);
    // the main model's held-out loss is what it was: the same weights, evaluated the same way
    const before: number[] = [];
    await runTraining(
      { ...base, config: path.join(first, "config.json"), init: first, mtpOnly: true, steps: 1, lr: 1e-30, valData: text, evalRows: 4 },
      undefined,
      undefined,
      undefined,
      (e) => before.push(e.mainLoss),
    );
    expect(evals.at(-1)).toBe(before[0]);
  });
});
