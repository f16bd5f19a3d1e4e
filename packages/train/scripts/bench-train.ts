/**
 * Training throughput of a preset on synthetic tokens:
 *   npx tsx packages/train/scripts/bench-train.ts [preset] [threads] [steps] [batch] [seqLen] [vocab] [replicas|kernel]
 * Prints tokens/s per step and how much of the main thread's step went to the native products.
 */
import { parseModelConfig } from "@moela/engine";
import {
  opsProfile,
  DEFAULT_TRAIN_OPTIONS,
  TRAIN_PRESETS,
  TrainModel,
  Trainer,
  initParams,
  opsFor,
  setTrainThreads,
  shareParams,
  type TrainPresetName,
} from "../src/index.js";

const [preset = "v3-small", threads = "2", steps = "3", batch = "8", seqLen = "256", vocab = "4096", mode = "replicas"] = process.argv.slice(2);
const json = { ...TRAIN_PRESETS[preset as TrainPresetName].config, vocab_size: Number(vocab), bos_token_id: 0, eos_token_id: 1 };
const cfg = parseModelConfig(json);
const replicas = mode === "replicas" ? Number(threads) : 1;
setTrainThreads(mode === "replicas" ? 1 : Number(threads));
const ops = opsFor("f32");
const model = new TrainModel(cfg, shareParams(cfg, initParams(cfg, ops, 0)), ops);
const tokens = Int32Array.from({ length: 200_000 }, (_, i) => (i * 7919 + (i >> 3)) % cfg.vocabSize);
const t = new Trainer(model, { tokens }, { ...DEFAULT_TRAIN_OPTIONS, steps: Number(steps), batch: Number(batch), seqLen: Number(seqLen) });
await t.startReplicas(json, replicas);
console.log(
  `${preset}: ${(model.params.size / 1e6).toFixed(2)}M params, vocab ${cfg.vocabSize}, batch ${batch} x ${seqLen}, ${threads} threads (${mode === "replicas" ? "data-parallel replicas" : "kernel threads"})`,
);
for (let i = 0; i < Number(steps); i++) {
  opsProfile.on = true;
  opsProfile.nativeMs = opsProfile.flops = 0;
  const t0 = performance.now();
  const c0 = process.cpuUsage();
  const s = await t.trainStep();
  const dt = (performance.now() - t0) / 1000;
  const cu = process.cpuUsage(c0);
  const cpu = (cu.user + cu.system) / 1e6;
  console.log(
    `step ${s.step}: ${dt.toFixed(2)} s, ${(s.tokens / dt).toFixed(0)} tok/s (cpu ${cpu.toFixed(2)} s: ${(s.tokens / cpu).toFixed(0)} tok per cpu-s), loss ${s.loss.toFixed(3)}, max/mean load ${s.maxLoadRatio.toFixed(2)}`,
  );
  console.log(
    `  native products ${(opsProfile.nativeMs / 1000).toFixed(2)} s (${(opsProfile.flops / opsProfile.nativeMs / 1e6).toFixed(1)} GFLOP/s), the rest ${(dt - opsProfile.nativeMs / 1000).toFixed(2)} s`,
  );
}
await t.close();
