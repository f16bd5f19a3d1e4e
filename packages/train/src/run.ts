/**
 * A whole training run as `moela train` drives it: resolve the model config (preset or config.json), load the
 * data, initialise or resume, step with checkpoints, save the model in the HF layout. The CLI only parses flags
 * and draws the progress bar (onStep).
 */
import * as fs from "node:fs";
import * as path from "node:path";
import { InvalidArgumentError } from "@moela/core";
import { parseModelConfig, type ModelConfig } from "@moela/engine";
import type { Tokenizer } from "@moela/tokenizer";
import { encodeTextFile, loadTokenizer, readTokenIds, tokenizerDir } from "./data.js";
import { TrainModel } from "./model.js";
import { opsFor, setTrainThreads, type Precision } from "./ops.js";
import { loadParamsFrom } from "./load.js";
import { initParams, shareParams } from "./params.js";
import { isTrainPresetName, TRAIN_PRESETS } from "./presets.js";
import { saveHfModel } from "./save.js";
import { DEFAULT_TRAIN_OPTIONS, Trainer, type EvalStats, type StepStats, type TrainOptions } from "./trainer.js";

export interface RunOptions extends TrainOptions {
  /** A preset name, or the path of a config.json (or a JSON object literal) of a DeepSeek-V3 model. */
  readonly config: string;
  /** A saved model (HF layout) whose weights the run starts from instead of random ones. */
  readonly init?: string;
  /** Token-id file, or a UTF-8 text file when `tokenizer` is given. */
  readonly data: string;
  /** Folder with tokenizer.json + tokenizer_config.json (or the tokenizer.json path). */
  readonly tokenizer?: string;
  /** Held-out data (same formats as `data`) for evaluations. */
  readonly valData?: string;
  /** Steps between evaluations (0: only after the last step). */
  readonly evalEvery: number;
  /** Held-out rows per evaluation. */
  readonly evalRows: number;
  /** Vocabulary size when there is no tokenizer (default: largest id + 1). */
  readonly vocabSize?: number;
  readonly threads: number;
  /**
   * How the threads are used: `kernels` (the native products split over the threads; bits independent of the
   * thread count) or `replicas` (data parallelism: each thread computes the gradients of a share of the batch,
   * summed in a fixed order; bits depend on the thread count).
   */
  readonly parallel: "kernels" | "replicas";
  readonly precision: Precision;
  /** std of the initial weights. */
  readonly initStd: number;
  /** Folder for train-state checkpoints (none: no checkpoints). */
  readonly checkpointDir?: string;
  /** Steps between checkpoints (0: only at the end). */
  readonly checkpointEvery: number;
  /** Resume from checkpointDir. */
  readonly resume: boolean;
  /** Where the trained model goes (HF layout); none: not saved. */
  readonly out?: string;
  /** FP8 128x128 block weights in the saved model. */
  readonly fp8: boolean;
  /** Shard the saved weights at this many bytes (0: one model.safetensors). */
  readonly maxShardBytes: number;
}

export const DEFAULT_RUN_OPTIONS: Omit<RunOptions, "data"> = {
  ...DEFAULT_TRAIN_OPTIONS,
  config: "v3-small",
  threads: 1,
  parallel: "replicas",
  precision: "f32",
  initStd: 0.02,
  checkpointEvery: 0,
  evalEvery: 0,
  evalRows: 64,
  resume: false,
  fp8: true,
  maxShardBytes: 0,
};

export interface RunInfo {
  readonly config: ModelConfig;
  readonly configJson: Record<string, unknown>;
  readonly dataTokens: number;
  readonly params: number;
  readonly startStep: number;
  /** On resume: training options that differ from the checkpoint's (the run then differs from an uninterrupted one). */
  readonly changedOnResume: readonly string[];
}

function baseConfig(spec: string): Record<string, unknown> {
  if (isTrainPresetName(spec)) return { ...TRAIN_PRESETS[spec].config };
  const text = spec.trimStart().startsWith("{") ? spec : fs.readFileSync(spec, "utf8");
  const v = JSON.parse(text) as unknown;
  if (typeof v !== "object" || v === null || Array.isArray(v)) throw new InvalidArgumentError(`--config ${spec}: not a JSON object`);
  const { quantization_config: _, ...rest } = v as Record<string, unknown>;
  return rest;
}

/** Train as `o` says; onStep sees every step, onInfo the resolved run before the first. Returns the last step's stats. */
export async function runTraining(
  o: RunOptions,
  onStep: (s: StepStats) => void = () => {},
  onInfo: (i: RunInfo) => void = () => {},
  onCheckpoint: (dir: string, step: number) => void = () => {},
  onEval: (e: EvalStats, step: number) => void = () => {},
): Promise<StepStats | null> {
  const json = baseConfig(o.config);
  let tok: Tokenizer | null = null;
  let tokDir: string | undefined;
  if (o.tokenizer !== undefined) {
    tokDir = tokenizerDir(o.tokenizer);
    tok = loadTokenizer(tokDir);
  }
  const load = (file: string): Int32Array => {
    const ext = path.extname(file).toLowerCase();
    if ([".bin", ".u16", ".u32", ".json"].includes(ext)) return readTokenIds(file);
    if (tok !== null) return encodeTextFile(file, tok);
    throw new InvalidArgumentError(`${file}: a text file needs --tokenizer (or give a .bin/.u16/.u32/.json token-id file)`);
  };
  const tokens = load(o.data);
  const val = o.valData !== undefined ? load(o.valData) : null;
  let maxId = 0;
  for (let i = 0; i < tokens.length; i++) maxId = Math.max(maxId, tokens[i]!);
  if (val !== null) for (let i = 0; i < val.length; i++) maxId = Math.max(maxId, val[i]!);
  const vocab = o.vocabSize ?? (json["vocab_size"] as number | undefined) ?? tok?.vocabSize ?? maxId + 1;
  if (maxId >= vocab) throw new InvalidArgumentError(`the data holds token id ${maxId}, outside the vocabulary of ${vocab}`);
  json["vocab_size"] = vocab;
  if (tok !== null) {
    if (tok.bosTokenId !== undefined) json["bos_token_id"] = tok.bosTokenId;
    if (tok.eosTokenId !== undefined) json["eos_token_id"] = tok.eosTokenId;
  }
  json["bos_token_id"] ??= 0;
  json["eos_token_id"] ??= Math.min(1, vocab - 1);
  const cfg = parseModelConfig(json);

  const replicas = o.parallel === "replicas" && o.threads > 1;
  setTrainThreads(replicas ? 1 : o.threads);
  const ops = opsFor(o.precision);
  let params = initParams(cfg, ops, o.seed, o.initStd);
  if (o.init !== undefined) loadParamsFrom(o.init, cfg, params);
  if (replicas) params = shareParams(cfg, params);
  const model = new TrainModel(cfg, params, ops);
  const trainer = new Trainer(model, { tokens }, o);
  const changedOnResume: string[] = [];
  if (o.resume) {
    if (o.checkpointDir === undefined) throw new InvalidArgumentError("--resume needs --checkpoint-dir");
    const state = trainer.loadCheckpoint(o.checkpointDir);
    if (JSON.stringify(state["modelConfig"]) !== JSON.stringify(json)) {
      throw new InvalidArgumentError(`${o.checkpointDir}: the checkpoint was trained with another model config`);
    }
    const before = (state["options"] ?? {}) as Record<string, unknown>;
    for (const k of Object.keys(DEFAULT_TRAIN_OPTIONS) as (keyof TrainOptions)[]) {
      // An option newer than the checkpoint ran as its default (mtpDepths, for one).
      const was = before[k] ?? DEFAULT_TRAIN_OPTIONS[k];
      if (JSON.stringify(was) !== JSON.stringify(o[k])) changedOnResume.push(`${k} ${JSON.stringify(was)} -> ${JSON.stringify(o[k])}`);
    }
    if (before["threads"] !== o.threads || before["parallel"] !== o.parallel) {
      if (o.parallel === "replicas" || before["parallel"] === "replicas")
        changedOnResume.push(`threads/parallel ${String(before["threads"])}/${String(before["parallel"])} -> ${o.threads}/${o.parallel}`);
    }
  }
  onInfo({ config: cfg, configJson: json, dataTokens: tokens.length, params: model.params.size, startStep: trainer.step, changedOnResume });
  const checkpoint = (): void => {
    if (o.checkpointDir === undefined) return;
    trainer.saveCheckpoint(o.checkpointDir, { modelConfig: json, data: o.data });
    onCheckpoint(o.checkpointDir, trainer.step);
  };
  const evaluate = (): void => {
    if (val !== null) onEval(trainer.evaluate(val, o.evalRows), trainer.step);
  };
  let last: StepStats | null = null;
  if (replicas) await trainer.startReplicas(json, o.threads);
  try {
    while (trainer.step < o.steps) {
      last = await trainer.trainStep();
      onStep(last);
      if (o.checkpointEvery > 0 && trainer.step % o.checkpointEvery === 0 && trainer.step < o.steps) checkpoint();
      if (o.evalEvery > 0 && trainer.step % o.evalEvery === 0 && trainer.step < o.steps) evaluate();
    }
  } finally {
    await trainer.close();
  }
  checkpoint();
  evaluate();
  if (o.out !== undefined) {
    saveHfModel(model, json, o.out, {
      fp8: o.fp8,
      maxShardBytes: o.maxShardBytes > 0 ? o.maxShardBytes : null,
      ...(tokDir !== undefined ? { tokenizerDir: tokDir } : {}),
      readme: [
        "# a model trained by `moela train`",
        "",
        `Config ${isTrainPresetName(o.config) ? `preset \`${o.config}\`` : `\`${o.config}\``}, data \`${o.data}\` (${tokens.length} tokens), ` +
          `${trainer.step} steps of ${o.batch} x ${o.seqLen} tokens, lr ${o.lr}, seed ${o.seed}, ${o.precision}` +
          (o.init !== undefined ? `, from the weights of \`${o.init}\`` : "") +
          (o.mtpOnly ? ", the MTP module only" : "") +
          (o.mtpTargets === "main" ? ", MTP targets the main head's top-1" : "") +
          (o.mtpDepths > 1 ? `, chained drafting to depth ${o.mtpDepths}` : "") +
          ".",
        last ? `Final training loss ${last.mainLoss.toFixed(4)} (MTP ${last.mtpLoss.toFixed(4)}).` : "",
        "",
        o.fp8
          ? "Weights: attention and MLP linears F8_E4M3 with 128x128 block scales, other weights BF16, e_score_correction_bias F32."
          : "Weights: BF16 (e_score_correction_bias F32).",
      ],
    });
  }
  return last;
}
