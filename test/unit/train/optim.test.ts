// The optimizer's float32 loops in the addon against their TypeScript definitions in packages/train/src/optim.ts:
// the same doubles in the same order, so the same bits.
import { describe, expect, it } from "vitest";
import { nativeKernelsAddon } from "@moela/engine";
import { adamw, adamwLoop, reduceRange, sumSquares, type AdamHyper, type OptimSlot } from "@moela/train";
import { fillRandom } from "../../helpers/random.js";
import { bits } from "../../helpers/bits.js";

const H: AdamHyper = { lr: 3e-3, weightDecay: 0.1, clipScale: 0.37, beta1: 0.9, beta2: 0.95, bc1: 1 - 0.9 ** 7, bc2: 1 - 0.95 ** 7, eps: 1e-8 };

describe.skipIf(nativeKernelsAddon === null)("the optimizer's float32 loops", () => {
  it("adamw on float32 arrays gives the TypeScript loop's bits in w, m and v", () => {
    const n = 10_001;
    const make = () => ({
      w: fillRandom(new Float32Array(n), 1),
      g: fillRandom(new Float32Array(n), 2).map((x) => x * 1e-3),
      m: fillRandom(new Float32Array(n), 3).map((x) => x * 1e-4),
      v: fillRandom(new Float32Array(n), 4).map((x) => x * x * 1e-7),
    });
    const a = make();
    const b = make();
    adamw(a.w, a.g, a.m, a.v, H.lr, 1 - H.lr * H.weightDecay, H);
    adamwLoop(b.w, b.g, b.m, b.v, H.lr, 1 - H.lr * H.weightDecay, H);
    expect(bits(a.w)).toEqual(bits(b.w));
    expect(bits(a.m)).toEqual(bits(b.m));
    expect(bits(a.v)).toEqual(bits(b.v));
    expect(bits(a.w)).not.toEqual(bits(make().w));
  });

  it("the addon refuses arrays that do not match, with a RangeError", () => {
    const a = new Float32Array(4);
    const native = nativeKernelsAddon!;
    expect(() => native.adamwF32(a, a, a, new Float32Array(3), new Float64Array(8))).toThrow(/one length/);
    expect(() => native.adamwF32(a, a, a, a, new Float64Array(7))).toThrow(/Float64Array of 8/);
    expect(() => native.adamwF32(a, new Float64Array(4) as unknown as Float32Array, a, a, new Float64Array(8))).toThrow(/g must be a Float32Array/);
    expect(() => native.addSumSquaresF32(a, [new Float32Array(5)])).toThrow(/of its length/);
    expect(() => (native.addSumSquaresF32 as (...args: unknown[]) => number)(a)).toThrow(/takes a Float32Array/);
  });

  it("reduceRange adds the other replicas' gradients and returns the trainable ones' sum of squares, as the TypeScript loops", () => {
    const sizes = [7, 300, 1, 4096];
    const grads = sizes.map((n, i) => fillRandom(new Float32Array(n), 10 + i));
    const others = [0, 1].map((w) => sizes.map((n, i) => fillRandom(new Float32Array(n), 100 * (w + 1) + i)));
    const slots: OptimSlot[] = grads.map((grad, i) => ({ data: grad, grad, m: null, v: null, decay: false, trainable: i !== 2 }));
    const want = grads.map((g, p) => {
      const s = Float32Array.from(g);
      for (const o of others) for (let j = 0; j < s.length; j++) s[j] = s[j]! + o[p]![j]!;
      return s;
    });
    const ss = reduceRange(slots, others, 0, sizes.length);
    grads.forEach((g, p) => expect(bits(g)).toEqual(bits(want[p]!)));
    expect(ss).toBe(sumSquares(want[0]!) + sumSquares(want[1]!) + sumSquares(want[3]!));
  });
});
