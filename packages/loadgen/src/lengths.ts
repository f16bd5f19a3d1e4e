/**
 * Prompt and output length distributions, written on the command line as
 *
 *   128 | fixed:128            always 128
 *   uniform:64,256           an integer in [64, 256], each equally likely
 *   normal:128,32[,MIN,MAX]  round(N(128, 32²)) clamped to [MIN, MAX] (MIN defaults to 1, MAX to unbounded)
 *   file:PATH                one of the lengths listed in PATH (one integer per line, or a JSON array),
 *                            each line equally likely (an empirical distribution, e.g. from a trace)
 *
 * Every length is an integer >= 1. Sampling takes the bench's seeded Rng, so a seed fixes every length.
 */
import { InvalidArgumentError } from "@moela/core";
import type { Rng } from "./rng.js";

export type LengthDist =
  | { readonly kind: "fixed"; readonly value: number }
  | { readonly kind: "uniform"; readonly min: number; readonly max: number }
  | { readonly kind: "normal"; readonly mean: number; readonly std: number; readonly min: number; readonly max: number }
  | { readonly kind: "empirical"; readonly values: readonly number[]; readonly source: string };

/** Reads a file for `file:PATH` (injected so parsing stays pure in tests). */
export type ReadText = (path: string) => string;

function positiveInt(s: string | undefined, spec: string, what: string): number {
  const n = Number(s);
  if (s === undefined || s.trim() === "" || !Number.isInteger(n) || n < 1) {
    throw new InvalidArgumentError(`length "${spec}": ${what} must be an integer >= 1, got "${s ?? ""}"`);
  }
  return n;
}

function nonNegative(s: string | undefined, spec: string, what: string): number {
  const n = Number(s);
  if (s === undefined || s.trim() === "" || !Number.isFinite(n) || n < 0) {
    throw new InvalidArgumentError(`length "${spec}": ${what} must be a number >= 0, got "${s ?? ""}"`);
  }
  return n;
}

/** Parses a length spec (grammar in the module comment); `readText` is needed only for file:PATH. */
export function parseLengthDist(spec: string, readText?: ReadText): LengthDist {
  const s = spec.trim();
  const colon = s.indexOf(":");
  const kind = colon < 0 ? "fixed" : s.slice(0, colon);
  const rest = colon < 0 ? s : s.slice(colon + 1);
  const args = rest.split(",").map((a) => a.trim());
  switch (kind) {
    case "fixed":
      if (args.length !== 1) throw new InvalidArgumentError(`length "${spec}": fixed takes one value`);
      return { kind, value: positiveInt(args[0], spec, "the length") };
    case "uniform": {
      if (args.length !== 2) throw new InvalidArgumentError(`length "${spec}": uniform takes MIN,MAX`);
      const min = positiveInt(args[0], spec, "MIN");
      const max = positiveInt(args[1], spec, "MAX");
      if (max < min) throw new InvalidArgumentError(`length "${spec}": MAX must be >= MIN`);
      return { kind, min, max };
    }
    case "normal": {
      if (args.length !== 2 && args.length !== 4) throw new InvalidArgumentError(`length "${spec}": normal takes MEAN,STD or MEAN,STD,MIN,MAX`);
      const mean = nonNegative(args[0], spec, "MEAN");
      const std = nonNegative(args[1], spec, "STD");
      const min = args.length === 4 ? positiveInt(args[2], spec, "MIN") : 1;
      const max = args.length === 4 ? positiveInt(args[3], spec, "MAX") : Number.POSITIVE_INFINITY;
      if (max < min) throw new InvalidArgumentError(`length "${spec}": MAX must be >= MIN`);
      return { kind, mean, std, min, max };
    }
    case "file": {
      if (rest === "") throw new InvalidArgumentError(`length "${spec}": file needs a path`);
      if (readText === undefined) throw new InvalidArgumentError(`length "${spec}": no file reader given`);
      return { kind: "empirical", values: parseLengthList(readText(rest), rest), source: rest };
    }
    default:
      throw new InvalidArgumentError(`length "${spec}": unknown kind "${kind}" (fixed, uniform, normal or file)`);
  }
}

/** One integer per line (blank lines and #-comments skipped) or a JSON array of integers. */
export function parseLengthList(text: string, source: string): number[] {
  const t = text.trim();
  let items: unknown[];
  if (t.startsWith("[")) {
    try {
      items = JSON.parse(t) as unknown[];
    } catch (err) {
      throw new InvalidArgumentError(`lengths file ${source}: not valid JSON`, { cause: err });
    }
    if (!Array.isArray(items)) throw new InvalidArgumentError(`lengths file ${source}: expected a JSON array`);
  } else {
    items = t
      .split(/\r?\n/)
      .map((l) => l.replace(/#.*/, "").trim())
      .filter((l) => l !== "")
      .map(Number);
  }
  if (items.length === 0) throw new InvalidArgumentError(`lengths file ${source}: no lengths`);
  for (const [i, v] of items.entries()) {
    if (typeof v !== "number" || !Number.isInteger(v) || v < 1) {
      throw new InvalidArgumentError(`lengths file ${source}: entry ${i + 1} is not an integer >= 1 (${String(v)})`);
    }
  }
  return items as number[];
}

/** One length drawn from `d`. */
export function sampleLength(d: LengthDist, rng: Rng): number {
  switch (d.kind) {
    case "fixed":
      return d.value;
    case "uniform":
      return rng.int(d.min, d.max);
    case "normal":
      return Math.min(d.max, Math.max(d.min, Math.round(d.mean + d.std * rng.normal())));
    case "empirical":
      return d.values[rng.int(0, d.values.length - 1)]!;
  }
}

/** The spec back as text (for reports). */
export function formatLengthDist(d: LengthDist): string {
  switch (d.kind) {
    case "fixed":
      return `fixed:${d.value}`;
    case "uniform":
      return `uniform:${d.min},${d.max}`;
    case "normal":
      return Number.isFinite(d.max) || d.min !== 1 ? `normal:${d.mean},${d.std},${d.min},${d.max}` : `normal:${d.mean},${d.std}`;
    case "empirical":
      return `file:${d.source}`;
  }
}
