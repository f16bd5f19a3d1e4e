/**
 * `moela codec-study`: every dispatch codec's bytes per value and error on activations captured at
 * the MoE inputs of each --model (teacher-forced over fixed English text) and on synthetic data,
 * what each codec does to the model's logits, and the paper's LogFMT-8 vs E4M3 claim on each.
 * The study itself lives in @moela/moe-dispatch (codec-study.ts); this file loads, prints.
 */
import { existsSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { InvalidArgumentError } from "@moela/core";
import { DeepseekModel, Rng, parseKernelsName, setDefaultKernels } from "@moela/engine";
import {
  STUDY_CODECS,
  SYNTHETIC_DESCRIPTIONS,
  SYNTHETIC_KINDS,
  claimOnData,
  codecError,
  dataStats,
  logUniformActivations,
  studyModel,
  syntheticActivations,
  type ClaimOnData,
  type CodecError,
  type DataStats,
  type VariantResult,
  type ModelStudy,
  type TeacherForcedSeq,
} from "@moela/moe-dispatch";
import { Tokenizer } from "@moela/tokenizer";

export interface CodecStudyCliOptions {
  model: string[];
  sequences: number;
  context: number;
  steps: number;
  syntheticRows: number;
  syntheticCols: number;
  seed: number;
  threads: number;
  kernels: string;
  json?: boolean;
}

/** Plain English the teacher-forced runs read (written for this study; no licence attached). */
const TEXTS = [
  "The river rose slowly through the night, and by morning the lower fields were under water. " +
    "Farmers walked along the road with their dogs, looking at the brown flood and talking about the harvest. " +
    "Nobody had seen the water this high since the spring when the old bridge was carried away.",
  "In the first chapter the author explains why the city grew where it did: a deep harbour, a hill that was easy to defend, " +
    "and a road that joined the coast to the markets of the interior. Later chapters follow the trade in grain, wool and timber.",
  "She opened the letter at the kitchen table and read it twice before she said anything. " +
    "Her brother had found work in the north, he wrote, and he hoped to come home for a week at the end of the summer.",
  "The committee met on Tuesday to discuss the budget for the new school. Several members asked whether the building " +
    "could be finished before winter, and the architect promised a report with the costs of each part of the work.",
  "A small engine turns the wheel, and the wheel lifts water from the well into a wooden trough. " +
    "When the wind is strong the engine is not needed, because the mill on the hill does the same work for nothing.",
  "He had never liked the city in August. The streets were hot and empty, the shops closed early, " +
    "and the few people who stayed behind walked slowly in the shade as if they were waiting for something to happen.",
  "To make the bread, mix the flour with warm water and a little salt, then leave the dough to rise for two hours. " +
    "Shape it into loaves, bake them in a hot oven, and let them cool on the table before you cut them.",
  "The ship left the harbour at dawn with forty men on board. For three days the sea was calm, " +
    "but on the fourth a storm came from the west and the captain ordered the sails to be taken down.",
];

export type WeightsKind = "random" | "trained" | "unknown";

/**
 * What the checkpoint's README says it is: gen-tiny-model writes "random weights, not a trained model", moela
 * train "trained by `moela train`", and the bundled models' cards say "`moela train` trained". The generator's
 * whole phrase, since a trained model's card may mention random weights (of the test models beside it).
 */
export function weightsKind(dir: string): WeightsKind {
  const f = join(dir, "README.md");
  if (!existsSync(f)) return "unknown";
  const text = readFileSync(f, "utf8");
  if (/random weights, not a trained model/i.test(text)) return "random";
  if (/trained by `moela train`|`moela train` trained/i.test(text)) return "trained";
  return "unknown";
}

/** `sequences` teacher-forced sequences (sequence i starts from text i mod 8) of `context` + `steps` tokens from TEXTS (seeded ids without a tokenizer). */
export function studySequences(
  dir: string,
  vocab: number,
  sequences: number,
  context: number,
  steps: number,
  seed: number,
): { seqs: TeacherForcedSeq[]; source: string } {
  const need = context + steps;
  let ids: (i: number) => number[];
  let source: string;
  if (existsSync(join(dir, "tokenizer.json"))) {
    const tok = Tokenizer.fromDir(dir);
    ids = (i) => {
      // The texts in turn from the i-th, joined, until there are enough tokens.
      const parts: string[] = [];
      let out: number[] = [];
      for (let k = 0; out.length < need && k < 64; k++) {
        parts.push(TEXTS[(i + k) % TEXTS.length]!);
        out = tok.encode(parts.join(" "));
      }
      return out;
    };
    source = "fixed English text through the model's tokenizer";
  } else {
    const rng = new Rng(seed);
    ids = () => Array.from({ length: need }, () => 2 + Math.floor(rng.next() * (vocab - 2)));
    source = `seeded random token ids (seed ${seed}; the model has no tokenizer.json)`;
  }
  const seqs = Array.from({ length: sequences }, (_, i) => {
    const t = ids(i);
    if (t.length < need) throw new InvalidArgumentError(`the study texts give ${t.length} tokens, --context + --steps need ${need}`);
    return { context: t.slice(0, context), next: t.slice(context, need) };
  });
  return { seqs, source };
}

interface ModelReport {
  dir: string;
  weights: WeightsKind;
  tokens: string;
  study: ModelStudy;
}

/** Tile spans (binades) of the log-uniform sweep. */
const SWEEP_BINADES = [4, 8, 12, 16, 20, 24, 32, 40];
const SWEEP_CODECS = ["fp8-tile", "fp8-e5m2-tile", "logfmt8"];

interface SweepRow {
  binades: number;
  tileLog2Range: number;
  errors: CodecError[];
}

interface SyntheticReport {
  kind: string;
  description: string;
  seed: number;
  stats: DataStats;
  errors: CodecError[];
}

export interface CodecStudyReport {
  study: "moela codec-study";
  options: Omit<CodecStudyCliOptions, "json">;
  codecs: Array<{ name: string; label: string; wire: string | null; bytesPerValue: number }>;
  models: ModelReport[];
  synthetic: SyntheticReport[];
  /** Log-uniform magnitudes over a growing number of binades: where LogFMT-8 stops beating FP8. */
  rangeSweep: SweepRow[];
  claim: { data: ClaimOnData[]; outputs: Array<{ model: string; combine: string; e4m3: VariantResult; logfmt8: VariantResult }> };
}

const pct = (v: number): string => (v === 0 ? "0" : v < 1e-4 ? `${(100 * v).toExponential(1)}%` : `${(100 * v).toFixed(v < 0.01 ? 3 : 2)}%`);
const num = (v: number): string => (v === 0 ? "0" : Math.abs(v) < 1e-3 || Math.abs(v) >= 1e4 ? v.toExponential(2) : v.toPrecision(3));
const label = (name: string): string => STUDY_CODECS.find((c) => c.name === name)?.label ?? name;

function statsLine(s: DataStats): string {
  return (
    `${s.rows} x ${s.cols} values; rms ${num(s.rms)}, max |x| ${num(s.amax)}, kurtosis ${num(s.kurtosis)}, ` +
    `mean tile max/rms ${num(s.tileCrest)}, median tile log2(max/min |x|) ${num(s.tileLog2Range)}`
  );
}

function errorTable(errors: readonly CodecError[]): string {
  const lines = [
    "| codec | bytes/value | rel. RMS error | mean rel. error | max err / tile max | max abs err | nonzeros sent as 0 |",
    "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
  ];
  for (const e of errors) {
    if (e.codec === "f32") continue;
    lines.push(
      `| ${label(e.codec)} | ${e.bytesPerValue.toFixed(4)} | ${pct(e.relRms)} | ${pct(e.meanRelErr)} | ${pct(e.maxTileRelErr)} | ${num(e.maxAbsErr)} | ${pct(e.flushedToZero)} |`,
    );
  }
  return lines.join("\n");
}

function outputTable(m: ModelStudy): string {
  const lines = [
    "| dispatch | combine | top-1 agreement | routed experts as exact | mean abs logit diff | max abs logit diff | mean KL (nats) |",
    "| --- | --- | ---: | ---: | ---: | ---: | ---: |",
  ];
  for (const o of m.outputs) {
    lines.push(
      `| ${label(o.dispatch)} | ${label(o.combine)} | ${pct(o.top1Agreement)} | ${pct(o.routingAgreement)} | ${num(o.meanAbsDiff)} | ${num(o.maxAbsDiff)} | ${num(o.meanKl)} |`,
    );
  }
  return lines.join("\n");
}

export function formatCodecStudy(r: CodecStudyReport): string {
  const out: string[] = [];
  out.push(
    "## Codecs",
    "",
    "Bytes per value include the per-tile metadata (FP8: one float32 scale per 1x128 tile; LogFMT: two float32, lo and hi). " +
      "On the wire: f32, bf16, fp8-tile (E4M3) and logfmt8; E5M2 and LogFMT-6/7/9/10 are study-only (the proto has no dtype for them).",
    "",
  );
  for (const m of r.models) {
    const s = m.study;
    const weights =
      m.weights === "random" ? "RANDOM weights (not a trained model)" : m.weights === "trained" ? "trained weights" : "weights of unknown origin (no README)";
    out.push(`## ${m.dir}: ${weights}`, "");
    out.push(
      `Hidden ${s.hidden}, vocabulary ${s.vocab}; ${s.sequences} sequences of ${s.contextTokens} context tokens + ${s.steps} teacher-forced decode steps (${m.tokens}).`,
      "",
    );
    out.push(`### Activations at the MoE inputs (every MoE layer pooled)`, "", statsLine(s.activations.stats), "", errorTable(s.activations.errors), "");
    out.push(
      `### Effect on the logits (against the exact profile; latent KV f32, shared expert and gate exact; ${s.outputs[0]?.pairs ?? 0} steps x sequences; ` +
        `exact logits: RMS ${num(s.exactLogitRms)}, median top-1 margin ${num(s.exactTop1Margin)})`,
      "",
      outputTable(s),
      "",
    );
  }
  out.push("## Synthetic activations", "");
  for (const d of r.synthetic) {
    out.push(`### ${d.kind}: ${d.description} (seed ${d.seed})`, "", statsLine(d.stats), "", errorTable(d.errors), "");
  }
  out.push("## Range sweep: random signs, magnitudes log-uniform over B binades (what each tile must span)", "");
  out.push(
    "| binades | median tile log2(max/min) | E4M3 rel. RMS | E5M2 rel. RMS | LogFMT-8 rel. RMS | E4M3 mean rel. | E5M2 mean rel. | LogFMT-8 mean rel. | E4M3 sent as 0 | LogFMT-8 sent as 0 |",
    "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
  );
  for (const w of r.rangeSweep) {
    const [e4, e5, l8] = SWEEP_CODECS.map((n) => w.errors.find((e) => e.codec === n)!);
    out.push(
      `| ${w.binades} | ${num(w.tileLog2Range)} | ${pct(e4!.relRms)} | ${pct(e5!.relRms)} | ${pct(l8!.relRms)} | ${pct(e4!.meanRelErr)} | ${pct(e5!.meanRelErr)} | ${pct(l8!.meanRelErr)} | ` +
        `${pct(e4!.flushedToZero)} | ${pct(l8!.flushedToZero)} |`,
    );
  }
  out.push("");
  out.push("## The claim: LogFMT-8 vs FP8 E4M3 (both 1x128 tiles)", "");
  out.push(
    "| data | E4M3 rel. RMS | LogFMT-8 rel. RMS | E4M3 / LogFMT-8 | E4M3 mean rel. | LogFMT-8 mean rel. | narrowest LogFMT with rel. RMS <= E4M3 |",
    "| --- | ---: | ---: | ---: | ---: | ---: | --- |",
  );
  for (const c of r.claim.data) {
    out.push(
      `| ${c.data} | ${pct(c.e4m3RelRms)} | ${pct(c.logfmt8RelRms)} | ${c.ratio.toFixed(2)}x | ${pct(c.e4m3MeanRelErr)} | ${pct(c.logfmt8MeanRelErr)} | ${c.narrowestLogFmtAsGood === null ? "none" : label(c.narrowestLogFmtAsGood)} |`,
    );
  }
  out.push("");
  out.push(
    "| model | combine | E4M3 top-1 | LogFMT-8 top-1 | E4M3 experts as exact | LogFMT-8 experts as exact | E4M3 mean KL | LogFMT-8 mean KL |",
    "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
  );
  for (const o of r.claim.outputs) {
    out.push(
      `| ${o.model} | ${label(o.combine)} | ${pct(o.e4m3.top1Agreement)} | ${pct(o.logfmt8.top1Agreement)} | ${pct(o.e4m3.routingAgreement)} | ${pct(o.logfmt8.routingAgreement)} | ` +
        `${num(o.e4m3.meanKl)} | ${num(o.logfmt8.meanKl)} |`,
    );
  }
  const wins = r.claim.data.filter((c) => c.ratio > 1).length;
  const ratios = r.claim.data.map((c) => c.ratio);
  out.push(
    "",
    `LogFMT-8 has the lower relative RMS error on ${wins} of ${r.claim.data.length} data sets ` +
      `(E4M3 error / LogFMT-8 error from ${Math.min(...ratios).toFixed(2)}x to ${Math.max(...ratios).toFixed(2)}x).`,
    "",
  );
  return out.join("\n");
}

function positive(name: string, v: number): void {
  if (!(Number.isInteger(v) && v >= 1)) throw new InvalidArgumentError(`${name} must be a positive integer, got ${v}`);
}

export async function runCodecStudy(o: CodecStudyCliOptions): Promise<number> {
  positive("--sequences", o.sequences);
  positive("--context", o.context);
  positive("--steps", o.steps);
  positive("--synthetic-rows", o.syntheticRows);
  positive("--synthetic-cols", o.syntheticCols);
  positive("--threads", o.threads);
  if (o.model.length === 0) throw new InvalidArgumentError("give at least one --model");
  setDefaultKernels(parseKernelsName(o.kernels));
  const log = (s: string): void => {
    process.stderr.write(`${s}\n`);
  };

  const models: ModelReport[] = [];
  for (const dir of o.model) {
    if (!existsSync(join(dir, "config.json"))) throw new InvalidArgumentError(`--model ${dir}: no config.json there`);
    const model = DeepseekModel.load(dir, { kvDtype: "f32", threads: o.threads });
    try {
      const { seqs, source } = studySequences(dir, model.config.vocabSize, o.sequences, o.context, o.steps, o.seed);
      const started = performance.now();
      const study = await studyModel(model, seqs, o.steps, {
        onRun: (name, i, total) => log(`codec-study ${dir}: run ${i + 1}/${total} (${name}) at ${((performance.now() - started) / 1000).toFixed(1)} s`),
      });
      models.push({ dir, weights: weightsKind(dir), tokens: source, study });
    } finally {
      await model.close();
    }
  }

  const synthetic: SyntheticReport[] = SYNTHETIC_KINDS.map((kind, i) => {
    const seed = o.seed + i;
    const x = syntheticActivations(kind, o.syntheticRows, o.syntheticCols, seed);
    return {
      kind,
      description: SYNTHETIC_DESCRIPTIONS[kind],
      seed,
      stats: dataStats(x, o.syntheticRows, o.syntheticCols),
      errors: STUDY_CODECS.map((c) => codecError(c, x, o.syntheticRows, o.syntheticCols)),
    };
  });

  const sweepCodecs = STUDY_CODECS.filter((c) => SWEEP_CODECS.includes(c.name));
  const rangeSweep: SweepRow[] = SWEEP_BINADES.map((binades) => {
    const x = logUniformActivations(o.syntheticRows, o.syntheticCols, binades, o.seed);
    return {
      binades,
      tileLog2Range: dataStats(x, o.syntheticRows, o.syntheticCols).tileLog2Range,
      errors: sweepCodecs.map((c) => codecError(c, x, o.syntheticRows, o.syntheticCols)),
    };
  });

  const report: CodecStudyReport = {
    study: "moela codec-study",
    options: {
      model: o.model,
      sequences: o.sequences,
      context: o.context,
      steps: o.steps,
      syntheticRows: o.syntheticRows,
      syntheticCols: o.syntheticCols,
      seed: o.seed,
      threads: o.threads,
      kernels: o.kernels,
    },
    codecs: STUDY_CODECS.map((c) => ({ name: c.name, label: c.label, wire: c.dispatchCodec, bytesPerValue: c.bytesPerValue(o.syntheticCols) })),
    models,
    synthetic,
    rangeSweep,
    claim: {
      data: [
        ...models.map((m) => claimOnData(`${m.dir} MoE inputs (${m.weights} weights)`, m.study.activations.errors)),
        ...synthetic.map((s) => claimOnData(`synthetic ${s.kind}`, s.errors)),
      ],
      outputs: models.flatMap((m) =>
        ["bf16", "f32"].flatMap((combine) => {
          const e4 = m.study.outputs.find((x) => x.dispatch === "fp8-tile" && x.combine === combine);
          const l8 = m.study.outputs.find((x) => x.dispatch === "logfmt8" && x.combine === combine);
          return e4 && l8 ? [{ model: m.dir, combine, e4m3: e4, logfmt8: l8 }] : [];
        }),
      ),
    },
  };
  process.stdout.write(o.json ? `${JSON.stringify(report, null, 2)}\n` : formatCodecStudy(report));
  return 0;
}
