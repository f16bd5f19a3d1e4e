/**
 * Measures LogFMT-8 against FP8 E4M3 with 1x128 tiles, the comparison the DeepSeek-V3 ISCA'25
 * paper makes. Prints the numbers; asserts only what the measurement here supports.
 */
import { describe, expect, it } from "vitest";
import { decodeFp8Tiles, decodeLogFmt, encodeFp8Tiles, encodeLogFmt } from "@moela/moe-dispatch";
import { gaussianMatrix, rng } from "./random.js";

interface ErrorStats {
  /** ||x - y||_2 / ||x||_2 */
  relL2: number;
  /** mean over nonzero x of |x - y| / |x| */
  meanRel: number;
}

function errorStats(x: Float32Array, y: Float32Array): ErrorStats {
  let num = 0;
  let den = 0;
  let rel = 0;
  let nz = 0;
  for (let i = 0; i < x.length; i++) {
    const d = x[i]! - y[i]!;
    num += d * d;
    den += x[i]! * x[i]!;
    if (x[i] !== 0) {
      rel += Math.abs(d) / Math.abs(x[i]!);
      nz++;
    }
  }
  return { relL2: Math.sqrt(num / den), meanRel: rel / nz };
}

const ROWS = 64;
const HIDDEN = 7168;

function measure(x: Float32Array): { fp8: ErrorStats; logfmt8: ErrorStats } {
  return {
    fp8: errorStats(x, decodeFp8Tiles(encodeFp8Tiles(x, ROWS, HIDDEN), ROWS, HIDDEN)),
    logfmt8: errorStats(x, decodeLogFmt(encodeLogFmt(x, ROWS, HIDDEN, 8), ROWS, HIDDEN)),
  };
}

function report(label: string, m: { fp8: ErrorStats; logfmt8: ErrorStats }): void {
  const f = (v: number): string => (100 * v).toFixed(3) + "%";
  console.log(
    `[${label}] ${ROWS}x${HIDDEN}: FP8 E4M3/1x128 relL2 ${f(m.fp8.relL2)} meanRel ${f(m.fp8.meanRel)} | ` +
      `LogFMT-8 relL2 ${f(m.logfmt8.relL2)} meanRel ${f(m.logfmt8.meanRel)}`,
  );
}

describe("LogFMT-8 vs FP8 E4M3 (1x128 tiles), measured", () => {
  it("standard gaussian activations: LogFMT-8 has the lower error", () => {
    const m = measure(gaussianMatrix(2025, ROWS, HIDDEN));
    report("gaussian", m);
    expect(m.logfmt8.relL2).toBeLessThan(m.fp8.relL2);
    expect(m.logfmt8.meanRel).toBeLessThan(m.fp8.meanRel);
  });

  it("gaussian with outlier channels (1% of channels x50): LogFMT-8 still has the lower error", () => {
    const rand = rng(77);
    const outlier = new Uint8Array(HIDDEN).map(() => (rand() < 0.01 ? 1 : 0));
    const x = gaussianMatrix(2026, ROWS, HIDDEN);
    for (let i = 0; i < x.length; i++) if (outlier[i % HIDDEN]) x[i] = x[i]! * 50;
    const m = measure(x);
    report("outlier channels", m);
    expect(m.logfmt8.relL2).toBeLessThan(m.fp8.relL2);
  });
});
