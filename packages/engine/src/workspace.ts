/**
 * Scratch memory that grows on demand and is reused across calls, so the steady-state forward pass
 * allocates nothing: a buffer is reallocated only when a call needs more than any call before it.
 * It lives in SharedArrayBuffers so MatmulPool workers (tensor/parallel.ts) read and write it in place.
 *
 * `ScratchBuffer` is one such buffer; a module declares its scratch as a typed object of them (model.ts's
 * AttentionScratch, MoeScratch, HeadScratch; layers/mlp.ts's MlpScratch, layers/moe.ts's ExpertScratch).
 * `Workspace` keeps named ones, for code outside the engine that is handed one workspace (moe-dispatch's
 * expert-host), and is an ExpertScratch too, so that code hands the same workspace to the engine's helpers.
 */
import type { ExpertScratch } from "./layers/moe.js";

type Elements = Float32Array | Float64Array | Int32Array;

/** One growable scratch buffer: `get(n)` gives n elements, the same memory while n fits. */
export class ScratchBuffer<A extends Elements> {
  private buf: A | null = null;
  private readonly make: (n: number) => A;

  private constructor(make: (n: number) => A) {
    this.make = make;
  }

  static f32(): ScratchBuffer<Float32Array> {
    return new ScratchBuffer((n) => new Float32Array(sharedBytes(4 * n)));
  }

  static f64(): ScratchBuffer<Float64Array> {
    return new ScratchBuffer((n) => new Float64Array(sharedBytes(8 * n)));
  }

  static i32(): ScratchBuffer<Int32Array> {
    return new ScratchBuffer((n) => new Int32Array(sharedBytes(4 * n)));
  }

  get(n: number): A {
    let b = this.buf;
    if (b === null || b.length < n) {
      b = this.make(Math.max(n, Math.ceil((b?.length ?? 0) * 1.5)));
      this.buf = b;
    }
    return b.subarray(0, n) as A;
  }
}

/** Named scratch buffers, and the MLP and routed-expert helpers' typed ones (see the file comment). */
export class Workspace implements ExpertScratch {
  readonly gate = ScratchBuffer.f32();
  readonly up = ScratchBuffer.f32();
  readonly meta = ScratchBuffer.i32();
  readonly fill = ScratchBuffer.i32();
  readonly sizes = ScratchBuffer.i32();
  readonly xs = ScratchBuffer.f32();
  readonly ys = ScratchBuffer.f32();
  private readonly f32s = new Map<string, ScratchBuffer<Float32Array>>();
  private readonly f64s = new Map<string, ScratchBuffer<Float64Array>>();
  private readonly i32s = new Map<string, ScratchBuffer<Int32Array>>();

  f32(name: string, n: number): Float32Array {
    return named(this.f32s, name, ScratchBuffer.f32).get(n);
  }

  f64(name: string, n: number): Float64Array {
    return named(this.f64s, name, ScratchBuffer.f64).get(n);
  }

  i32(name: string, n: number): Int32Array {
    return named(this.i32s, name, ScratchBuffer.i32).get(n);
  }
}

function named<A extends Elements>(m: Map<string, ScratchBuffer<A>>, name: string, make: () => ScratchBuffer<A>): ScratchBuffer<A> {
  let b = m.get(name);
  if (b === undefined) {
    b = make();
    m.set(name, b);
  }
  return b;
}

/** Zeroed shared memory (like a fresh ArrayBuffer), visible to worker threads. */
function sharedBytes(bytes: number): SharedArrayBuffer {
  return new SharedArrayBuffer(bytes);
}
