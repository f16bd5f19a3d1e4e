/**
 * Named scratch buffers that grow on demand and are reused across calls, so the steady-state forward
 * pass allocates nothing: a buffer is reallocated only when a call needs more than any call before it.
 * They live in SharedArrayBuffers so MatmulPool workers (tensor/parallel.ts) read and write them in place.
 */
export class Workspace {
  private readonly f32s = new Map<string, Float32Array>();
  private readonly f64s = new Map<string, Float64Array>();
  private readonly i32s = new Map<string, Int32Array>();

  f32(name: string, n: number): Float32Array {
    let b = this.f32s.get(name);
    if (b === undefined || b.length < n) {
      b = new Float32Array(sharedBytes(4 * Math.max(n, Math.ceil((b?.length ?? 0) * 1.5))));
      this.f32s.set(name, b);
    }
    return b.subarray(0, n);
  }

  f64(name: string, n: number): Float64Array {
    let b = this.f64s.get(name);
    if (b === undefined || b.length < n) {
      b = new Float64Array(sharedBytes(8 * Math.max(n, Math.ceil((b?.length ?? 0) * 1.5))));
      this.f64s.set(name, b);
    }
    return b.subarray(0, n);
  }

  i32(name: string, n: number): Int32Array {
    let b = this.i32s.get(name);
    if (b === undefined || b.length < n) {
      b = new Int32Array(sharedBytes(4 * Math.max(n, Math.ceil((b?.length ?? 0) * 1.5))));
      this.i32s.set(name, b);
    }
    return b.subarray(0, n);
  }
}

/** Zeroed shared memory (like a fresh ArrayBuffer), visible to worker threads. */
function sharedBytes(bytes: number): SharedArrayBuffer {
  return new SharedArrayBuffer(bytes);
}
