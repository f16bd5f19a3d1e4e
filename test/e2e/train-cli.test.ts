/** `moela train` as a process saves an FP8 model with its tokenizer, and `moela generate` runs it. */
import { execFileSync } from "node:child_process";
import * as fs from "node:fs";
import * as path from "node:path";
import { describe, expect, it } from "vitest";
import { trainingInputsForFile } from "../helpers/train.js";

const { tmp, text, tokenizer } = trainingInputsForFile("moela-train-cli-");

describe("runTraining (moela train)", () => {
  it("moela train saves an FP8 model with its tokenizer that moela generate runs", () => {
    const out = path.join(tmp, "cli-model");
    const cli = path.resolve("services/cli/bin/moela.js");
    execFileSync(
      process.execPath,
      [
        cli,
        "train",
        "--config",
        "v3-tiny",
        "--data",
        text,
        "--tokenizer",
        tokenizer,
        "--steps",
        "3",
        "--batch",
        "2",
        "--seq-len",
        "16",
        "--threads",
        "1",
        "--out",
        out,
        "--json",
      ],
      {
        encoding: "utf8",
        stdio: ["ignore", "pipe", "pipe"],
      },
    );
    expect(fs.existsSync(path.join(out, "tokenizer.json"))).toBe(true);
    const cfg = JSON.parse(fs.readFileSync(path.join(out, "config.json"), "utf8")) as Record<string, unknown>;
    expect(cfg["quantization_config"]).toMatchObject({ quant_method: "fp8", weight_block_size: [128, 128] });
    const gen = execFileSync(
      process.execPath,
      [cli, "generate", "--model", out, "--prompt-ids", "0,5,6", "--max-tokens", "4", "--temperature", "0", "--json", "--threads", "1"],
      {
        encoding: "utf8",
        stdio: ["ignore", "pipe", "pipe"],
      },
    );
    const res = JSON.parse(gen.trim().split("\n").pop()!) as { token_ids: number[] };
    expect(res.token_ids).toHaveLength(4);

    // Stage 2 from the saved model: --init takes its config.json, --mtp-only leaves the main model as it is, so
    // greedy decoding gives the same tokens. --mtp-depths 2 also trains the second of two chained drafts, and
    // --max-shard-bytes saves the weights as shards with an index that generate loads.
    const tuned = path.join(tmp, "cli-model-mtp");
    const common = ["--data", text, "--tokenizer", tokenizer, "--steps", "2", "--batch", "2", "--seq-len", "16", "--threads", "1", "--json"];
    const stage2 = execFileSync(
      process.execPath,
      [cli, "train", "--init", out, "--mtp-only", "--mtp-targets", "main", "--mtp-depths", "2", ...common, "--max-shard-bytes", "65536", "--out", tuned],
      {
        encoding: "utf8",
        stdio: ["ignore", "pipe", "pipe"],
      },
    );
    const steps = stage2
      .trim()
      .split("\n")
      .map((l) => JSON.parse(l) as { mtpChainLoss?: number });
    expect(steps).toHaveLength(2);
    for (const s of steps) expect(s.mtpChainLoss).toBeGreaterThan(0);
    expect(fs.readFileSync(path.join(tuned, "config.json"), "utf8")).toBe(fs.readFileSync(path.join(out, "config.json"), "utf8"));
    expect(fs.existsSync(path.join(tuned, "model.safetensors"))).toBe(false);
    const index = JSON.parse(fs.readFileSync(path.join(tuned, "model.safetensors.index.json"), "utf8")) as { weight_map: Record<string, string> };
    const shards = [...new Set(Object.values(index.weight_map))];
    expect(shards.length).toBeGreaterThan(1);
    const gen2 = execFileSync(
      process.execPath,
      [cli, "generate", "--model", tuned, "--prompt-ids", "0,5,6", "--max-tokens", "4", "--temperature", "0", "--json", "--threads", "1"],
      { encoding: "utf8", stdio: ["ignore", "pipe", "pipe"] },
    );
    expect((JSON.parse(gen2.trim().split("\n").pop()!) as { token_ids: number[] }).token_ids).toEqual(res.token_ids);

    // bad flags are refused before any work
    for (const [args, message] of [
      [["--mtp-only"], "--mtp-only trains the MTP module of a trained model"],
      [["--init", out, "--mtp-targets", "next"], "--mtp-targets must be data or main"],
      [["--init", out, "--mtp-only", "--mtp-targets", "main", "--mtp-depths", "5"], "--mtp-depths must be an integer from 1 to 4"],
      [["--init", out, "--mtp-depths", "2"], "--mtp-depths above 1 trains chained drafts of a trained model"],
      [["--init", out, "--max-shard-bytes", "-1"], "--max-shard-bytes must be 0 (one file) or a positive number of bytes"],
    ] as const) {
      let err: (Error & { status?: number; stderr?: string }) | null = null;
      try {
        execFileSync(process.execPath, [cli, "train", ...args, ...common], { encoding: "utf8", stdio: ["ignore", "pipe", "pipe"] });
      } catch (e) {
        err = e as Error & { status?: number; stderr?: string };
      }
      expect(err?.status).not.toBe(0);
      expect(err?.stderr).toContain(message);
    }
  });
});
