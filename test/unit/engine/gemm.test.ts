// The native packed GEMM that training's float32 products run on (packages/engine-native/src/gemm-impl.h): every
// element is one float32 fused multiply-add chain over p ascending, whatever the operands' layout, the blocks and
// panels an element falls in, the thread count or the instruction set.
import { describe, expect, it } from "vitest";
import { nativeKernelsAddon } from "@moela/engine";
import { fillRandom } from "../../helpers/random.js";
import { bits } from "../../helpers/bits.js";

const native = nativeKernelsAddon;

const F32 = new Float32Array(1);
const U32 = new Uint32Array(F32.buffer);

/** The float32 next to the float32 f (finite) in the direction of `toward` (not f). */
function nextFloat(f: number, toward: number): number {
  if (f === 0) {
    U32[0] = 1;
    return toward > 0 ? F32[0]! : -F32[0]!;
  }
  F32[0] = f;
  // Sign and magnitude: a larger bit pattern is a larger magnitude.
  U32[0] = toward > f === f > 0 ? U32[0]! + 1 : U32[0]! - 1;
  return F32[0]!;
}

/** fmaf(a, b, s): a * b is exact in a double, their sum with s is t + e exactly (TwoSum), rounded once to float32. */
function fmaf(a: number, b: number, s: number): number {
  const p = a * b;
  const t = p + s;
  const bp = t - s;
  const e = p - bp + (s - (t - bp));
  const r = Math.fround(t);
  if (r === t || e === 0) return r;
  // t was rounded to r; if t lies exactly halfway between r and its other neighbour, e decides the side.
  const other = nextFloat(r, t);
  if ((r + other) / 2 !== t) return r;
  return e > 0 === other > r ? other : r;
}

type Layout = "nt" | "nn" | "tn";

/** The strides that read A and B in a layout (as training's ops do): nt A [m, k] B [n, k]; nn B [k, n]; tn A [k, m] too. */
function strides(layout: Layout, m: number, n: number, k: number): [number, number, number, number] {
  const a: [number, number] = layout === "tn" ? [1, m] : [k, 1];
  const b: [number, number] = layout === "nt" ? [k, 1] : [1, n];
  return [...a, ...b];
}

function reference(layout: Layout, A: Float32Array, B: Float32Array, m: number, n: number, k: number): Float32Array {
  const [ar, ac, br, bc] = strides(layout, m, n, k);
  const C = new Float32Array(m * n);
  for (let i = 0; i < m; i++)
    for (let j = 0; j < n; j++) {
      let s = 0;
      for (let p = 0; p < k; p++) s = fmaf(A[i * ar + p * ac]!, B[j * br + p * bc]!, s);
      C[i * n + j] = s;
    }
  return C;
}

function product(layout: Layout, A: Float32Array, B: Float32Array, m: number, n: number, k: number, C: Float32Array, accumulate: 0 | 1): void {
  const [ar, ac, br, bc] = strides(layout, m, n, k);
  native!.gemm(A, 0, ar, ac, B, 0, br, bc, C, 0, n, m, n, k, accumulate);
}

// Around the panel (12 or 6 rows, 32 or 16 columns), block (256 along p, 96 or 48 rows, 512 columns) and item edges.
const SHAPES: Array<[number, number, number]> = [
  [1, 1, 1],
  [13, 33, 7],
  [11, 17, 257],
  [97, 513, 300],
  [48, 31, 512],
  [2, 600, 3],
];

describe.skipIf(native === null)("native gemm", () => {
  it.each(SHAPES)("[%i x %i] by %i: every layout is one fused multiply-add chain per element, or that added to C", (m, n, k) => {
    for (const layout of ["nt", "nn", "tn"] as const) {
      const A = fillRandom(new Float32Array(m * k), m * 7 + k);
      const B = fillRandom(new Float32Array(n * k), n * 11 + k);
      const want = reference(layout, A, B, m, n, k);
      const C = new Float32Array(m * n).fill(Number.NaN);
      product(layout, A, B, m, n, k, C, 0);
      expect(bits(C), layout).toEqual(bits(want));
      const acc = fillRandom(new Float32Array(m * n), 3);
      const sum = acc.map((c, i) => Math.fround(c + want[i]!));
      product(layout, A, B, m, n, k, acc, 1);
      expect(bits(acc), `${layout} accumulated`).toEqual(bits(sum));
    }
  });

  it("k = 0 gives zeros, or leaves C as it was", () => {
    const C = new Float32Array(6).fill(5);
    native!.gemm(new Float32Array(0), 0, 0, 1, new Float32Array(0), 0, 0, 1, C, 0, 3, 2, 3, 0, 1);
    expect(Array.from(C)).toEqual([5, 5, 5, 5, 5, 5]);
    native!.gemm(new Float32Array(0), 0, 0, 1, new Float32Array(0), 0, 0, 1, C, 0, 3, 2, 3, 0, 0);
    expect(Array.from(C)).toEqual([0, 0, 0, 0, 0, 0]);
  });

  it("offsets and a wider C stride address a sub-block, and nothing outside it is written", () => {
    const [m, n, k] = [5, 20, 9];
    const A = fillRandom(new Float32Array(m * k), 1);
    const B = fillRandom(new Float32Array(n * k), 2);
    const want = reference("nt", A, B, m, n, k);
    const pad = (x: Float32Array, before: number) => {
      const out = new Float32Array(before + x.length);
      out.set(x, before);
      return out;
    };
    const C = new Float32Array(3 + m * 25).fill(-1);
    native!.gemm(pad(A, 4), 4, k, 1, pad(B, 7), 7, k, 1, C, 3, 25, m, n, k, 0);
    for (let i = 0; i < m; i++) {
      expect(bits(C.subarray(3 + i * 25, 3 + i * 25 + n))).toEqual(bits(want.subarray(i * n, i * n + n)));
      expect(Array.from(C.subarray(3 + i * 25 + n, 3 + i * 25 + 25))).toEqual(new Array(5).fill(-1));
    }
    expect(Array.from(C.subarray(0, 3))).toEqual([-1, -1, -1]);
  });

  it("the same bits on one thread, two threads and every instruction set", () => {
    const [m, n, k] = [200, 700, 300];
    const A = fillRandom(new Float32Array(m * k), 5);
    const B = fillRandom(new Float32Array(n * k), 6);
    const run = () => {
      const C = new Float32Array(m * n);
      product("nn", A, B, m, n, k, C, 0);
      return bits(C);
    };
    const before = native!.isa();
    native!.setThreads(1);
    const one = run();
    native!.setThreads(2, 0);
    try {
      expect(run()).toEqual(one);
      for (const isa of native!.supportedIsas()) {
        native!.selectIsa(isa);
        expect(run(), isa).toEqual(one);
      }
    } finally {
      native!.selectIsa(before);
    }
  });

  it("refuses operands that do not fit their shapes, with a RangeError instead of a crash", () => {
    const A = new Float32Array(6);
    const B = new Float32Array(12);
    const C = new Float32Array(8);
    expect(() => native!.gemm(new Float32Array(5), 0, 3, 1, B, 0, 3, 1, C, 0, 4, 2, 4, 3, 0)).toThrow(/A is too short/);
    expect(() => native!.gemm(A, 0, 3, 1, B, 1, 3, 1, C, 0, 4, 2, 4, 3, 0)).toThrow(/B is too short/);
    expect(() => native!.gemm(A, 0, 3, 1, B, 0, 3, 1, new Float32Array(7), 0, 4, 2, 4, 3, 0)).toThrow(/C is too short/);
    expect(() => native!.gemm(A, 0, 3, 1, B, 0, 3, 1, C, 0, 3, 2, 4, 3, 0)).toThrow(/overlap/);
    expect(() => native!.gemm(A, 0, -3, 1, B, 0, 3, 1, C, 0, 4, 2, 4, 3, 0)).toThrow(/negative/);
    expect(() => native!.gemm(new Float64Array(6) as unknown as Float32Array, 0, 3, 1, B, 0, 3, 1, C, 0, 4, 2, 4, 3, 0)).toThrow(/Float32Array/);
  });
});
