export { BROWN_PACKAGE, brownPackageDir, cleanBrownText, detokenize, loadBrownDocuments, normalizeText } from "./brown.js";
export type { CorpusDocument } from "./brown.js";
export { DEFAULT_SPLIT_SEED, DOCUMENT_SEPARATOR, SPLIT_NAMES, loadCorpus, splitDocuments, splitText } from "./splits.js";
export type { CorpusSplits, SplitName, SplitOptions } from "./splits.js";
export { trainBpe } from "./bpe.js";
export type { BpeModel, BpeTrainOptions } from "./bpe.js";
