export { buildTinyTokenizerFiles, byteLevelAlphabet, TINY_CHAT_TEMPLATE, TINY_SPECIAL_TOKENS, TINY_VOCAB_SIZE } from "./tiny.js";
export type { TinyTokenizerFiles } from "./tiny.js";
