import { describe, expect, it } from "vitest";
import { InvalidArgumentError } from "@moela/core";
import { trainBpe } from "@moela/corpus";
import { byteLevelAlphabet } from "@moela/tokenizer";
import { rng } from "../../helpers/random.js";

/**
 * The textbook trainer, for reference: recount every pair of every word before each merge, take the most frequent
 * (ties: smaller left id, then smaller right id), rewrite every word. Slow and obviously right.
 */
function naiveTrain(wordCounts: Map<string, number>, vocabSize: number, initial: string[] = []): string[] {
  const tokens = [...initial, ...byteLevelAlphabet()];
  const idOf = new Map(tokens.map((t, i) => [t, i]));
  let words = [...wordCounts].map(([w, c]) => ({ ids: [...w].map((ch) => idOf.get(ch) as number), c }));
  const merges: string[] = [];
  while (tokens.length < vocabSize) {
    const counts = new Map<string, { l: number; r: number; n: number }>();
    for (const { ids, c } of words) {
      for (let i = 0; i + 1 < ids.length; i++) {
        const k = `${ids[i]},${ids[i + 1]}`;
        const e = counts.get(k) ?? { l: ids[i] as number, r: ids[i + 1] as number, n: 0 };
        e.n += c;
        counts.set(k, e);
      }
    }
    let best: { l: number; r: number; n: number } | undefined;
    for (const e of counts.values()) {
      if (best === undefined || e.n > best.n || (e.n === best.n && (e.l < best.l || (e.l === best.l && e.r < best.r)))) {
        best = e;
      }
    }
    if (best === undefined || best.n < 2) break;
    const { l, r } = best;
    const text = (tokens[l] as string) + (tokens[r] as string);
    let id = idOf.get(text);
    if (id === undefined) {
      id = tokens.length;
      tokens.push(text);
      idOf.set(text, id);
    }
    merges.push(`${tokens[l]} ${tokens[r]}`);
    words = words.map(({ ids, c }) => {
      const out: number[] = [];
      for (let i = 0; i < ids.length; i++) {
        if (i + 1 < ids.length && ids[i] === l && ids[i + 1] === r) {
          out.push(id);
          i++;
        } else out.push(ids[i] as number);
      }
      return { ids: out, c };
    });
  }
  return merges;
}

function mergeStrings(wordCounts: Map<string, number>, vocabSize: number, initial: string[] = []): string[] {
  return trainBpe(wordCounts, { vocabSize, initialTokens: initial }).merges.map(([l, r]) => `${l} ${r}`);
}

/** Random words over a small alphabet, so that long runs ("aaaa") and shared sub-words are common. */
function randomWordCounts(seed: number, n: number): Map<string, number> {
  const next = rng(seed);
  const alphabet = ["a", "b", "c", "d", "Ġ", "e"];
  const counts = new Map<string, number>();
  for (let i = 0; i < n; i++) {
    const len = 1 + Math.floor(next() * 8);
    let w = "";
    for (let j = 0; j < len; j++) w += alphabet[Math.floor(next() * alphabet.length)];
    counts.set(w, (counts.get(w) ?? 0) + 1 + Math.floor(next() * 20));
  }
  return counts;
}

describe("trainBpe", () => {
  it("learns the textbook example's merges in order (count, then smaller ids on a tie)", () => {
    const words = new Map([
      ["hug", 10],
      ["pug", 5],
      ["pun", 12],
      ["bun", 4],
      ["hugs", 5],
    ]);
    // u g (20), u n (16), h ug (15), p un (12); then p ug, hug s, both 5: "p" has the smaller id than "hug";
    // then b un (4).
    expect(mergeStrings(words, 256 + 7)).toEqual(["u g", "u n", "h ug", "p un", "p ug", "hug s", "b un"]);
  });

  it.each([
    [1, 300],
    [2, 400],
    [3, 250],
  ])("matches the recount-everything trainer on random words (seed %i, %i words)", (seed, n) => {
    const words = randomWordCounts(seed, n);
    const expected = naiveTrain(words, 256 + 120);
    expect(expected.length).toBeGreaterThan(50);
    expect(mergeStrings(words, 256 + 120)).toEqual(expected);
  });

  it("merges runs of one symbol left to right without overlap (aaaa -> aa aa)", () => {
    const words = new Map([["aaaaa", 3]]);
    // (a,a) first; the word becomes aa aa a: (aa,aa) and (aa,a) both 3, the tie goes to the smaller right id (a);
    // merging it rewrites aa aa a -> aa aaa (the pair at position 1), so the last merge is (aa,aaa).
    const { merges, vocab } = trainBpe(words, { vocabSize: 256 + 3 });
    expect(merges).toEqual([
      ["a", "a"],
      ["aa", "a"],
      ["aa", "aaa"],
    ]);
    expect(vocab.get("aaaaa")).toBe(258);
  });

  it("is deterministic: the same merges whatever order the words arrive in", () => {
    const words = randomWordCounts(7, 300);
    const reversed = new Map([...words].reverse());
    expect(mergeStrings(reversed, 256 + 100)).toEqual(mergeStrings(words, 256 + 100));
  });

  it("gives initial tokens the first ids, then bytes in byte order, then merged tokens", () => {
    const { vocab } = trainBpe(new Map([["ĠtheĠthe", 5]]), { vocabSize: 2 + 256 + 1, initialTokens: ["<s>", "</s>"] });
    expect(vocab.get("<s>")).toBe(0);
    expect(vocab.get("</s>")).toBe(1);
    expect(vocab.get("!")).toBe(2 + 0x21);
    expect(vocab.get("Ġ")).toBe(2 + 0x20); // GPT-2's symbol for the space byte
    expect(vocab.get("Ā")).toBe(2 + 0x00);
    expect(vocab.size).toBe(2 + 256 + 1);
  });

  it("stops early when no pair is seen minFrequency times", () => {
    const { merges } = trainBpe(new Map([["abcd", 1]]), { vocabSize: 256 + 10 });
    expect(merges).toEqual([]);
    expect(trainBpe(new Map([["abcd", 1]]), { vocabSize: 256 + 10, minFrequency: 1 }).merges).toHaveLength(3);
  });

  it("reports progress up to the merges made", () => {
    const seen: number[] = [];
    trainBpe(randomWordCounts(4, 200), { vocabSize: 256 + 30, progressEvery: 10, onProgress: (m) => seen.push(m) });
    expect(seen).toEqual([10, 20, 30, 30]);
  });

  it.each([
    ["a vocabulary smaller than the bytes", new Map([["ab", 2]]), { vocabSize: 100 }],
    ["a word with a character that is no byte symbol", new Map([["a b", 2]]), { vocabSize: 300 }],
    ["an initial token that is a byte symbol", new Map([["ab", 2]]), { vocabSize: 300, initialTokens: ["a"] }],
  ])("rejects %s", (_name, words, options) => {
    expect(() => trainBpe(words, options)).toThrow(InvalidArgumentError);
  });
});
