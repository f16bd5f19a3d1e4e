import { describe, expect, it } from "vitest";
import { IncrementalDecoder } from "@moela/tokenizer";
import { tokenizersForFile } from "./fixtures.js";

const { real, tiny } = tokenizersForFile();

function stream(decoder: IncrementalDecoder, ids: readonly number[]): string[] {
  return ids.map((id) => decoder.push(id));
}

describe("IncrementalDecoder", () => {
  it("holds back an emoji split across tokens until its last byte arrives (DeepSeek-V3)", () => {
    const fox = real.encode("🦊", { addSpecialTokens: false });
    expect(fox.length).toBe(3); // precondition: the tokenizer really splits this character
    const ids = real.encode("Hi 🦊!", { addSpecialTokens: false });
    const deltas = stream(new IncrementalDecoder(real), ids);
    expect(deltas.join("")).toBe("Hi 🦊!");
    expect(deltas.some((d) => d.includes("\uFFFD"))).toBe(false);
    // The emoji comes out whole, in one delta, after two empty ones.
    const foxDelta = deltas.findIndex((d) => d.includes("🦊"));
    expect(foxDelta).toBeGreaterThanOrEqual(2);
    expect(deltas.slice(foxDelta - 2, foxDelta)).toEqual(["", ""]);
  });

  it.each([
    ["DeepSeek-V3", () => real],
    ["tiny", () => tiny],
  ])("%s: deltas concatenate to the full decode, never with a partial character", (_name, get) => {
    const t = get();
    const text = "naïve café — 你好，世界 👨‍👩‍👧 🇫🇷 done\n  code: x**2 ✓";
    const ids = t.encode(text, { addSpecialTokens: false });
    const decoder = new IncrementalDecoder(t);
    const deltas = stream(decoder, ids);
    expect(deltas.join("") + decoder.flush()).toBe(text);
    expect(decoder.text).toBe(text);
    for (const d of deltas) expect(d.includes("\uFFFD")).toBe(false);
    // Several tokens produced no text on their own (multi-byte characters), yet nothing was lost.
    expect(deltas.filter((d) => d === "").length).toBeGreaterThan(0);
  });

  it("gives no text for an id the tokenizer has no token for (DeepSeek-V3's padded vocabulary) and keeps decoding", () => {
    const padded = 129_000; // below config.json's vocab_size 129,280, above the tokenizer's last id
    expect(real.idToToken(padded)).toBeUndefined(); // precondition
    const ids = real.encode("Hello world", { addSpecialTokens: false });
    const decoder = new IncrementalDecoder(real);
    const deltas = stream(decoder, [ids[0]!, padded, ...ids.slice(1)]);
    expect(deltas[1]).toBe("");
    expect(deltas.join("") + decoder.flush()).toBe("Hello world");
  });

  it("skips special tokens by default and keeps them when asked", () => {
    const body = tiny.encode("bye", { addSpecialTokens: false });
    const eos = tiny.eosTokenId!;
    expect(stream(new IncrementalDecoder(tiny), [...body, eos]).join("")).toBe("bye");
    expect(stream(new IncrementalDecoder(tiny, { skipSpecialTokens: false }), [...body, eos]).join("")).toBe("bye<｜end▁of▁sentence｜>");
  });

  it("uses the prompt as context without emitting it", () => {
    const prompt = real.encode("Question: why?");
    const answer = real.encode(" Because 🦊s run.", { addSpecialTokens: false });
    const decoder = new IncrementalDecoder(real, { promptIds: prompt });
    expect(stream(decoder, answer).join("")).toBe(" Because 🦊s run.");
  });

  it("flush releases an unfinished character as U+FFFD, as a full decode shows it", () => {
    const fox = real.encode("🦊", { addSpecialTokens: false });
    const decoder = new IncrementalDecoder(real);
    expect(decoder.push(fox[0]!)).toBe("");
    expect(decoder.flush()).toBe(real.decode([fox[0]!]));
    expect(decoder.flush()).toBe("");
  });

  it("emits a character completed after an invalid byte run", () => {
    // A lone continuation byte (0x80) is invalid UTF-8 forever; the text after it must still stream.
    const lone = 5 + 0x80;
    const decoder = new IncrementalDecoder(tiny);
    expect(decoder.push(lone)).toBe("");
    const rest = stream(decoder, tiny.encode("ok", { addSpecialTokens: false })).join("");
    expect(rest).toBe("\uFFFDok");
  });
});
