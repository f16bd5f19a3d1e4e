/**
 * Parameters from a saved model (the Hugging Face layout `saveHfModel` writes, or any DeepSeek-V3 checkpoint of
 * the same config): FP8 block weights dequantized with their scales, BF16 and F32 widened. Fine-tuning starts
 * from them (`moela train --init`).
 */
import { CheckpointError } from "@moela/core";
import { CheckpointTensors, dequantFp8Tensor, toFloat32, type ModelConfig } from "@moela/engine";
import type { ParamStore } from "./params.js";

/** Overwrite every parameter in `params` with the checkpoint's tensor of the same name; returns how many. */
export function loadParamsFrom(dir: string, cfg: ModelConfig, params: ParamStore): number {
  const ckpt = CheckpointTensors.open(dir);
  const [br, bc] = cfg.fp8BlockSize ?? [128, 128];
  let n = 0;
  for (const p of params.list) {
    const t = ckpt.get(p.name);
    if (t.shape.length !== p.shape.length || t.shape.some((d, i) => d !== p.shape[i])) {
      throw new CheckpointError(t.file, `shape [${t.shape.join(", ")}] differs from this run's config (expected [${p.shape.join(", ")}])`, p.name);
    }
    const values = t.dtype === "F8_E4M3" ? dequantFp8Tensor(t, ckpt.get(`${p.name}_scale_inv`), br, bc) : toFloat32(t);
    p.data.set(values);
    n++;
  }
  ckpt.release();
  return n;
}
