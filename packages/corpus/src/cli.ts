/**
 * Builds the corpus artifacts (tokenizer files, tokenised splits, corpus.json) and prints the stats:
 *   npm run build:artifacts -w packages/corpus -- --out /tmp/moela-corpus
 * Progress goes to stderr (a bar on a terminal, tenths otherwise); stats go to stdout.
 */
import cliProgress from "cli-progress";
import { Command, InvalidArgumentError as CommanderArgError } from "commander";
import { buildArtifacts, MANIFEST_JSON } from "./artifacts.js";
import { DEFAULT_SPLIT_SEED } from "./splits.js";
import { DEFAULT_VOCAB_SIZE } from "./tokenizer-files.js";

function positiveInt(value: string): number {
  const n = Number(value);
  if (!Number.isInteger(n) || n <= 0) throw new CommanderArgError("must be a positive integer");
  return n;
}

function fraction(value: string): number {
  const n = Number(value);
  if (!(n >= 0 && n < 0.5)) throw new CommanderArgError("must be a number in [0, 0.5)");
  return n;
}

const program = new Command()
  .name("build-corpus")
  .description("Clean and split the Brown corpus, train the byte-level BPE tokenizer, tokenise the splits")
  .requiredOption("--out <dir>", "output folder (created if missing)")
  .option("--vocab-size <n>", "ids in all, special tokens included", positiveInt, DEFAULT_VOCAB_SIZE)
  .option("--model-max-length <n>", "tokenizer_config.json model_max_length", positiveInt, 4096)
  .option("--seed <text>", "split seed", DEFAULT_SPLIT_SEED)
  .option("--validation <fraction>", "documents held out for validation", fraction, 0.05)
  .option("--test <fraction>", "documents held out for test", fraction, 0.05)
  .parse();

const o = program.opts<{
  out: string;
  vocabSize: number;
  modelMaxLength: number;
  seed: string;
  validation: number;
  test: number;
}>();

const STAGE_LABEL = { "train-tokenizer": "merges", encode: "documents" } as const;

function main(): void {
  const started = performance.now();
  const tty = process.stderr.isTTY === true;
  let bar: cliProgress.SingleBar | null = null;
  let stage = "";
  let lastTenth = -1;
  console.error(`building corpus artifacts into ${o.out}`);
  const stats = buildArtifacts({
    outDir: o.out,
    vocabSize: o.vocabSize,
    modelMaxLength: o.modelMaxLength,
    seed: o.seed,
    validation: o.validation,
    test: o.test,
    onProgress: (next, done, total) => {
      if (next !== stage) {
        bar?.stop();
        stage = next;
        lastTenth = -1;
        if (tty) {
          bar = new cliProgress.SingleBar(
            { format: `${next.padEnd(15)} {bar} {percentage}% | {value}/{total} ${STAGE_LABEL[next]}`, stream: process.stderr, hideCursor: true },
            cliProgress.Presets.shades_classic,
          );
          bar.start(total, 0);
        }
      }
      if (bar) {
        bar.update(done);
      } else {
        const tenth = Math.floor((done * 10) / Math.max(total, 1));
        if (tenth !== lastTenth) {
          lastTenth = tenth;
          console.error(`  ${next}: ${done}/${total} ${STAGE_LABEL[next]}`);
        }
      }
    },
  });
  (bar as cliProgress.SingleBar | null)?.stop();

  const s = stats.splits;
  console.log(`source        ${stats.source.package}@${stats.source.version} (${stats.source.license})`);
  console.log(`corpus bytes  ${stats.corpusBytes} (cleaned UTF-8, all splits)`);
  console.log(`tokenizer     ${stats.vocabSize} ids, ${stats.mergeCount} merges, trained on train in ${stats.tokenizerTrainSeconds.toFixed(1)} s`);
  for (const name of ["train", "validation", "test"] as const) {
    const x = s[name];
    console.log(
      `${name.padEnd(13)} ${String(x.documents).padStart(3)} docs ${String(x.bytes).padStart(8)} bytes ` +
        `${String(x.tokens).padStart(8)} tokens  ${x.bytesPerToken.toFixed(3)} bytes/token`,
    );
  }
  console.log(
    `bigram        add-k (k=${stats.bigram.k}, chosen on validation): validation ppl ${stats.bigram.validationPerplexity.toFixed(2)}, ` +
      `test ppl ${stats.bigram.testPerplexity.toFixed(2)} over ${stats.bigram.testPredicted} tokens`,
  );
  console.log(
    `wrote ${o.out}/{tokenizer.json,tokenizer_config.json,train.bin,validation.bin,test.bin,${MANIFEST_JSON}} in ${((performance.now() - started) / 1000).toFixed(1)} s`,
  );
}

main();
