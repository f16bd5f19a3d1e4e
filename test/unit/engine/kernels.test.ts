// The kernel backends (packages/engine/src/kernels): the native `fast` kernels against the TypeScript ones,
// on every weight kind and awkward shape, and the invariances the engine's bit-for-bit tests rest on:
// an output element does not depend on the batch around it, the layout, the thread count or the instruction set.
import { afterAll, describe, expect, it } from "vitest";
import {
  absorbedAttendArgs,
  decompressedAttendArgs,
  F8_E4M3_TO_F32,
  attendTs,
  f32ToBf16Bits,
  f32ToF16Bits,
  fastKernelsAvailable,
  argmax,
  argmaxOn,
  kernelsByName,
  logSumExp,
  matmul,
  selectNucleus,
  matmulTransposed,
  nativeKernelsAddon,
  parseKernelsName,
  quantizeFp8Block,
  type AttendArgs,
  type WeightMatrix,
} from "@moela/engine";
import { fillRandom } from "../../helpers/random.js";
import { bits } from "../../helpers/bits.js";

const native = nativeKernelsAddon;
const fast = kernelsByName("fast");

const fill = fillRandom;

type Kind = "f32" | "bf16" | "f16" | "fp8";

/**
 * Calls `run` until a pool worker computed a chunk in one of the calls (the caller takes chunks too, so on a busy
 * machine a worker may miss a few), for at most 10 s; true when one did.
 */
function untilAWorkerTakesPart(run: () => void): boolean {
  const before = native!.workerChunks();
  const deadline = performance.now() + 10_000;
  do run();
  while (native!.workerChunks() === before && performance.now() < deadline);
  return native!.workerChunks() > before;
}

function makeWeight(kind: Kind, rows: number, cols: number, block: [number, number] = [128, 128]): WeightMatrix {
  const v = fill(new Float32Array(rows * cols), rows * 131 + cols);
  switch (kind) {
    case "f32":
      return { kind, rows, cols, data: v };
    case "bf16":
      return { kind, rows, cols, data: Uint16Array.from(v, (x) => f32ToBf16Bits(x)) };
    case "f16":
      return { kind, rows, cols, data: Uint16Array.from(v, (x) => f32ToF16Bits(x)) };
    case "fp8": {
      const q = quantizeFp8Block(v, rows, cols, block[0], block[1]);
      return { kind, rows, cols, data: q.data, scaleInv: q.scaleInv, blockRows: block[0], blockCols: block[1] };
    }
  }
}

/** max |a - b| / (1 + |b|): float32 against float64 accumulation. */
function relErr(a: ArrayLike<number>, b: ArrayLike<number>): number {
  let m = 0;
  for (let i = 0; i < a.length; i++) m = Math.max(m, Math.abs(a[i]! - b[i]!) / (1 + Math.abs(b[i]!)));
  return m;
}

const SHAPES: ReadonlyArray<[Kind, number, number, [number, number]?]> = [
  ["f32", 37, 100],
  ["bf16", 64, 256],
  ["bf16", 5, 33],
  ["bf16", 7, 300], // AVX2's widened panel takes 128 columns at a time: two whole chunks and a tail
  ["f16", 18, 70],
  ["fp8", 200, 300], // partial scale blocks in both directions
  ["fp8", 9, 24, [8, 8]], // blocks narrower than a vector
  ["fp8", 33, 100, [16, 48]], // block columns not a multiple of 16
];

describe.skipIf(!fastKernelsAvailable())("native kernels", () => {
  afterAll(() => native!.setThreads(1, 1 << 16));

  it("parses backend names and rejects others", () => {
    expect(parseKernelsName("fast")).toBe("fast");
    expect(() => parseKernelsName("turbo")).toThrow(/kernels must be one of fast, portable, reference/);
  });

  it("decodes every finite FP8 e4m3 code exactly (shift and multiply, no table)", () => {
    const codes = Array.from({ length: 256 }, (_, b) => b).filter((b) => (b & 0x7f) !== 0x7f);
    const n = codes.length;
    const w: WeightMatrix = { kind: "fp8", rows: 1, cols: n, data: Uint8Array.from(codes), scaleInv: new Float32Array([1, 1]), blockRows: 128, blockCols: 128 };
    // x = one-hot rows: y[t] = w[t] exactly.
    const x = new Float32Array(n * n);
    for (let t = 0; t < n; t++) x[t * n + t] = 1;
    const y = new Float32Array(n);
    fast.matmul(w, x, n, y, { yStride: 1 });
    // (+0 on both sides: the sum of -0 * 1 and the other lanes' +0 is +0.)
    expect(Array.from(y, (v) => v + 0)).toEqual(codes.map((b) => F8_E4M3_TO_F32[b]! + 0));
  });

  it.each(SHAPES)("matmul %s [%i x %i] matches float64 and is batch invariant", (kind, rows, cols, block) => {
    const w = makeWeight(kind, rows, cols, block);
    for (const T of [1, 2, 5, 37]) {
      const x = fill(new Float32Array(T * cols), T + 7);
      const y = new Float32Array(T * rows);
      const ref = new Float32Array(T * rows);
      fast.matmul(w, x, T, y);
      matmul(w, x, T, ref);
      expect(relErr(y, ref)).toBeLessThan(2e-5);
      // Row t of a batch is the same bits as token t alone.
      for (const t of [0, T - 1]) {
        const one = new Float32Array(rows);
        fast.matmul(w, x.subarray(t * cols, (t + 1) * cols), 1, one);
        expect(bits(y.subarray(t * rows, (t + 1) * rows))).toEqual(bits(one));
      }
    }
  });

  it("a row slice with strides and groups gives the same bits as the full product", () => {
    const w = makeWeight("fp8", 96, 160);
    const T = 6;
    const x = fill(new Float32Array(T * 3 * 160), 3); // three groups' inputs side by side per token
    const full = new Float32Array(T * 96);
    // Group g reads x[t, g*160 ..] and rows [g*32 + 8, g*32 + 8 + 20).
    const y = new Float32Array(T * 3 * 20);
    fast.matmul(w, x, T, y, { xStride: 3 * 160, r0: 8, nRows: 20, yStride: 3 * 20, groups: 3, rowStep: 32, xStep: 160, yStep: 20 });
    for (let g = 0; g < 3; g++) {
      const xg = new Float32Array(T * 160);
      for (let t = 0; t < T; t++) xg.set(x.subarray(t * 480 + g * 160, t * 480 + g * 160 + 160), t * 160);
      fast.matmul(w, xg, T, full);
      for (let t = 0; t < T; t++) {
        expect(bits(y.subarray(t * 60 + g * 20, t * 60 + g * 20 + 20))).toEqual(bits(full.subarray(t * 96 + g * 32 + 8, t * 96 + g * 32 + 28)));
      }
    }
  });

  it.each(SHAPES)("matmulT %s [%i x %i] (w transposed) matches float64 and is batch invariant", (kind, rows, cols, block) => {
    const w = makeWeight(kind, rows, cols, block);
    const n = Math.min(rows, 40);
    for (const T of [1, 3, 9]) {
      const v = fill(new Float32Array(T * n), T + 11);
      const out = new Float32Array(T * cols);
      const ref = new Float32Array(T * cols);
      fast.matmulT(w, v, T, out, { n, r0: rows - n });
      matmulTransposed(w, v, T, ref, { n, r0: rows - n });
      expect(relErr(out, ref)).toBeLessThan(2e-5);
      const one = new Float32Array(cols);
      fast.matmulT(w, v.subarray((T - 1) * n, T * n), 1, one, { n, r0: rows - n });
      expect(bits(out.subarray((T - 1) * cols))).toEqual(bits(one));
    }
  });

  /** MLA-shaped attention arguments: absorbed layout over a [L, D] latent context. */
  function attendCase(n: number, start: number, out: Float32Array, H = 4, R = 40, dr = 8): AttendArgs {
    const D = R + dr;
    const L = start + n;
    const qa = fill(new Float32Array(n * H * R), 5 + n);
    const qb = fill(new Float32Array(n * H * dr), 9 + n);
    const ctx = fill(new Float32Array(L * D), 13);
    return absorbedAttendArgs({ H, R, dn: 0, dr }, { latents: ctx, qAbs: qa, q: qb, out, row: 0, n, start, scale: 0.3 });
  }

  // An item takes a block of tokens when few heads leave registers free: 12 tokens at 1 head, 3 at 4, 2 at 6,
  // 1 at 8 and up (H = 12: a group of 8 heads and one of 4).
  it.each([1, 4, 6, 12])("attend matches float64 softmax attention, and n tokens at once equal one at a time (%d heads)", (H) => {
    const R = 40;
    const n = 7;
    const start = 150;
    const out = new Float32Array(n * H * R);
    const ref = new Float32Array(n * H * R);
    const args = attendCase(n, start, out, H, R);
    fast.attend(args);
    attendTs({ ...args, out: ref });
    expect(relErr(out, ref)).toBeLessThan(2e-5);
    for (let j = 0; j < n; j++) {
      const one = new Float32Array(H * R);
      fast.attend({ ...args, qaOff: j * H * R, qbOff: j * H * 8, out: one, n: 1, start: start + j });
      expect(bits(out.subarray(j * H * R, (j + 1) * H * R))).toEqual(bits(one));
    }
  });

  // Decompressed attention (prefill) has a K_nope | V row per head, head-major: an item holds one head and a block
  // of up to 12 tokens. Values of 64 take the one-head loop over whole 32-value chunks; 40 the general one.
  it.each([
    [3, 64],
    [5, 40],
  ])("decompressed attention (%d heads, values %d): float64's value, n tokens at once equal one at a time, on every instruction set", (H, dv) => {
    const dn = 24,
      dr = 8,
      R = 16,
      n = 30,
      start = 7;
    const L = start + n;
    const latents = fill(new Float32Array(L * (R + dr)), 17);
    const kv = fill(new Float32Array(H * L * (dn + dv)), 19);
    const q = fill(new Float32Array(n * H * (dn + dr)), 23);
    // kv holds the call's start + n positions per head, as the engine's does: a shorter call gets each head's first rows.
    const kvFor = (positions: number): Float32Array => {
      const hs = dn + dv;
      const out = new Float32Array(H * positions * hs);
      for (let h = 0; h < H; h++) out.set(kv.subarray(h * L * hs, (h * L + positions) * hs), h * positions * hs);
      return out;
    };
    const args = (out: Float32Array, row: number, count: number, from: number, kvs = kvFor(from + count)): AttendArgs =>
      decompressedAttendArgs({ H, R, dn, dr, dv }, { latents, kv: kvs, q, out, row, n: count, start: from, scale: 0.2 });
    const before = native!.isa();
    const results = native!.supportedIsas().map((isa) => {
      native!.selectIsa(isa);
      const out = new Float32Array(n * H * dv);
      fast.attend(args(out, 0, n, start));
      const ref = new Float32Array(n * H * dv);
      attendTs(args(ref, 0, n, start));
      expect(relErr(out, ref)).toBeLessThan(2e-5);
      for (let j = 0; j < n; j++) {
        const one = new Float32Array((j + 1) * H * dv);
        fast.attend(args(one, j, 1, start + j));
        expect(bits(one.subarray(j * H * dv))).toEqual(bits(out.subarray(j * H * dv, (j + 1) * H * dv)));
      }
      return bits(out);
    });
    native!.selectIsa(before);
    for (let i = 1; i < results.length; i++) expect(results[i]).toEqual(results[0]);
    // A kv shorter than H x positions x (dn + dv) is refused before any kernel reads it.
    expect(() => args(new Float32Array(n * H * dv), 0, n, start + 1, kv)).toThrow(/kv holds/);
  });

  it("attend reads a paged cache slab in place, through the block table, with the bits of the gathered rows", () => {
    const H = 4,
      R = 40,
      dr = 8,
      D = R + dr,
      bs = 4,
      n = 3,
      start = 9;
    const L = start + n;
    const table = Int32Array.from([5, 0, 3, 6]); // positions 0-3 in block 5, 4-7 in block 0, ...
    const slab = fill(new Float32Array(8 * bs * D), 21);
    const ctx = new Float32Array(L * D);
    for (let p = 0; p < L; p++) ctx.set(slab.subarray((table[p >> 2]! * bs + (p % bs)) * D, (table[p >> 2]! * bs + (p % bs) + 1) * D), p * D);
    const gathered = new Float32Array(n * H * R);
    const args = attendCase(n, start, gathered, H, R, dr);
    fast.attend({ ...args, ka: ctx, kb: ctx, val: ctx });
    const paged = new Float32Array(n * H * R);
    fast.attend({ ...args, ka: slab, kb: slab, val: slab, out: paged, blockTable: table, blockSize: bs });
    expect(bits(paged)).toEqual(bits(gathered));
    const ts = new Float32Array(n * H * R);
    attendTs({ ...args, ka: slab, kb: slab, val: slab, out: ts, blockTable: table, blockSize: bs });
    expect(relErr(paged, ts)).toBeLessThan(2e-5);
    // A block id past the slab is refused, not read.
    expect(() => fast.attend({ ...args, ka: slab, kb: slab, val: slab, out: paged, blockTable: Int32Array.from([5, 0, 8]), blockSize: bs })).toThrow(
      /too short/,
    );
  });

  it("every instruction set this CPU has gives the same bits", () => {
    const isas = native!.supportedIsas();
    expect(isas).toContain("portable");
    const before = native!.isa();
    const results = isas.map((isa) => {
      native!.selectIsa(isa);
      const outs: number[][] = [];
      for (const [kind, rows, cols, block] of SHAPES) {
        const w = makeWeight(kind, rows, cols, block);
        // Each token count takes another tile shape on some instruction sets (one token, a pair, a partial tile or
        // AVX2's one row by three or four FP8 tokens, and the widened panel beyond four).
        for (const T of [1, 2, 3, 4, 9]) {
          const x = fill(new Float32Array(T * cols), T);
          const y = new Float32Array(T * rows);
          fast.matmul(w, x, T, y);
          outs.push(bits(y));
        }
        const v = fill(new Float32Array(3 * rows), 2);
        const o = new Float32Array(3 * cols);
        fast.matmulT(w, v, 3, o);
        outs.push(bits(o));
      }
      const a = new Float32Array(3 * 4 * 40);
      fast.attend(attendCase(3, 20, a));
      outs.push(bits(a));
      // Values in whole vectors of 32 and two tokens per item of 6 heads: the weighted sum's loop over positions
      // every pair sees, then the block's own causal tail.
      const b = new Float32Array(5 * 6 * 64);
      fast.attend(attendCase(5, 37, b, 6, 64));
      outs.push(bits(b));
      return outs;
    });
    native!.selectIsa(before);
    for (let i = 1; i < results.length; i++) expect(results[i]).toEqual(results[0]);
    expect(() => native!.selectIsa("avx9000")).toThrow(/not available/);
  });

  it("logSumExp: a log-softmax's normalizer, float64's value to 1e-6, the same bits on every instruction set", () => {
    const cases: Float32Array[] = [1, 15, 16, 17, 4096, 129_280].map((n) => Float32Array.from(fill(new Float32Array(n), n), (v) => 12 * v));
    cases.push(Float32Array.from([1000, 999, -Infinity, 998.5])); // large logits, a masked token
    cases.push(Float32Array.from({ length: 40 }, (_, i) => (i === 7 ? 0 : -200))); // terms below float32's exp range
    const isas = native!.supportedIsas();
    const before = native!.isa();
    const perIsa = isas.map((isa) => {
      native!.selectIsa(isa);
      return cases.map((x) => {
        const out = new Float64Array(2);
        native!.logSumExp(x, 0, x.length, out);
        return Array.from(out);
      });
    });
    native!.selectIsa(before);
    for (let i = 1; i < perIsa.length; i++) expect(perIsa[i], isas[i]).toEqual(perIsa[0]);
    cases.forEach((x, k) => {
      const want = new Float64Array(2);
      logSumExp(x, want);
      const [m, lse] = perIsa[0]![k]!;
      expect(m).toBe(want[0]);
      expect(Math.abs(lse! - want[1]!), `case ${k}`).toBeLessThan(1e-6);
    });
    // A slice through off and n, and the fast backend's own entry point.
    const x = cases[4]!;
    const a = new Float64Array(2);
    native!.logSumExp(x, 100, 50, a);
    const b = new Float64Array(2);
    fast.logSumExp!(x.slice(100, 150), b);
    expect(Array.from(a)).toEqual(Array.from(b));
  });

  it("logSumExp: NaN, +Infinity or only -Infinity give NaN; bad arguments a RangeError", () => {
    const out = new Float64Array(2);
    for (const x of [
      [0, Number.NaN, 1],
      [0, Infinity],
      [-Infinity, -Infinity],
    ]) {
      native!.logSumExp(Float32Array.from(x), 0, x.length, out);
      expect(out[1], JSON.stringify(x)).toBeNaN();
    }
    expect(() => native!.logSumExp(new Float32Array(4), 2, 3, out)).toThrow(/too short/);
    expect(() => native!.logSumExp(new Float32Array(4), 0, 0, out)).toThrow(RangeError);
    expect(() => native!.logSumExp(new Float32Array(4), 0, 4, new Float64Array(1))).toThrow(RangeError);
  });

  it("softmaxWeights: a sampler's exp((x - max) / T) with min_p, float64's value to 1e-6, the same bits on every instruction set", () => {
    const x = Float32Array.from(fill(new Float32Array(1000), 77), (v) => 6 * v);
    x[123] = -Infinity; // a token masked by a grammar
    let max = -Infinity;
    for (const v of x) if (v > max) max = v;
    const ids = Int32Array.from({ length: 37 }, (_, j) => (j * 53) % 1000);
    const run = (isa: string, withIds: boolean, minP: number): [number, number[]] => {
      native!.selectIsa(isa);
      const out = new Float64Array(withIds ? ids.length : x.length);
      const sum = native!.softmaxWeights(x, withIds ? ids : null, out.length, max, 1 / 0.7, minP, out);
      return [sum, Array.from(out)];
    };
    const before = native!.isa();
    for (const [withIds, minP] of [
      [false, 0],
      [true, 0],
      [false, 0.05],
    ] as const) {
      const perIsa = native!.supportedIsas().map((isa) => run(isa, withIds, minP));
      native!.selectIsa(before);
      for (const r of perIsa.slice(1)) expect(r).toEqual(perIsa[0]);
      const [sum, w] = perIsa[0]!;
      let want = 0;
      w.forEach((wj, j) => {
        const e = Math.exp((x[withIds ? ids[j]! : j]! - max) / 0.7);
        const keep = e >= minP;
        if (keep) expect(Math.abs(wj - e), `weight ${j}`).toBeLessThan(1e-6 * Math.max(1, e));
        else expect(wj).toBe(0);
        want += wj;
      });
      expect(Math.abs(sum - want)).toBeLessThan(1e-9 * want);
    }
    const [, w] = run(before, false, 0);
    expect(w[x.indexOf(max)]).toBe(1); // the largest logit's weight is exactly 1
    expect(w[123]).toBe(0);
    // A temperature of 1e-40: 1/T overflows float32, and the weights are still one-hot, not NaN.
    const hot = new Float64Array(x.length);
    expect(native!.softmaxWeights(x, null, x.length, max, 1e40, 0, hot)).toBe(1);
    expect(hot[x.indexOf(max)]).toBe(1);
    expect(() => native!.softmaxWeights(x, Int32Array.from([1000]), 1, max, 1, 0, new Float64Array(1))).toThrow(/outside x/);
    expect(() => native!.softmaxWeights(x, null, 1001, max, 1, 0, new Float64Array(1001))).toThrow(/larger/);
  });

  it("argmax: the first largest logit on every instruction set, as the TypeScript argmax; NaN and +Infinity left to it", () => {
    const rows = [1, 16, 17, 1000, 4096].map((n) => Float32Array.from(fill(new Float32Array(n), n + 3), (v) => Math.round(v * 8) / 2)); // ties
    rows.push(Float32Array.from([-Infinity, -3, -Infinity, -3]));
    const before = native!.isa();
    for (const isa of native!.supportedIsas()) {
      native!.selectIsa(isa);
      for (const x of rows) expect(native!.argmax(x, 0, x.length), `${isa}, ${x.length} logits`).toBe(argmax(x));
      expect(native!.argmax(Float32Array.from([0, 5, 7, 7]), 1, 3)).toBe(1); // counted from off
      for (const bad of [
        [0, Number.NaN, 1],
        [...new Array<number>(20).fill(0), Infinity],
      ])
        expect(native!.argmax(Float32Array.from(bad), 0, bad.length)).toBe(-1);
    }
    native!.selectIsa(before);
    const k = fast.sampler!;
    expect(argmaxOn(k, rows[3]!)).toBe(argmax(rows[3]!));
    expect(() => argmaxOn(k, Float32Array.from([0, Number.NaN]))).toThrow(/NaN/);
    expect(() => argmaxOn(k, Float32Array.from([-Infinity, -Infinity]))).toThrow(/-Infinity/);
  });

  it("nucleus: top-p's kept set, in the same order with the same weights as the TypeScript selectNucleus", () => {
    for (const [n, seed] of [
      [1, 1],
      [5, 2],
      [17, 3],
      [1000, 4],
      [4096, 5],
    ] as const) {
      const logits = Float32Array.from(fill(new Float32Array(n), seed), (v) => Math.round(v * 12) / 3); // ties
      let max = -Infinity;
      for (const v of logits) if (v > max) max = v;
      const w0 = Float64Array.from(logits, (v) => (Math.exp(v - max) < 0.01 ? 0 : Math.exp(v - max))); // min_p's zeros
      const total = w0.reduce((a, b) => a + b, 0);
      for (const topP of [1e-6, 0.1, 0.5, 0.9, 0.999]) {
        // Candidate order as top-k leaves it (permuted), so the partitions have work to do.
        const order = Int32Array.from({ length: n }, (_, j) => (j * 7919) % n);
        const want = { ids: order.slice(), w: Float64Array.from(order, (id) => w0[id]!) };
        const got = { ids: order.slice(), w: Float64Array.from(order, (id) => w0[id]!) };
        const m = selectNucleus(logits, want.ids, want.w, n, topP * total);
        expect(native!.nucleus(logits, got.ids, got.w, n, topP * total), `${n} candidates, top_p ${topP}`).toBe(m);
        expect(Array.from(got.ids)).toEqual(Array.from(want.ids));
        expect(Array.from(got.w)).toEqual(Array.from(want.w));
      }
    }
    expect(() => native!.nucleus(new Float32Array(4), Int32Array.from([0, 9]), new Float64Array(2), 2, 1)).toThrow(/outside logits/);
  });

  it("threads split the work without changing a bit", () => {
    const w = makeWeight("fp8", 300, 256);
    const x = fill(new Float32Array(20 * 256), 4);
    native!.setThreads(1);
    const one = new Float32Array(20 * 300);
    fast.matmul(w, x, 20, one);
    native!.setThreads(2, 0);
    expect(native!.threads()).toBe(2);
    const two = new Float32Array(20 * 300);
    expect(untilAWorkerTakesPart(() => fast.matmul(w, x, 20, two))).toBe(true);
    expect(bits(two)).toEqual(bits(one));
  });

  it("caller-only: no worker takes a chunk while it is on, the same bits, and the workers join again after", () => {
    const w = makeWeight("fp8", 300, 256);
    const x = fill(new Float32Array(20 * 256), 6);
    native!.setThreads(1);
    const one = new Float32Array(20 * 300);
    fast.matmul(w, x, 20, one);
    native!.setThreads(2, 0);
    try {
      native!.setCallerOnly(true);
      const before = native!.workerChunks();
      for (let i = 0; i < 50; i++) {
        const y = new Float32Array(20 * 300);
        fast.matmul(w, x, 20, y);
        expect(bits(y)).toEqual(bits(one));
      }
      expect(native!.workerChunks()).toBe(before);
      native!.setCallerOnly(false);
      const again = new Float32Array(20 * 300);
      expect(untilAWorkerTakesPart(() => fast.matmul(w, x, 20, again))).toBe(true);
      expect(bits(again)).toEqual(bits(one));
    } finally {
      native!.setCallerOnly(false);
    }
    expect(() => (native!.setCallerOnly as (on: unknown) => void)("yes")).toThrow(/boolean/);
  });

  it("more threads than cores, jobs back to back of every size: every output written, the same bits as one thread", () => {
    // Five threads on these 2-core machines: workers are often paused or late, so shares get stolen, and jobs of
    // fewer items than threads leave shares empty. A late worker must not compute an item of a job that is over.
    const cases = [1, 2, 3, 4, 5, 7, 9, 17, 64, 300].flatMap((rows) => [1, 20].map((T) => ({ w: makeWeight("fp8", rows, 256), T })));
    const x = fill(new Float32Array(20 * 256), 5);
    native!.setThreads(1);
    const want = cases.map(({ w, T }) => {
      const y = new Float32Array(T * w.rows);
      fast.matmul(w, x, T, y);
      return bits(y);
    });
    native!.setThreads(5, 0);
    for (let round = 0; round < 40; round++) {
      cases.forEach(({ w, T }, i) => {
        const y = new Float32Array(T * w.rows).fill(Number.NaN);
        fast.matmul(w, x, T, y);
        expect(bits(y), `${w.rows} rows, ${T} tokens, round ${round}`).toEqual(want[i]);
      });
    }
    native!.setThreads(2, 0);
  });

  it("refuses shapes that do not fit their arrays, with a RangeError instead of a crash", () => {
    const w = makeWeight("bf16", 16, 32);
    const y = new Float32Array(16);
    expect(() => fast.matmul(w, new Float32Array(31), 1, y)).toThrow(/x is too short/);
    expect(() => fast.matmul(w, new Float32Array(32), 1, new Float32Array(15))).toThrow(/y is too short/);
    expect(() => fast.matmul(w, new Float32Array(32), 1, y, { r0: 8, nRows: 9 })).toThrow(/rows outside the weight/);
    expect(() => fast.matmul({ kind: "bf16", rows: 16, cols: 32, data: new Uint16Array(10) }, new Float32Array(32), 1, y)).toThrow(/shorter than rows \* cols/);
    const fp8 = makeWeight("fp8", 16, 32);
    expect(() => fast.matmul({ ...fp8, kind: "fp8", scaleInv: new Float32Array(0) } as WeightMatrix, new Float32Array(32), 1, y)).toThrow(/scale grid/);
    const out = new Float32Array(4 * 40);
    expect(() => fast.attend({ ...attendCase(1, 10, out), start: 11 })).toThrow(/too short/);
  });
});

describe("kernel backends without the addon", () => {
  it("portable and reference are TypeScript backends with their own thread pools", () => {
    for (const name of ["portable", "reference"] as const) {
      const k = kernelsByName(name);
      expect(k.name).toBe(name);
      expect(k.isa).toBe("typescript");
      expect(k.threadsAreProcessWide).toBe(false);
    }
  });
});
