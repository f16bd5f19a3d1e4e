/**
 * Saving a trained model in the Hugging Face DeepSeek-V3 layout through the engine's writer (the same code as
 * the random-weight generator): by default with FP8 e4m3 128x128 block weights for every attention and MLP
 * linear (quantized as DeepSeek does: per block scale = amax / 448), BF16 for the rest, F32 for the balancing
 * biases; the MTP layer's embed_tokens and shared_head.head are written as copies of the tied main tensors.
 */
import * as fs from "node:fs";
import * as path from "node:path";
import { parseModelConfig, writeHfCheckpoint, type FloatDType } from "@moela/engine";
import type { TrainModel } from "./model.js";
import { MINIMAL_TOKENIZER_CONFIG } from "./data.js";

export interface SaveOptions {
  /** FP8 128x128 block weights for the linears (default true). */
  readonly fp8?: boolean;
  /** dtype of the other weights (default BF16). */
  readonly weightDtype?: FloatDType;
  /** Folder holding tokenizer.json / tokenizer_config.json to copy next to the weights. */
  readonly tokenizerDir?: string;
  /** Lines for the README.md written with the model (how it was trained). */
  readonly readme?: readonly string[];
  /** Split the weights into shards of at most this many bytes plus model.safetensors.index.json (default: one file). */
  readonly maxShardBytes?: number | null;
}

export const FP8_QUANTIZATION_CONFIG = { activation_scheme: "dynamic", fmt: "e4m3", quant_method: "fp8", weight_block_size: [128, 128] };

/** Write the model into `dir` (config.json with quantization_config when FP8). Returns the files written. */
export function saveHfModel(model: TrainModel, configJson: Record<string, unknown>, dir: string, opts: SaveOptions = {}): string[] {
  const fp8 = opts.fp8 ?? true;
  const json: Record<string, unknown> = { ...configJson, vocab_size: model.config.vocabSize };
  if (fp8) json["quantization_config"] = FP8_QUANTIZATION_CONFIG;
  else delete json["quantization_config"];
  const cfg = parseModelConfig(json);
  const written = writeHfCheckpoint(dir, json, cfg, (spec) => Float32Array.from(model.tensorValues(spec.name)), {
    weightDtype: opts.weightDtype ?? "BF16",
    maxShardBytes: opts.maxShardBytes ?? null,
  });
  const files = [...written.files];
  if (opts.tokenizerDir !== undefined) {
    for (const f of ["tokenizer.json", "tokenizer_config.json", "chat_template.jinja"]) {
      const src = path.join(opts.tokenizerDir, f);
      if (!fs.existsSync(src)) continue;
      fs.copyFileSync(src, path.join(dir, f));
      files.push(f);
    }
    if (files.includes("tokenizer.json") && !files.includes("tokenizer_config.json")) {
      fs.writeFileSync(path.join(dir, "tokenizer_config.json"), JSON.stringify(MINIMAL_TOKENIZER_CONFIG, null, 2) + "\n");
      files.push("tokenizer_config.json");
    }
  }
  if (opts.readme !== undefined) {
    fs.writeFileSync(path.join(dir, "README.md"), opts.readme.join("\n") + "\n");
    files.push("README.md");
  }
  return files.sort();
}
