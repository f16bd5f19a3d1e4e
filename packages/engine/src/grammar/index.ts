export * from "./schema.js";
export * from "./spec.js";
export { advance, advanceText, initialState, isTerminal, minLen, type GrammarState } from "./matcher.js";
export * from "./vocabulary.js";
