/**
 * Streaming detokenization, after vLLM's detokenizer (detokenize_incrementally): the text of a new token is the
 * decode of a short window of tokens minus the decode of the same window without the new tokens. The window starts
 * a few tokens back (prefixOffset) because decoders can depend on context (SentencePiece drops a leading space at
 * the start of a decode); readOffset marks where text was last emitted. A byte-level BPE token can end in the middle
 * of a UTF-8 character; its decode then ends in U+FFFD, and nothing is emitted until a later token completes it.
 */
import type { Tokenizer } from "./tokenizer.js";

const REPLACEMENT_CHAR = "\uFFFD";
/** How many already-emitted tokens of context a window keeps (vLLM's INITIAL_INCREMENTAL_DETOKENIZATION_OFFSET). */
const CONTEXT_TOKENS = 5;

export interface IncrementalDecoderOptions {
  /** Drop special tokens (EOS and the like) from the text. Default true, as vLLM's sampling params. */
  skipSpecialTokens?: boolean;
  /** Prompt ids: context for the first generated tokens; their own text is never emitted. */
  promptIds?: readonly number[];
}

export class IncrementalDecoder {
  private readonly tokenizer: Tokenizer;
  private readonly skipSpecialTokens: boolean;
  /** Every id seen: prompt context, then generated. */
  private readonly ids: number[];
  /** Start of the context window. */
  private prefixOffset: number;
  /** End of the text already emitted (exclusive), in ids. */
  private readOffset: number;
  private emitted = "";

  constructor(tokenizer: Tokenizer, options: IncrementalDecoderOptions = {}) {
    this.tokenizer = tokenizer;
    this.skipSpecialTokens = options.skipSpecialTokens ?? true;
    this.ids = [...(options.promptIds ?? [])];
    this.readOffset = this.ids.length;
    this.prefixOffset = Math.max(this.ids.length - CONTEXT_TOKENS, 0);
  }

  /** All text emitted so far (the concatenation of every delta). */
  get text(): string {
    return this.emitted;
  }

  /**
   * Adds one generated id; returns the text it completes ("" while a character is still incomplete). An id the
   * tokenizer has no token for (a model whose vocab_size is padded past its tokenizer, as DeepSeek-V3's 129,280
   * against 128,815 tokens) has no text, as vLLM and transformers render it, and is left out of the window.
   */
  push(tokenId: number): string {
    if (this.tokenizer.idToToken(tokenId) === undefined) return "";
    this.ids.push(tokenId);
    const prefixText = this.decodeRange(this.prefixOffset, this.readOffset);
    const newText = this.decodeRange(this.prefixOffset, this.ids.length);
    if (newText.length > prefixText.length && !newText.endsWith(REPLACEMENT_CHAR)) {
      const delta = newText.slice(prefixText.length);
      this.prefixOffset = this.readOffset;
      this.readOffset = this.ids.length;
      this.emitted += delta;
      return delta;
    }
    return "";
  }

  /** Emits whatever is held back (an incomplete character decodes as U+FFFD, as a full decode would show it). */
  flush(): string {
    if (this.readOffset === this.ids.length) return "";
    const prefixText = this.decodeRange(this.prefixOffset, this.readOffset);
    const newText = this.decodeRange(this.prefixOffset, this.ids.length);
    const delta = newText.slice(prefixText.length);
    this.prefixOffset = this.readOffset;
    this.readOffset = this.ids.length;
    this.emitted += delta;
    return delta;
  }

  private decodeRange(start: number, end: number): string {
    return this.tokenizer.decode(this.ids.slice(start, end), {
      skipSpecialTokens: this.skipSpecialTokens,
      // Space clean-up looks at neighbouring characters, so a window decode could differ from a full decode.
      cleanUpTokenizationSpaces: false,
    });
  }
}
