/**
 * Shape checks shared by the dispatch codecs. Activations are row-major [rows, cols] float32
 * matrices (rows = tokens, cols = hidden); tiles run along cols, so a row of `cols` values is
 * ceil(cols / tile) tiles and the last one is partial when cols % tile != 0.
 */
import { DataLossError, InvalidArgumentError } from "@moela/core";

/** Throws unless rows, cols and tile are sane and `x` holds at least rows*cols values. */
export function checkMatrix(codec: string, x: ArrayLike<number>, rows: number, cols: number, tile = 1): void {
  if (!Number.isSafeInteger(rows) || rows < 0) throw new InvalidArgumentError(`${codec}: rows must be an integer >= 0, got ${rows}`);
  if (!Number.isSafeInteger(cols) || cols < 1) throw new InvalidArgumentError(`${codec}: cols must be an integer >= 1, got ${cols}`);
  if (!Number.isSafeInteger(tile) || tile < 1) throw new InvalidArgumentError(`${codec}: tile must be an integer >= 1, got ${tile}`);
  if (x.length < rows * cols) {
    throw new InvalidArgumentError(`${codec}: matrix has ${x.length} values, [${rows}, ${cols}] needs ${rows * cols}`);
  }
}

/** Throws DataLossError when a received buffer does not have the length the shape implies. */
export function checkLength(codec: string, what: string, got: number, want: number): void {
  if (got !== want) throw new DataLossError(`${codec}: ${what} has ${got} elements, expected ${want}`);
}

/** Tiles per row: ceil(cols / tile). */
export function tilesPerRow(cols: number, tile: number): number {
  return Math.ceil(cols / tile);
}

/** Throws for NaN and +-Inf: a scaled codec cannot carry them, and they mean an upstream bug. */
export function nonFinite(codec: string, row: number, col: number, v: number): never {
  throw new InvalidArgumentError(`${codec}: non-finite activation ${v} at row ${row}, col ${col}`);
}
