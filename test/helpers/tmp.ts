/** Temporary folders for a test file. */
import { mkdirSync, mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll } from "vitest";

/**
 * At a test file's top level: a function that makes a fresh empty folder each call, all under one
 * temporary root named `<prefix>XXXXXX`, which is removed after the file's tests.
 */
export function tmpDirsForFile(prefix: string): () => string {
  const root = mkdtempSync(join(tmpdir(), prefix));
  afterAll(() => rmSync(root, { recursive: true, force: true }));
  let counter = 0;
  return () => {
    const d = join(root, `t${counter++}`);
    mkdirSync(d);
    return d;
  };
}
