/**
 * A DeepSeek-V3-shaped tokenizer trained on our own text: byte-level BPE with DeepSeek-V3's pre-tokenizer, decoder,
 * special tokens and chat template, written as the two files a Hugging Face checkpoint folder carries
 * (tokenizer.json, tokenizer_config.json) and that packages/tokenizer loads.
 *
 * Id layout (vocabSize V, default 4096), after DeepSeek-V3's:
 *   0, 1, 2        bos, eos, pad (in the BPE vocab and in added_tokens)
 *   3 .. 258       the 256 byte symbols in byte order (id = 3 + byte)
 *   259 .. V-12    merged tokens, in merge order
 *   V-11 .. V-1    <｜User｜>, <｜Assistant｜> and the nine tool-call markers (added tokens only)
 */
import { InvalidArgumentError } from "@moela/core";
import { byteLevelBpeModel, createDeepseekV3PreTokenizer } from "@moela/tokenizer";
import { trainBpe } from "./bpe.js";
import {
  BOS_TOKEN,
  CHAT_TEMPLATE,
  DECODER,
  EOS_TOKEN,
  LEADING_SPECIAL_TOKENS,
  NORMALIZER,
  POST_PROCESSOR,
  PRE_TOKENIZER,
  TRAILING_SPECIAL_TOKENS,
  type SpecialTokenSpec,
} from "./deepseek-v3.js";

export const DEFAULT_VOCAB_SIZE = 4096;

export interface TrainTokenizerOptions {
  /** All ids, special tokens included. Default 4096. */
  vocabSize?: number;
  /** tokenizer_config.json's model_max_length. Default 4096. */
  modelMaxLength?: number;
  /** A pair seen fewer times is never merged. Default 2. */
  minFrequency?: number;
  onProgress?: (merges: number, targetMerges: number) => void;
}

export interface TokenizerFiles {
  /** Contents of tokenizer.json (Hugging Face tokenizers format). */
  tokenizerJson: Record<string, unknown>;
  /** Contents of tokenizer_config.json (transformers format). */
  tokenizerConfig: Record<string, unknown>;
  /** Number of ids, special tokens included. */
  vocabSize: number;
  /** Merges learned (fewer than asked for only if the text ran out of pairs seen minFrequency times). */
  mergeCount: number;
}

/** The DeepSeek-V3 pre-tokenizer, run by the same library code the runtime uses, so training sees its pieces. */
export const createPreTokenizer = createDeepseekV3PreTokenizer;

/** Counts the pre-tokenizer's pieces (in byte-level symbols) over `texts`. */
export function countWords(texts: Iterable<string>): Map<string, number> {
  const preTokenize = createPreTokenizer();
  const counts = new Map<string, number>();
  for (const text of texts) {
    for (const piece of preTokenize(text)) counts.set(piece, (counts.get(piece) ?? 0) + 1);
  }
  return counts;
}

function addedToken(id: number, spec: SpecialTokenSpec): Record<string, unknown> {
  return {
    id,
    content: spec.content,
    single_word: false,
    lstrip: false,
    rstrip: false,
    normalized: spec.normalized,
    special: spec.special,
  };
}

function configToken(content: string): Record<string, unknown> {
  return { __type: "AddedToken", content, lstrip: false, normalized: true, rstrip: false, single_word: false };
}

/** Trains the BPE on `texts` (documents, or any pieces of text) and builds both files. */
export function trainTokenizer(texts: Iterable<string>, options: TrainTokenizerOptions = {}): TokenizerFiles {
  const vocabSize = options.vocabSize ?? DEFAULT_VOCAB_SIZE;
  const trailing = TRAILING_SPECIAL_TOKENS.length;
  if (!Number.isInteger(vocabSize) || vocabSize < 256 + LEADING_SPECIAL_TOKENS.length + trailing) {
    throw new InvalidArgumentError(`vocabSize ${vocabSize} leaves no room for the 256 bytes and the special tokens`);
  }
  const model = trainBpe(countWords(texts), {
    vocabSize: vocabSize - trailing,
    initialTokens: LEADING_SPECIAL_TOKENS.map((t) => t.content),
    ...(options.minFrequency !== undefined ? { minFrequency: options.minFrequency } : {}),
    ...(options.onProgress !== undefined ? { onProgress: options.onProgress, progressEvery: 50 } : {}),
  });
  // Trailing specials go right after the last learned token, so an early stop leaves no gap in the ids.
  const firstTrailing = model.vocab.size;
  const addedTokens = [
    ...LEADING_SPECIAL_TOKENS.map((spec, i) => addedToken(i, spec)),
    ...TRAILING_SPECIAL_TOKENS.map((spec, i) => addedToken(firstTrailing + i, spec)),
  ];
  const tokenizerJson = {
    version: "1.0",
    truncation: null,
    padding: null,
    added_tokens: addedTokens,
    normalizer: NORMALIZER,
    pre_tokenizer: PRE_TOKENIZER,
    post_processor: POST_PROCESSOR,
    decoder: DECODER,
    // Merges as "left right": byte-level symbols never contain a space, so the string form is unambiguous (DeepSeek-V3's).
    model: byteLevelBpeModel(
      Object.fromEntries(model.vocab),
      model.merges.map(([l, r]) => `${l} ${r}`),
    ),
  };
  // DeepSeek-V3's tokenizer_config.json, field for field (its pad_token is the eos token too).
  const tokenizerConfig = {
    add_bos_token: true,
    add_eos_token: false,
    bos_token: configToken(BOS_TOKEN),
    clean_up_tokenization_spaces: false,
    eos_token: configToken(EOS_TOKEN),
    legacy: true,
    model_max_length: options.modelMaxLength ?? 4096,
    pad_token: configToken(EOS_TOKEN),
    sp_model_kwargs: {},
    unk_token: null,
    tokenizer_class: "LlamaTokenizerFast",
    chat_template: CHAT_TEMPLATE,
  };
  return {
    tokenizerJson,
    tokenizerConfig,
    vocabSize: firstTrailing + trailing,
    mergeCount: model.merges.length,
  };
}
