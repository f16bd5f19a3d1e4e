/** Inputs for the training tests. */
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { afterAll } from "vitest";

/**
 * At a test file's top level: a temporary folder `tmp` (removed after the file's tests) holding `text`, a
 * 40-paragraph corpus.txt, and `tokenizer`, the committed tiny-v3 model folder to encode it with.
 */
export function trainingInputsForFile(prefix: string): { readonly tmp: string; readonly text: string; readonly tokenizer: string } {
  const tmp = mkdtempSync(join(tmpdir(), prefix));
  afterAll(() => rmSync(tmp, { recursive: true, force: true }));
  const text = join(tmp, "corpus.txt");
  writeFileSync(text, Array.from({ length: 40 }, (_, i) => `Paragraph ${i}: the quick brown fox jumps over the lazy dog ${i % 7} times.\n\n`).join(""));
  return { tmp, text, tokenizer: resolve("models/tiny-v3") };
}
