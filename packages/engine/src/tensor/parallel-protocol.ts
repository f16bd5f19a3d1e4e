/**
 * The shared-memory protocol between a MatmulPool (parallel.ts) and its workers (parallel-worker.ts).
 *
 * One matmul at a time is split into chunks of contiguous output rows. The caller and the workers claim
 * chunks with a compare-and-swap on one claim word, so a thread the OS deschedules simply takes fewer
 * chunks. Every chunk is computed by the ordinary `matmul` over its row range, so every output element
 * goes through the same dot product as a single-threaded call: the bits never depend on the split.
 *
 * Claim word: -1 while the caller writes a job's parameters ("closed"); otherwise
 * (job generation mod 2^19) << 12 | next chunk index. A thread reads the claim word, then the parameters,
 * then claims with a CAS against the value it read: the CAS succeeds only if the word did not move, so the
 * parameters it read were not being rewritten (the caller closes the word before it writes). The generation
 * bits keep a stalled thread from claiming into a later job (it would have to stall through 2^19 jobs).
 */
import { matmul, type WeightMatrix } from "./matrix.js";

/** Int32 slots of the control array. */
export const C = {
  /** Bumped once per job; workers Atomics.wait on it. */
  GEN: 0,
  CLAIM: 1,
  /** Chunks finished in the current job; the caller waits for it to reach P_CHUNKS. */
  DONE: 2,
  /** Set by a worker that failed; the caller then recomputes the job alone and stops using the pool. */
  ERROR: 3,
  STOP: 4,
  /** Chunks computed by workers (not the caller), for tests and benchmarks. */
  WORKER_CHUNKS: 5,
  // Job parameters, written while the claim word is closed.
  P_W: 8, // weight id
  P_T: 9,
  P_CHUNKS: 10,
  P_CHUNK_ROWS: 11,
  P_ROWS: 12, // rows of the whole job
  P_R0: 13,
  P_X: 14, // buffer id of x
  P_X_BYTE: 15, // x.byteOffset
  P_X_LEN: 16, // x.length
  P_X_OFF: 17, // layout.xOff
  P_X_STRIDE: 18,
  P_Y: 19,
  P_Y_BYTE: 20,
  P_Y_LEN: 21,
  P_Y_OFF: 22,
  P_Y_STRIDE: 23,
  /** Length of the control array. */
  SIZE: 32,
} as const;

export const CLOSED = -1;
export const CHUNK_BITS = 12;
/** Most chunks one job may have (the index field must hold the count itself). */
export const MAX_CHUNKS = (1 << CHUNK_BITS) - 1;
const GEN_MASK = (1 << (31 - CHUNK_BITS)) - 1;

export function openClaimWord(gen: number): number {
  return (gen & GEN_MASK) << CHUNK_BITS;
}

/** A job as one thread sees it (the caller's own objects, or views a worker built from the parameters). */
export interface ResolvedJob {
  readonly w: WeightMatrix;
  readonly x: Float32Array;
  readonly y: Float32Array;
  readonly T: number;
  readonly chunks: number;
  readonly chunkRows: number;
  readonly rows: number;
  readonly r0: number;
  readonly xOff: number;
  readonly xStride: number;
  readonly yOff: number;
  readonly yStride: number;
}

/** Compute chunk k of a job: rows [k*chunkRows, ...) through the ordinary single-threaded kernel. */
export function runChunk(j: ResolvedJob, k: number): void {
  const a = k * j.chunkRows;
  const n = Math.min(j.rows, a + j.chunkRows) - a;
  matmul(j.w, j.x, j.T, j.y, { xOff: j.xOff, xStride: j.xStride, yOff: j.yOff + a, yStride: j.yStride, r0: j.r0 + a, nRows: n });
}

/**
 * Try to claim one chunk of the job whose claim word the caller observed as `word`.
 * Returns the chunk index, -1 when the job has no chunk left (or is no longer the open job), or -2 when the
 * CAS lost a race (read the word again and retry).
 */
export function tryClaim(ctrl: Int32Array, word: number, chunks: number): number {
  if (word === CLOSED) return -1;
  const k = word & MAX_CHUNKS;
  if (k >= chunks) return -1;
  return Atomics.compareExchange(ctrl, C.CLAIM, word, word + 1) === word ? k : -2;
}

/** Mark one chunk done; the thread finishing the last one wakes the waiting caller. */
export function finishChunk(ctrl: Int32Array, chunks: number): void {
  if (Atomics.add(ctrl, C.DONE, 1) + 1 === chunks) Atomics.notify(ctrl, C.DONE);
}
