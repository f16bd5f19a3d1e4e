import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { CheckpointError } from "@moela/core";
import { Tokenizer, buildTinyTokenizerFiles } from "@moela/tokenizer";
import { makeTempDir, removeDir, writeTinyDir, writeTokenizerDir } from "./fixtures.js";

let tmp: string;
beforeAll(() => {
  tmp = makeTempDir();
});
afterAll(() => removeDir(tmp));

type Case = [name: string, tokenizerJson: unknown, tokenizerConfig: unknown, file: string, message: RegExp];
type Doc = Record<string, any>; // eslint-disable-line @typescript-eslint/no-explicit-any -- parsed JSON that the cases break freely

function cases(): Case[] {
  const { tokenizerJson, tokenizerConfig } = buildTinyTokenizerFiles();
  const json = (edit: (doc: Doc) => void) => {
    const doc = structuredClone(tokenizerJson) as Doc;
    edit(doc);
    return doc;
  };
  const config = (edit: (doc: Doc) => void) => {
    const doc = structuredClone(tokenizerConfig) as Doc;
    edit(doc);
    return doc;
  };
  const truncated = JSON.stringify(tokenizerJson).slice(0, 5000);
  return [
    ["missing tokenizer.json", undefined, tokenizerConfig, "tokenizer.json", /file is missing/],
    ["missing tokenizer_config.json", tokenizerJson, undefined, "tokenizer_config.json", /file is missing/],
    ["truncated tokenizer.json", truncated, tokenizerConfig, "tokenizer.json", /is not valid JSON/],
    ["tokenizer_config.json not JSON", tokenizerJson, "{add_bos_token: yes}", "tokenizer_config.json", /is not valid JSON/],
    ["tokenizer.json is a list", [1, 2], tokenizerConfig, "tokenizer.json", /must be a JSON object/],
    ["no model", json((d) => delete d.model), tokenizerConfig, "tokenizer.json", /has no "model" object/],
    ["no vocab", json((d) => delete d.model.vocab), tokenizerConfig, "tokenizer.json", /model\.vocab is missing/],
    ["merges not a list", json((d) => (d.model.merges = "a b")), tokenizerConfig, "tokenizer.json", /merges must be a list/],
    ["unknown model type", json((d) => (d.model.type = "Magic")), tokenizerConfig, "tokenizer.json", /model\.type must be one of BPE/],
    ["unknown pre-tokenizer", json((d) => (d.pre_tokenizer = { type: "Magic" })), tokenizerConfig, "tokenizer.json", /cannot be loaded: .*Magic/],
    ["bad added token", json((d) => (d.added_tokens[0].id = "zero")), tokenizerConfig, "tokenizer.json", /added_tokens\[0\]/],
    ["config is null", tokenizerJson, "null", "tokenizer_config.json", /must be a JSON object/],
    ["bos not in vocab", tokenizerJson, config((d) => (d.bos_token = "<s>")), "tokenizer_config.json", /bos_token "<s>" is not in the vocabulary/],
    ["bos of wrong type", tokenizerJson, config((d) => (d.bos_token = 7)), "tokenizer_config.json", /bos_token must be a string/],
    ["add_bos without bos", tokenizerJson, config((d) => delete d.bos_token), "tokenizer_config.json", /add_bos_token is true but bos_token is not set/],
    ["flag not boolean", tokenizerJson, config((d) => (d.add_bos_token = "true")), "tokenizer_config.json", /add_bos_token must be a boolean/],
  ];
}

describe("Tokenizer.fromDir on bad files", () => {
  it.each(cases())("%s -> CheckpointError naming the file", (name, tokenizerJson, tokenizerConfig, file, message) => {
    const dir = writeTokenizerDir(join(tmp, name.replace(/\W+/g, "-")), tokenizerJson, tokenizerConfig);
    let caught: unknown;
    try {
      Tokenizer.fromDir(dir);
    } catch (err) {
      caught = err;
    }
    expect(caught).toBeInstanceOf(CheckpointError);
    const err = caught as CheckpointError;
    expect(err.file).toBe(join(dir, file));
    expect(err.message).toMatch(message);
  });

  it("loads the unedited tiny files (the cases above differ from it by one edit each)", () => {
    expect(Tokenizer.fromDir(writeTinyDir(tmp, "ok")).vocabSize).toBe(1024);
  });
});
