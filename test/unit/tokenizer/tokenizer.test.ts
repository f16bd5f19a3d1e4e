import { describe, expect, it } from "vitest";
import { InvalidArgumentError } from "@moela/core";
import { Tokenizer, buildTinyTokenizerFiles, byteLevelAlphabet, TINY_SPECIAL_TOKENS } from "@moela/tokenizer";
import { BOS, EOS, tokenizersForFile, writeTinyDir } from "./fixtures.js";

const { tmp, real, tiny } = tokenizersForFile();

const texts: [string, string][] = [
  ["ascii", "The quick brown fox jumps over the lazy dog. 1234567 + 89 = 1234656!"],
  ["whitespace", "  leading, trailing  \n\n\ttabs and\r\nCRLF  "],
  ["accents", "Crème brûlée, naïve café, Ångström, São Paulo, Dvořák"],
  ["cjk", "你好，世界！日本語のテキストとカタカナ。한국어 문장"],
  ["emoji", "🦊👍🏽 family: 👨‍👩‍👧‍👦 flags 🇫🇷 ok"],
  ["mixed", "def f(x):\n    return x**2  # 平方 ✓ → ∞"],
];

describe.each([
  ["DeepSeek-V3", () => real],
  ["tiny", () => tiny],
])("%s tokenizer", (_name, get) => {
  it.each(texts)("round trips %s text", (_kind, text) => {
    const t = get();
    const ids = t.encode(text, { addSpecialTokens: false });
    expect(ids.length).toBeGreaterThan(0);
    expect(ids.every((id) => Number.isInteger(id) && id >= 0 && id < t.vocabSize)).toBe(true);
    expect(t.decode(ids)).toBe(text);
    // With the BOS added, skipping special tokens gives the text back; keeping them shows the BOS text.
    const withBos = t.encode(text);
    expect(withBos).toEqual([t.bosTokenId, ...ids]);
    expect(t.decode(withBos, { skipSpecialTokens: true })).toBe(text);
    expect(t.decode(withBos)).toBe(BOS + text);
  });

  it("adds exactly one BOS by default, none when asked, and no EOS", () => {
    const t = get();
    expect(t.addBosToken).toBe(true);
    expect(t.addEosToken).toBe(false);
    expect(t.bosTokenId).toBe(0);
    expect(t.eosTokenId).toBe(1);
    expect(t.encode("")).toEqual([0]);
    expect(t.encode("", { addSpecialTokens: false })).toEqual([]);
    const ids = t.encode("hello");
    expect(ids[0]).toBe(0);
    expect(ids.filter((id) => id === 0)).toHaveLength(1);
    expect(ids.at(-1)).not.toBe(1);
  });

  it("maps ids to tokens and special ids to their text", () => {
    const t = get();
    expect(t.idToToken(0)).toBe(BOS);
    expect(t.idToToken(1)).toBe(EOS);
    expect(t.tokenToId(EOS)).toBe(1);
    expect(t.idToToken(t.vocabSize)).toBeUndefined();
    expect(t.isSpecialId(1)).toBe(true);
    expect(t.decode([1, ...t.encode("x", { addSpecialTokens: false }), 1], { skipSpecialTokens: true })).toBe("x");
    expect(t.decode([])).toBe("");
  });

  it.each([[-1], [1.5], [Number.NaN], [10_000_000]])("rejects token id %s in decode", (bad) => {
    expect(() => get().decode([0, bad])).toThrow(InvalidArgumentError);
  });
});

describe("DeepSeek-V3 specifics", () => {
  it("reads the released vocabulary and config", () => {
    // 128,000 BPE ids plus added tokens up to id 128,814 (the model pads its embedding to 129,280).
    expect(real.vocabSize).toBe(128815);
    expect(real.tokenToId("<｜User｜>")).toBe(128803);
    expect(real.tokenToId("<｜Assistant｜>")).toBe(128804);
    expect(real.modelMaxLength).toBe(131072);
    expect(real.chatTemplate).toContain("{{bos_token}}");
  });

  it("splits a four-byte emoji over several byte-level tokens", () => {
    const ids = real.encode("🦊", { addSpecialTokens: false });
    expect(ids.length).toBeGreaterThan(1);
    // Each piece alone is not valid UTF-8.
    expect(ids.some((id) => real.decode([id]).includes("\uFFFD"))).toBe(true);
  });
});

describe("tiny tokenizer files", () => {
  it("is deterministic", () => {
    expect(JSON.stringify(buildTinyTokenizerFiles())).toBe(JSON.stringify(buildTinyTokenizerFiles()));
  });

  it("has 1024 contiguous ids: specials, the 256 byte symbols, then merges", () => {
    const files = buildTinyTokenizerFiles();
    expect(files.vocabSize).toBe(1024);
    expect(tiny.vocabSize).toBe(1024);
    const model = files.tokenizerJson.model as { type: string; vocab: Record<string, number>; merges: string[] };
    expect(model.type).toBe("BPE");
    const ids = Object.values(model.vocab).sort((a, b) => a - b);
    expect(ids).toEqual(Array.from({ length: 1024 }, (_, i) => i));
    TINY_SPECIAL_TOKENS.forEach((content, id) => {
      expect(tiny.idToToken(id)).toBe(content);
      expect(tiny.isSpecialId(id)).toBe(true);
    });
    expect(TINY_SPECIAL_TOKENS[4]).toBe("<｜pad｜>");
    byteLevelAlphabet().forEach((symbol, byte) => expect(model.vocab[symbol]).toBe(5 + byte));
    expect(model.merges.length).toBeGreaterThanOrEqual(1024 - 5 - 256);
    // Every merge joins two known tokens into a known token.
    for (const merge of model.merges) {
      const [left, right] = merge.split(" ");
      expect(model.vocab[left!]).toBeDefined();
      expect(model.vocab[right!]).toBeDefined();
      expect(model.vocab[left! + right!]).toBeDefined();
    }
  });

  it("has a DeepSeek-V3-shaped tokenizer_config", () => {
    const { tokenizerConfig } = buildTinyTokenizerFiles();
    expect(tokenizerConfig.tokenizer_class).toBe("LlamaTokenizerFast");
    expect(tokenizerConfig.add_bos_token).toBe(true);
    expect(tokenizerConfig.add_eos_token).toBe(false);
    expect(tokenizerConfig.model_max_length).toBe(4096);
    expect(typeof tokenizerConfig.chat_template).toBe("string");
    expect(buildTinyTokenizerFiles({ modelMaxLength: 512 }).tokenizerConfig.model_max_length).toBe(512);
  });

  it("compresses English with its learned merges and falls back to bytes elsewhere", () => {
    const english = "The children ran along the sand, and the old men talked about the weather.";
    const ids = tiny.encode(english, { addSpecialTokens: false });
    expect(ids.length).toBeLessThan(english.length / 3);
    // Unseen script: one token per UTF-8 byte (each ideograph is 3 bytes).
    expect(tiny.encode("龍", { addSpecialTokens: false })).toEqual([...Buffer.from("龍")].map((b) => 5 + b));
  });
});

describe("tokenizer_config BOS/EOS policy", () => {
  it("follows add_bos_token false and add_eos_token true", () => {
    const dir = writeTinyDir(tmp, "eos-only", ({ tokenizerConfig }) => {
      tokenizerConfig.add_bos_token = false;
      tokenizerConfig.add_eos_token = true;
    });
    const t = Tokenizer.fromDir(dir);
    const body = t.encode("hi", { addSpecialTokens: false });
    expect(t.encode("hi")).toEqual([...body, 1]);
  });

  it("accepts bos_token/eos_token written as plain strings", () => {
    const dir = writeTinyDir(tmp, "string-tokens", ({ tokenizerConfig }) => {
      tokenizerConfig.bos_token = "<｜User｜>";
      tokenizerConfig.eos_token = "<｜Assistant｜>";
    });
    const t = Tokenizer.fromDir(dir);
    expect(t.bosTokenId).toBe(2);
    expect(t.eosTokenId).toBe(3);
    expect(t.encode("a")[0]).toBe(2);
  });

  it("defaults to LlamaTokenizer's policy (BOS, no EOS) when the flags are absent", () => {
    const dir = writeTinyDir(tmp, "no-flags", ({ tokenizerConfig }) => {
      delete tokenizerConfig.add_bos_token;
      delete tokenizerConfig.add_eos_token;
    });
    const t = Tokenizer.fromDir(dir);
    expect(t.encode("a")[0]).toBe(0);
    expect(t.encode("a").at(-1)).not.toBe(1);
  });
});
