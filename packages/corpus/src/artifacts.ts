/**
 * Everything a training run needs from the corpus, written into one folder:
 *   tokenizer.json, tokenizer_config.json   the trained tokenizer (copy both next to the model's config.json)
 *   train.bin, validation.bin, test.bin     token ids, uint16 little-endian; each document is <bos> text <eos>,
 *                                           documents back to back in the split's order
 *   corpus.json                             source package, split and tokenizer settings, each document's offset
 *                                           and length in its .bin, and the stats below
 * The tokenizer is trained on the train split only. Ids are produced by packages/tokenizer (the serving code), and
 * every document is checked to decode back to its exact text.
 */
import { mkdirSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { CheckpointError } from "@moela/core";
import { TOKENIZER_CONFIG_JSON, TOKENIZER_JSON, Tokenizer } from "@moela/tokenizer";
import { bigramBaseline, type BigramBaseline } from "./bigram.js";
import { BROWN_PACKAGE, loadBrownDocuments, type CorpusDocument } from "./brown.js";
import { DEFAULT_SPLIT_SEED, SPLIT_NAMES, splitDocuments, type SplitName } from "./splits.js";
import { DEFAULT_VOCAB_SIZE, trainTokenizer } from "./tokenizer-files.js";

export const MANIFEST_JSON = "corpus.json";

export interface BuildArtifactsOptions {
  outDir: string;
  vocabSize?: number;
  modelMaxLength?: number;
  seed?: string;
  validation?: number;
  test?: number;
  /** Stage progress: `done` of `total` units (merges while training, documents while encoding). */
  onProgress?: (stage: "train-tokenizer" | "encode", done: number, total: number) => void;
}

export interface SplitStats {
  documents: number;
  /** UTF-8 bytes of the documents' text (separators not counted). */
  bytes: number;
  /** Token ids written, bos and eos included. */
  tokens: number;
  /** bytes / (tokens - 2 per document): the text's own tokens. */
  bytesPerToken: number;
}

export interface ArtifactStats {
  source: { package: string; version: string; license: string };
  vocabSize: number;
  mergeCount: number;
  /** Cleaned corpus bytes, all splits. */
  corpusBytes: number;
  splits: Record<SplitName, SplitStats>;
  bigram: BigramBaseline;
  /** Seconds spent training the tokenizer (not in corpus.json, which is byte-identical run to run). */
  tokenizerTrainSeconds: number;
}

interface DocumentEntry {
  id: string;
  category: string;
  /** First id of the document (its bos) in the split's .bin, in tokens. */
  offset: number;
  /** Tokens, bos and eos included. */
  length: number;
}

function writeUint16(path: string, ids: readonly number[]): void {
  const buf = Buffer.alloc(ids.length * 2);
  for (let i = 0; i < ids.length; i++) buf.writeUInt16LE(ids[i] as number, i * 2);
  writeFileSync(path, buf);
}

export function buildArtifacts(options: BuildArtifactsOptions): ArtifactStats {
  const vocabSize = options.vocabSize ?? DEFAULT_VOCAB_SIZE;
  const seed = options.seed ?? DEFAULT_SPLIT_SEED;
  const validation = options.validation ?? 0.05;
  const test = options.test ?? 0.05;
  const splits = splitDocuments(loadBrownDocuments(), { seed, validation, test });

  const t0 = performance.now();
  const files = trainTokenizer(
    splits.train.map((d) => d.text),
    {
      vocabSize,
      ...(options.modelMaxLength !== undefined ? { modelMaxLength: options.modelMaxLength } : {}),
      onProgress: (done, total) => options.onProgress?.("train-tokenizer", done, total),
    },
  );
  const tokenizerTrainSeconds = (performance.now() - t0) / 1000;

  mkdirSync(options.outDir, { recursive: true });
  writeFileSync(join(options.outDir, TOKENIZER_JSON), `${JSON.stringify(files.tokenizerJson, null, 2)}\n`);
  writeFileSync(join(options.outDir, TOKENIZER_CONFIG_JSON), `${JSON.stringify(files.tokenizerConfig, null, 2)}\n`);
  // Read back through the serving code: the ids below are the ids the platform will produce.
  const tokenizer = Tokenizer.fromDir(options.outDir);
  const bos = tokenizer.bosTokenId;
  const eos = tokenizer.eosTokenId;
  if (bos === undefined || eos === undefined) throw new CheckpointError(options.outDir, "tokenizer has no bos or eos");

  const totalDocs = SPLIT_NAMES.reduce((n, s) => n + splits[s].length, 0);
  let encodedDocs = 0;
  const sequences: Record<SplitName, number[][]> = { train: [], validation: [], test: [] };
  const entries: Record<SplitName, DocumentEntry[]> = { train: [], validation: [], test: [] };
  const stats = {} as Record<SplitName, SplitStats>;
  for (const split of SPLIT_NAMES) {
    const ids: number[] = [];
    let bytes = 0;
    for (const doc of splits[split] as CorpusDocument[]) {
      const body = tokenizer.encode(doc.text, { addSpecialTokens: false });
      if (tokenizer.decode(body) !== doc.text) {
        throw new CheckpointError(join(options.outDir, TOKENIZER_JSON), `does not round-trip document ${doc.id}`);
      }
      const seq = [bos, ...body, eos];
      entries[split].push({ id: doc.id, category: doc.category, offset: ids.length, length: seq.length });
      for (const id of seq) ids.push(id);
      sequences[split].push(seq);
      bytes += Buffer.byteLength(doc.text, "utf8");
      options.onProgress?.("encode", ++encodedDocs, totalDocs);
    }
    writeUint16(join(options.outDir, `${split}.bin`), ids);
    const textTokens = ids.length - 2 * splits[split].length;
    stats[split] = {
      documents: splits[split].length,
      bytes,
      tokens: ids.length,
      bytesPerToken: textTokens > 0 ? bytes / textTokens : 0,
    };
  }

  const result: Omit<ArtifactStats, "tokenizerTrainSeconds"> = {
    source: { package: BROWN_PACKAGE.name, version: BROWN_PACKAGE.version, license: BROWN_PACKAGE.license },
    vocabSize: files.vocabSize,
    mergeCount: files.mergeCount,
    corpusBytes: SPLIT_NAMES.reduce((n, s) => n + stats[s].bytes, 0),
    splits: stats,
    bigram: bigramBaseline(files.vocabSize, sequences),
  };
  const manifest = {
    ...result,
    split: { seed, validation, test, by: "document", hash: "sha256(seed:id)" },
    tokens: {
      dtype: "uint16",
      endianness: "little",
      layout: "each document is <bos> text <eos>, documents back to back",
      bos_token_id: bos,
      eos_token_id: eos,
      files: Object.fromEntries(SPLIT_NAMES.map((s) => [s, `${s}.bin`])),
    },
    documents: entries,
  };
  writeFileSync(join(options.outDir, MANIFEST_JSON), `${JSON.stringify(manifest, null, 2)}\n`);
  return { ...result, tokenizerTrainSeconds };
}
