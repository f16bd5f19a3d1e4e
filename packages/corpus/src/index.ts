export { BROWN_PACKAGE, brownPackageDir, cleanBrownText, detokenize, loadBrownDocuments, normalizeText } from "./brown.js";
export type { CorpusDocument } from "./brown.js";
export { DEFAULT_SPLIT_SEED, DOCUMENT_SEPARATOR, SPLIT_NAMES, loadCorpus, splitDocuments, splitText } from "./splits.js";
export type { CorpusSplits, SplitName, SplitOptions } from "./splits.js";
export { trainBpe } from "./bpe.js";
export type { BpeModel, BpeTrainOptions } from "./bpe.js";
export {
  BOS_TOKEN,
  CHAT_TEMPLATE,
  DECODER,
  EOS_TOKEN,
  LEADING_SPECIAL_TOKENS,
  NORMALIZER,
  PAD_TOKEN,
  POST_PROCESSOR,
  PRE_TOKENIZER,
  TRAILING_SPECIAL_TOKENS,
} from "./deepseek-v3.js";
export type { SpecialTokenSpec } from "./deepseek-v3.js";
export { DEFAULT_VOCAB_SIZE, countWords, createPreTokenizer, trainTokenizer } from "./tokenizer-files.js";
export type { TokenizerFiles, TrainTokenizerOptions } from "./tokenizer-files.js";
export { BigramModel, DEFAULT_K_GRID, bigramBaseline } from "./bigram.js";
export type { BigramBaseline, TokenSequences } from "./bigram.js";
export { MANIFEST_JSON, buildArtifacts } from "./artifacts.js";
export type { ArtifactStats, BuildArtifactsOptions, SplitStats } from "./artifacts.js";
