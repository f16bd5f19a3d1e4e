/**
 * Large matmuls split by output rows across worker threads, with bit-identical results.
 *
 * A MatmulPool has `threads - 1` workers; the calling thread takes part too. Each call of `pool.matmul`
 * is one job: its rows are cut into contiguous chunks that the threads claim through a shared control
 * Int32Array (parallel-protocol.ts), and each chunk is the ordinary `matmul` over its rows, so every
 * output element is computed by the same dot product, in the same order, as a single-threaded call.
 * The caller blocks (spin, then Atomics.wait) until all chunks are done: callers see a synchronous matmul.
 *
 * Workers read weights and activations in place, so both must live in SharedArrayBuffers (weights.ts and
 * Workspace allocate them there). A call whose weight, x or y is not shared, or whose product is below
 * `minWork` multiply-adds (thread hand-off would cost more than it saves), runs on the caller alone.
 * Workers are unref'd (they never keep a process alive); `close()` stops them.
 */
import { Worker, MessageChannel, type MessagePort } from "node:worker_threads";
import { InvalidArgumentError } from "@moela/core";
import { matmul, type MatmulLayout, type WeightMatrix } from "./matrix.js";
import { C, CLOSED, MAX_CHUNKS, finishChunk, openClaimWord, runChunk, tryClaim, type ResolvedJob } from "./parallel-protocol.js";
import type { PoolMessage, WorkerInit } from "./parallel-worker.js";

/** The linear kernel's signature: `matmul` itself, or a pool's. */
export type MatmulFn = (w: WeightMatrix, x: Float32Array, T: number, y: Float32Array, layout?: MatmulLayout) => void;

/**
 * Smallest rows * cols * T split across threads (measured with scripts/bench/kernels.ts on 2 cores:
 * below about this, waking a worker and waiting for it costs more than the half of the work it takes).
 */
export const DEFAULT_PARALLEL_MIN_WORK = 1 << 18;

/** Chunks per thread: small enough pieces that a thread the OS pauses leaves little for the others to wait on. */
const CHUNKS_PER_THREAD = 4;
/** Polls of a shared word before blocking in Atomics.wait (jobs follow each other within microseconds). */
const SPIN = 20_000;
/** With callerTakesChunks false, the caller still joins after this long (a worker that never started). */
const CALLER_FALLBACK_MS = 5_000;

export interface MatmulPoolOptions {
  /** Threads that share one matmul, the caller included (threads - 1 workers). */
  readonly threads: number;
  /** Smallest rows * cols * T split across threads (default DEFAULT_PARALLEL_MIN_WORK). */
  readonly minWork?: number;
  /** false: the caller leaves every chunk to the workers (tests use it to exercise the worker path). */
  readonly callerTakesChunks?: boolean;
}

type Dropped = { readonly type: "drop-weight" | "drop-buffer"; readonly id: number };

function isShared(w: WeightMatrix): boolean {
  if (!(w.data.buffer instanceof SharedArrayBuffer)) return false;
  return w.kind !== "fp8" || w.scaleInv.buffer instanceof SharedArrayBuffer;
}

export class MatmulPool {
  readonly threads: number;
  readonly minWork: number;
  private readonly callerTakesChunks: boolean;
  private readonly ctrl: Int32Array; // [C.SIZE] shared control words
  private readonly workers: Worker[] = [];
  private readonly ports: MessagePort[] = [];
  private readonly weightIds = new WeakMap<WeightMatrix, number>();
  private readonly bufferIds = new WeakMap<SharedArrayBuffer, number>();
  /** Tells the workers to forget weights and buffers this thread no longer holds, so their memory can be freed. */
  private readonly finalizer = new FinalizationRegistry<Dropped>((m) => this.post(m));
  private nextId = 1;
  private gen = 0;
  private closed = false;
  private failure: Error | null = null;
  private readonly readyPromise: Promise<boolean>;

  constructor(opts: MatmulPoolOptions) {
    const threads = opts.threads;
    if (!(Number.isInteger(threads) && threads >= 1)) throw new InvalidArgumentError(`threads must be a positive integer, got ${threads}`);
    const minWork = opts.minWork ?? DEFAULT_PARALLEL_MIN_WORK;
    if (!(Number.isFinite(minWork) && minWork >= 0)) throw new InvalidArgumentError(`minWork must be a non-negative number, got ${minWork}`);
    this.threads = threads;
    this.minWork = minWork;
    this.callerTakesChunks = opts.callerTakesChunks ?? true;
    this.ctrl = new Int32Array(new SharedArrayBuffer(C.SIZE * 4));
    this.ctrl[C.CLAIM] = CLOSED;
    const self = import.meta.url;
    const moduleUrl = new URL(self.endsWith(".ts") ? "./parallel-worker.ts" : "./parallel-worker.js", self).href;
    const ready: Promise<boolean>[] = [];
    for (let i = 1; i < threads; i++) {
      const { port1, port2 } = new MessageChannel();
      const init: WorkerInit & { moduleUrl: string } = { ctrl: this.ctrl.buffer as SharedArrayBuffer, port: port2, spin: SPIN, moduleUrl };
      // execArgv []: the boot file loads TypeScript itself (Node 20 workers ignore the parent's --import tsx anyway).
      const w = new Worker(new URL("./parallel-worker-boot.mjs", self), { workerData: init, transferList: [port2], execArgv: [] });
      w.unref();
      port1.unref();
      ready.push(
        new Promise<boolean>((resolve) => {
          w.once("message", () => resolve(true));
          w.once("error", (err) => {
            this.failure ??= err;
            resolve(false);
          });
          w.once("exit", (code) => {
            if (!this.closed) this.failure ??= new Error(`matmul worker exited with code ${code}`);
            resolve(false);
          });
        }),
      );
      this.workers.push(w);
      this.ports.push(port1);
    }
    this.readyPromise = Promise.all(ready).then((r) => r.every(Boolean));
  }

  /** Resolves when every worker has started (true), or false when one failed (the pool then runs on the caller alone). */
  ready(): Promise<boolean> {
    return this.readyPromise;
  }

  /** Why the pool stopped using its workers, if it did. */
  get error(): Error | null {
    return this.failure;
  }

  /** Chunks computed by workers so far (not by the caller). */
  get workerChunks(): number {
    return Atomics.load(this.ctrl, C.WORKER_CHUNKS);
  }

  /** Same contract and bits as `matmul`; large products are split across the pool's threads. */
  readonly matmul: MatmulFn = (w, x, T, y, layout) => {
    const nRows = layout?.nRows ?? w.rows;
    if (
      this.workers.length === 0 ||
      this.closed ||
      this.failure !== null ||
      nRows < 2 ||
      nRows * w.cols * T < this.minWork ||
      !(x.buffer instanceof SharedArrayBuffer) ||
      !(y.buffer instanceof SharedArrayBuffer) ||
      !isShared(w)
    ) {
      matmul(w, x, T, y, layout);
      return;
    }
    const job: ResolvedJob = {
      w,
      x,
      y,
      T,
      chunks: 0,
      chunkRows: Math.max(1, Math.ceil(nRows / Math.min(MAX_CHUNKS, this.threads * CHUNKS_PER_THREAD))),
      rows: nRows,
      r0: layout?.r0 ?? 0,
      xOff: layout?.xOff ?? 0,
      xStride: layout?.xStride ?? w.cols,
      yOff: layout?.yOff ?? 0,
      // matmul's own default: a negative or missing stride means dense rows of nRows.
      yStride: layout?.yStride === undefined || layout.yStride < 0 ? nRows : layout.yStride,
    };
    const chunks = Math.ceil(nRows / job.chunkRows);
    this.runJob({ ...job, chunks });
  };

  private runJob(job: ResolvedJob): void {
    const ctrl = this.ctrl;
    // The claim word is closed here (since construction or the end of the previous job): write the parameters.
    ctrl[C.P_W] = this.weightId(job.w);
    ctrl[C.P_T] = job.T;
    ctrl[C.P_CHUNKS] = job.chunks;
    ctrl[C.P_CHUNK_ROWS] = job.chunkRows;
    ctrl[C.P_ROWS] = job.rows;
    ctrl[C.P_R0] = job.r0;
    ctrl[C.P_X] = this.bufferId(job.x.buffer as SharedArrayBuffer);
    ctrl[C.P_X_BYTE] = job.x.byteOffset;
    ctrl[C.P_X_LEN] = job.x.length;
    ctrl[C.P_X_OFF] = job.xOff;
    ctrl[C.P_X_STRIDE] = job.xStride;
    ctrl[C.P_Y] = this.bufferId(job.y.buffer as SharedArrayBuffer);
    ctrl[C.P_Y_BYTE] = job.y.byteOffset;
    ctrl[C.P_Y_LEN] = job.y.length;
    ctrl[C.P_Y_OFF] = job.yOff;
    ctrl[C.P_Y_STRIDE] = job.yStride;
    Atomics.store(ctrl, C.DONE, 0);
    this.gen = (this.gen + 1) | 0;
    Atomics.store(ctrl, C.CLAIM, openClaimWord(this.gen));
    Atomics.add(ctrl, C.GEN, 1);
    Atomics.notify(ctrl, C.GEN);

    if (this.callerTakesChunks) this.takeChunks(job);
    let spins = 0;
    const start = this.callerTakesChunks ? 0 : performance.now();
    for (let d = Atomics.load(ctrl, C.DONE); d < job.chunks; d = Atomics.load(ctrl, C.DONE)) {
      if (spins < SPIN) {
        spins++;
        continue;
      }
      Atomics.wait(ctrl, C.DONE, d, 100);
      if (!this.callerTakesChunks && performance.now() - start > CALLER_FALLBACK_MS) this.takeChunks(job);
    }
    Atomics.store(ctrl, C.CLAIM, CLOSED);
    if (Atomics.load(ctrl, C.ERROR) !== 0) {
      // A worker failed on a chunk: redo the whole product here and stop using the workers.
      this.failure ??= new Error("a matmul worker failed (see stderr); running single-threaded from now on");
      matmul(job.w, job.x, job.T, job.y, { xOff: job.xOff, xStride: job.xStride, yOff: job.yOff, yStride: job.yStride, r0: job.r0, nRows: job.rows });
    }
  }

  private takeChunks(job: ResolvedJob): void {
    const ctrl = this.ctrl;
    for (;;) {
      const k = tryClaim(ctrl, Atomics.load(ctrl, C.CLAIM), job.chunks);
      if (k === -2) continue;
      if (k < 0) return;
      runChunk(job, k);
      finishChunk(ctrl, job.chunks);
    }
  }

  private post(m: PoolMessage): void {
    if (this.closed) return;
    for (const p of this.ports) p.postMessage(m);
  }

  private weightId(w: WeightMatrix): number {
    let id = this.weightIds.get(w);
    if (id === undefined) {
      id = this.nextId++;
      this.weightIds.set(w, id);
      // The typed arrays travel as views of the same SharedArrayBuffers: nothing is copied.
      this.post({ type: "weight", id, w });
      this.finalizer.register(w, { type: "drop-weight", id });
    }
    return id;
  }

  private bufferId(b: SharedArrayBuffer): number {
    let id = this.bufferIds.get(b);
    if (id === undefined) {
      id = this.nextId++;
      this.bufferIds.set(b, id);
      this.post({ type: "buffer", id, buffer: b });
      this.finalizer.register(b, { type: "drop-buffer", id });
    }
    return id;
  }

  /** Stop the workers; later calls run on the caller alone. */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    Atomics.store(this.ctrl, C.STOP, 1);
    Atomics.add(this.ctrl, C.GEN, 1);
    Atomics.notify(this.ctrl, C.GEN);
    for (const p of this.ports) p.close();
    await Promise.all(this.workers.map((w) => w.terminate()));
  }
}
