export {
  Tokenizer,
  TOKENIZER_JSON,
  TOKENIZER_CONFIG_JSON,
  CHAT_TEMPLATE_JINJA,
} from "./tokenizer.js";
export type { ChatMessage, ChatTemplateOptions, DecodeOptions, EncodeOptions, TokenizerSource } from "./tokenizer.js";
export { IncrementalDecoder } from "./incremental.js";
export type { IncrementalDecoderOptions } from "./incremental.js";
export { StopStringMatcher } from "./stop.js";
export type { StopMatch, StopStringMatcherOptions } from "./stop.js";
export { buildTinyTokenizerFiles, byteLevelAlphabet, TINY_CHAT_TEMPLATE, TINY_SPECIAL_TOKENS, TINY_VOCAB_SIZE } from "./tiny.js";
export type { TinyTokenizerFiles } from "./tiny.js";
export { byteLevelBpeModel, createDeepseekV3PreTokenizer, DEEPSEEK_V3_DECODER, DEEPSEEK_V3_POST_PROCESSOR, DEEPSEEK_V3_PRE_TOKENIZER } from "./hf-json.js";
export { tokenTexts, tokenTextsOption } from "./token-texts.js";
