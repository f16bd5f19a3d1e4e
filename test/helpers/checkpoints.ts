/** Temporary checkpoints made by the project's generator, cached per (options, seed) for one test file. */
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { generateCheckpoint, type GenerateOptions, type PresetName } from "../../scripts/lib/tiny-checkpoint.js";

const made: string[] = [];

export function makeCheckpoint(opts: PresetName | GenerateOptions, seed = 1): string {
  const dir = mkdtempSync(join(tmpdir(), "moela-ckpt-"));
  generateCheckpoint(opts, dir, seed);
  made.push(dir);
  return dir;
}

export function removeCheckpoints(): void {
  for (const d of made.splice(0)) rmSync(d, { recursive: true, force: true });
}
