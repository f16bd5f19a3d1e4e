/** `moela train`: flags to @moela/train's runTraining, with a progress bar (loss, tokens/s) on stderr. */
import * as path from "node:path";
import cliProgress from "cli-progress";
import { InvalidArgumentError } from "@moela/core";
import { MAX_SPECULATIVE_TOKENS } from "@moela/engine";
import { DEFAULT_RUN_OPTIONS, runTraining, type Precision, type RunOptions, type StepStats } from "@moela/train";

export interface TrainCliOptions {
  config?: string;
  init?: string;
  mtpTargets: string;
  mtpOnly?: boolean;
  mtpDepths: number;
  data: string;
  tokenizer?: string;
  vocabSize?: number;
  steps: number;
  batch: number;
  seqLen: number;
  lr: number;
  minLrRatio: number;
  warmup: number;
  weightDecay: number;
  clip: number;
  mtpLambda: number;
  balanceAlpha: number;
  biasUpdateSpeed: number;
  seed: number;
  threads: number;
  parallel: string;
  precision: string;
  initStd: number;
  checkpointDir?: string;
  checkpointEvery: number;
  valData?: string;
  evalEvery: number;
  evalRows: number;
  resume?: boolean;
  out?: string;
  fp8: boolean;
  maxShardBytes: number;
  json?: boolean;
}

export async function runTrain(o: TrainCliOptions): Promise<number> {
  if (o.parallel !== "kernels" && o.parallel !== "replicas") throw new InvalidArgumentError(`--parallel must be kernels or replicas, got ${o.parallel}`);
  if (o.precision !== "f32" && o.precision !== "f64") throw new InvalidArgumentError(`--precision must be f32 or f64, got ${o.precision}`);
  if (o.mtpTargets !== "data" && o.mtpTargets !== "main") throw new InvalidArgumentError(`--mtp-targets must be data or main, got ${o.mtpTargets}`);
  if (o.mtpOnly === true && o.init === undefined && o.resume !== true)
    throw new InvalidArgumentError("--mtp-only trains the MTP module of a trained model: give it with --init");
  if (!(Number.isInteger(o.mtpDepths) && o.mtpDepths >= 1 && o.mtpDepths <= MAX_SPECULATIVE_TOKENS))
    throw new InvalidArgumentError(`--mtp-depths must be an integer from 1 to ${MAX_SPECULATIVE_TOKENS}, got ${o.mtpDepths}`);
  if (o.mtpDepths > 1 && (o.mtpOnly !== true || o.mtpTargets !== "main"))
    throw new InvalidArgumentError("--mtp-depths above 1 trains chained drafts of a trained model: give it with --mtp-only --mtp-targets main");
  for (const [k, v] of [
    ["--steps", o.steps],
    ["--batch", o.batch],
    ["--seq-len", o.seqLen],
    ["--threads", o.threads],
  ] as const) {
    if (!(Number.isInteger(v) && v >= 1)) throw new InvalidArgumentError(`${k} must be a positive integer, got ${v}`);
  }
  if (!(Number.isSafeInteger(o.maxShardBytes) && o.maxShardBytes >= 0))
    throw new InvalidArgumentError(`--max-shard-bytes must be 0 (one file) or a positive number of bytes, got ${o.maxShardBytes}`);
  const opts: RunOptions = {
    ...DEFAULT_RUN_OPTIONS,
    ...o,
    config: o.config ?? (o.init !== undefined ? path.join(o.init, "config.json") : DEFAULT_RUN_OPTIONS.config),
    mtpTargets: o.mtpTargets,
    mtpOnly: o.mtpOnly === true,
    precision: o.precision as Precision,
    parallel: o.parallel,
    resume: o.resume === true,
  };
  const tty = process.stderr.isTTY === true && o.json !== true;
  const bar = tty
    ? new cliProgress.SingleBar(
        {
          format: "{bar} {value}/{total} steps | loss {loss} | mtp {mtp} | {tps} tok/s | lr {lr} | eta {eta_formatted}",
          stream: process.stderr,
          hideCursor: true,
          etaBuffer: 20,
        },
        cliProgress.Presets.shades_classic,
      )
    : null;
  let started = 0;
  let startStep = 0;
  let tokens = 0;
  let ema = NaN;
  const onStep = (s: StepStats): void => {
    tokens += s.tokens;
    const secs = (performance.now() - started) / 1000;
    const tps = tokens / secs;
    ema = Number.isNaN(ema) ? s.mainLoss : 0.9 * ema + 0.1 * s.mainLoss;
    const fields = { loss: ema.toFixed(3), mtp: s.mtpLoss.toFixed(3), tps: tps.toFixed(0), lr: s.lr.toExponential(2) };
    if (o.json === true) {
      process.stdout.write(
        JSON.stringify({
          step: s.step,
          loss: s.loss,
          mainLoss: s.mainLoss,
          mtpLoss: s.mtpLoss,
          ...(o.mtpDepths > 1 ? { mtpChainLoss: s.mtpChainLoss } : {}),
          balanceLoss: s.balanceLoss,
          lr: s.lr,
          gradNorm: s.gradNorm,
          maxLoadRatio: s.maxLoadRatio,
          tokensPerSecond: tps,
        }) + "\n",
      );
    } else if (bar) bar.update(s.step, fields);
    else if (s.step === startStep + 1 || s.step % 10 === 0 || s.step === o.steps) {
      process.stderr.write(
        `step ${s.step}/${o.steps} loss ${fields.loss} mtp ${fields.mtp} ${fields.tps} tok/s lr ${fields.lr} grad-norm ${s.gradNorm.toFixed(3)} max/mean load ${s.maxLoadRatio.toFixed(2)}\n`,
      );
    }
  };
  const last = await runTraining(
    opts,
    onStep,
    (info) => {
      startStep = info.startStep;
      process.stderr.write(
        `training ${info.config.numHiddenLayers} layers, hidden ${info.config.hiddenSize}, ${info.config.nRoutedExperts} experts, ` +
          `vocab ${info.config.vocabSize}: ${(info.params / 1e6).toFixed(2)}M parameters on ${info.dataTokens} tokens, ` +
          `${o.threads} thread(s) (${o.parallel}), ${o.precision}${info.startStep > 0 ? `, resumed at step ${info.startStep}` : ""}\n`,
      );
      if (info.changedOnResume.length > 0) {
        process.stderr.write(
          `warning: resuming with options that differ from the checkpoint's, so the run will not match an uninterrupted one: ${info.changedOnResume.join(", ")}\n`,
        );
      }
      started = performance.now();
      bar?.start(o.steps, info.startStep, { loss: "-", mtp: "-", tps: "-", lr: "-" });
    },
    (dir, step) => {
      if (!bar) process.stderr.write(`checkpoint at step ${step} in ${dir}\n`);
    },
    (e, step) => {
      const line = `eval at step ${step}: loss ${e.mainLoss.toFixed(4)} (ppl ${Math.exp(e.mainLoss).toFixed(1)}), top-1 ${(100 * e.mainAccuracy).toFixed(1)}%; MTP loss ${e.mtpLoss.toFixed(4)}, top-1 ${(100 * e.mtpAccuracy).toFixed(1)}%${
        e.mtpChainAccuracy !== null ? `; chained depths' loss ${e.mtpChainLoss!.toFixed(4)}, top-1 ${(100 * e.mtpChainAccuracy).toFixed(1)}%` : ""
      } (${e.positions} positions)`;
      if (o.json === true) process.stdout.write(JSON.stringify({ eval: step, ...e }) + "\n");
      else if (bar) process.stderr.write(`\n${line}\n`);
      else process.stderr.write(line + "\n");
    },
  );
  bar?.stop();
  if (last !== null)
    process.stderr.write(
      `done: step ${last.step}, loss ${last.mainLoss.toFixed(4)}, mtp loss ${last.mtpLoss.toFixed(4)}, ${(tokens / ((performance.now() - started) / 1000)).toFixed(0)} tok/s\n`,
    );
  if (o.out !== undefined) process.stderr.write(`model saved to ${o.out}\n`);
  return 0;
}
