/**
 * A MatmulPool worker: waits on the shared control array, takes chunks of the current matmul and computes
 * them with the same `matmul` the caller uses. Weights and activation buffers live in SharedArrayBuffers
 * that the pool sends over a MessagePort; they are drained synchronously with receiveMessageOnPort,
 * because a thread blocked in Atomics.wait never runs its event loop.
 * Started through parallel-worker-boot.mjs (which loads this file through tsx when it is TypeScript).
 */
import { parentPort, receiveMessageOnPort, workerData, type MessagePort } from "node:worker_threads";
import type { WeightMatrix } from "./matrix.js";
import { C, CLOSED, CHUNK_BITS, MAX_CHUNKS, finishChunk, runChunk, tryClaim, type ResolvedJob } from "./parallel-protocol.js";

/** Messages from the pool: register a weight or a buffer under an id, or forget one. */
export type PoolMessage =
  | { readonly type: "weight"; readonly id: number; readonly w: WeightMatrix }
  | { readonly type: "buffer"; readonly id: number; readonly buffer: SharedArrayBuffer }
  | { readonly type: "drop-weight"; readonly id: number }
  | { readonly type: "drop-buffer"; readonly id: number };

export interface WorkerInit {
  readonly ctrl: SharedArrayBuffer;
  readonly port: MessagePort;
  /** Iterations of polling the job word before blocking in Atomics.wait. */
  readonly spin: number;
}

export function runWorker(): void {
  const init = workerData as WorkerInit & { moduleUrl: string };
  const ctrl = new Int32Array(init.ctrl);
  const port = init.port;
  const weights = new Map<number, WeightMatrix>();
  const buffers = new Map<number, SharedArrayBuffer>();

  const drain = (): void => {
    for (let m = receiveMessageOnPort(port); m !== undefined; m = receiveMessageOnPort(port)) {
      const msg = m.message as PoolMessage;
      switch (msg.type) {
        case "weight":
          weights.set(msg.id, msg.w);
          break;
        case "buffer":
          buffers.set(msg.id, msg.buffer);
          break;
        case "drop-weight":
          weights.delete(msg.id);
          break;
        case "drop-buffer":
          buffers.delete(msg.id);
          break;
      }
    }
  };
  const weight = (id: number): WeightMatrix => {
    let w = weights.get(id);
    if (w === undefined) {
      drain();
      w = weights.get(id);
    }
    if (w === undefined) throw new Error(`matmul worker: unknown weight id ${id}`);
    return w;
  };
  const view = (id: number, byteOffset: number, length: number): Float32Array => {
    let b = buffers.get(id);
    if (b === undefined) {
      drain();
      b = buffers.get(id);
    }
    if (b === undefined) throw new Error(`matmul worker: unknown buffer id ${id}`);
    return new Float32Array(b, byteOffset, length);
  };
  /** The job's parameters as views; only trusted once a CAS on the claim word read before them succeeds. */
  const readJob = (): ResolvedJob => ({
    w: weight(ctrl[C.P_W]!),
    x: view(ctrl[C.P_X]!, ctrl[C.P_X_BYTE]!, ctrl[C.P_X_LEN]!),
    y: view(ctrl[C.P_Y]!, ctrl[C.P_Y_BYTE]!, ctrl[C.P_Y_LEN]!),
    T: ctrl[C.P_T]!,
    chunks: ctrl[C.P_CHUNKS]!,
    chunkRows: ctrl[C.P_CHUNK_ROWS]!,
    rows: ctrl[C.P_ROWS]!,
    r0: ctrl[C.P_R0]!,
    xOff: ctrl[C.P_X_OFF]!,
    xStride: ctrl[C.P_X_STRIDE]!,
    yOff: ctrl[C.P_Y_OFF]!,
    yStride: ctrl[C.P_Y_STRIDE]!,
  });

  let cachedGen = -1;
  let cached: ResolvedJob | null = null;
  const serve = (): void => {
    for (;;) {
      const word = Atomics.load(ctrl, C.CLAIM);
      if (word === CLOSED) return;
      const gen = word >>> CHUNK_BITS;
      let job = gen === cachedGen ? cached : null;
      if (job === null) {
        try {
          job = readJob();
        } catch (err) {
          // Parameters read while the caller was rewriting them fail here; only an unchanged word means a real error.
          if (Atomics.load(ctrl, C.CLAIM) !== word) continue;
          Atomics.store(ctrl, C.ERROR, 1);
          process.stderr.write(`${(err as Error).message}\n`);
          return;
        }
      }
      if ((word & MAX_CHUNKS) >= job.chunks) return;
      const k = tryClaim(ctrl, word, job.chunks);
      if (k === -2) continue;
      if (k < 0) return;
      cachedGen = gen;
      cached = job;
      try {
        runChunk(job, k);
      } catch (err) {
        Atomics.store(ctrl, C.ERROR, 1);
        process.stderr.write(`matmul worker: ${(err as Error).message}\n`);
      }
      Atomics.add(ctrl, C.WORKER_CHUNKS, 1);
      finishChunk(ctrl, job.chunks);
    }
  };

  parentPort!.postMessage("ready");
  for (;;) {
    // Read the generation before serving: a job opened after this read changes it, so the wait below returns at once.
    const seen = Atomics.load(ctrl, C.GEN);
    if (Atomics.load(ctrl, C.STOP) !== 0) return;
    drain();
    serve();
    for (let i = 0; i < init.spin && Atomics.load(ctrl, C.GEN) === seen; i++);
    Atomics.wait(ctrl, C.GEN, seen);
  }
}
