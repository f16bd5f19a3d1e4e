/** `serve --role all`'s settings that reach the engine: the draft vocabulary. */
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
