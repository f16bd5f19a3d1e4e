/**
 * Pieces of a Hugging Face tokenizer.json shaped like DeepSeek-V3's, for the files this repository
 * writes: the bundled tiny tokenizer (tiny.ts) and the one @moela/corpus trains.
 */
import { Tokenizer as HfTokenizer } from "@huggingface/tokenizers";

/**
 * DeepSeek-V3's pre-tokenizer, copied from its tokenizer.json: digits in runs of at most 3, CJK/kana runs isolated,
 * a GPT-style word/punctuation/space split, then the ByteLevel byte-to-symbol mapping (no regex of its own).
 */
export const DEEPSEEK_V3_PRE_TOKENIZER = {
  type: "Sequence",
  pretokenizers: [
    { type: "Split", pattern: { Regex: "\\p{N}{1,3}" }, behavior: "Isolated", invert: false },
    { type: "Split", pattern: { Regex: "[一-龥぀-ゟ゠-ヿ]+" }, behavior: "Isolated", invert: false },
    {
      type: "Split",
      pattern: {
        Regex:
          "[!\"#$%&'()*+,\\-./:;<=>?@\\[\\\\\\]^_`{|}~][A-Za-z]+|[^\r\n\\p{L}\\p{P}\\p{S}]?[\\p{L}\\p{M}]+| ?[\\p{P}\\p{S}]+[\r\n]*|\\s*[\r\n]+|\\s+(?!\\S)|\\s+",
      },
      behavior: "Isolated",
      invert: false,
    },
    { type: "ByteLevel", add_prefix_space: false, trim_offsets: true, use_regex: false },
  ],
} as const;

/** DeepSeek-V3's post-processor and decoder: ByteLevel both ways. */
export const DEEPSEEK_V3_POST_PROCESSOR = { type: "ByteLevel", add_prefix_space: true, trim_offsets: false, use_regex: true } as const;
export const DEEPSEEK_V3_DECODER = { type: "ByteLevel", add_prefix_space: true, trim_offsets: true, use_regex: true } as const;

/** tokenizer.json's `model` for a byte-level BPE: `vocab` token -> id, `merges` as "left right" strings in merge order. */
export function byteLevelBpeModel(vocab: Readonly<Record<string, number>>, merges: readonly string[]) {
  return {
    type: "BPE",
    dropout: null,
    unk_token: null,
    continuing_subword_prefix: null,
    end_of_word_suffix: null,
    fuse_unk: false,
    byte_fallback: false,
    vocab,
    merges,
  } as const;
}

/** DEEPSEEK_V3_PRE_TOKENIZER run by the same library code the runtime uses: text -> its pieces, in byte-level symbols. */
export function createDeepseekV3PreTokenizer(): (text: string) => string[] {
  const skeleton = new HfTokenizer(
    {
      added_tokens: [],
      normalizer: null,
      pre_tokenizer: DEEPSEEK_V3_PRE_TOKENIZER,
      post_processor: null,
      decoder: null,
      model: { type: "BPE", vocab: {}, merges: [] },
    },
    {},
  );
  const preTokenizer = skeleton.pre_tokenizer;
  if (preTokenizer === null) throw new Error("the DeepSeek-V3 pre-tokenizer failed to load");
  return (text) => preTokenizer.pre_tokenize(text);
}
