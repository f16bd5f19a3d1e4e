/** `serve --role all`'s settings that reach the engine: the draft vocabulary and the drafts per step. */
import { describe, expect, it } from "vitest";
import { parseOneProcessArgs, USAGE } from "../../../services/router/src/one-process.js";

const MODEL = new URL("../../../models/tiny-v3", import.meta.url).pathname;

describe("serve --role all --draft-vocab", () => {
  it("is unset by default (the whole vocabulary) and taken from the flag or its env twin", () => {
    expect(parseOneProcessArgs(["--model", MODEL], {})?.draftVocab).toBeUndefined();
    expect(parseOneProcessArgs(["--model", MODEL, "--draft-vocab", "1024"], {})?.draftVocab).toBe(1024);
    expect(parseOneProcessArgs(["--model", MODEL], { MOELA_ALL_DRAFT_VOCAB: "256" })?.draftVocab).toBe(256);
    expect(USAGE).toContain("--draft-vocab");
  });

  it("refuses 0 and a fraction, naming the flag and its env twin", () => {
    expect(() => parseOneProcessArgs(["--model", MODEL, "--draft-vocab", "0"], {})).toThrow(/--draft-vocab \(env MOELA_ALL_DRAFT_VOCAB\)/);
    expect(() => parseOneProcessArgs(["--model", MODEL, "--draft-vocab", "2.5"], {})).toThrow(/--draft-vocab \(env MOELA_ALL_DRAFT_VOCAB\)/);
  });
});

describe("serve --role all --speculative-tokens", () => {
  it("is 1 by default and taken from the flag or its env twin; 0 and 5 are refused", () => {
    expect(parseOneProcessArgs(["--model", MODEL], {})?.speculativeTokens).toBe(1);
    expect(parseOneProcessArgs(["--model", MODEL, "--speculative-tokens", "2"], {})?.speculativeTokens).toBe(2);
    expect(parseOneProcessArgs(["--model", MODEL], { MOELA_ALL_SPECULATIVE_TOKENS: "3" })?.speculativeTokens).toBe(3);
    expect(USAGE).toContain("--speculative-tokens");
    expect(() => parseOneProcessArgs(["--model", MODEL, "--speculative-tokens", "0"], {})).toThrow(/--speculative-tokens \(env MOELA_ALL_SPECULATIVE_TOKENS\)/);
    expect(() => parseOneProcessArgs(["--model", MODEL, "--speculative-tokens", "5"], {})).toThrow(/--speculative-tokens \(env MOELA_ALL_SPECULATIVE_TOKENS\)/);
  });
});
