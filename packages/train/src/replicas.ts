/**
 * Data parallelism over threads: the step's batch rows are split between the main thread and `n - 1` worker
 * replicas (replica-worker.ts); each computes the gradients of its rows (losses are means over the whole step,
 * so the parts add up), and the main thread sums the replicas' gradients into its own in replica order. The
 * split and the order are fixed by n, so results are deterministic for a given thread count. Every replica runs
 * the native kernels on its own thread (the kernels' pool is set to 1 thread).
 */
import { Worker } from "node:worker_threads";
import type { StepResult, LossOptions } from "./model.js";
import type { Precision, Vec } from "./ops.js";
import type { AdamHyper } from "./optim.js";
import type { ParamStore } from "./params.js";
import type { ReplicaInit } from "./replica-worker.js";

interface ReplicaReply {
  loss: number;
  mainLoss: number;
  mtpLoss: number;
  mtpChainLoss: number;
  balanceLoss: number;
  mainCorrect: number;
  mtpCorrect: number;
  mtpChainCorrect: number;
  loads: [number, Int32Array][];
  error?: string;
}

export class ReplicaPool {
  private readonly workers: Worker[];
  private readonly grads: Vec[][];

  private constructor(workers: Worker[], grads: Vec[][]) {
    this.workers = workers;
    this.grads = grads;
  }

  /** Start `n` worker replicas over `params` (whose values must live in SharedArrayBuffers: shareParams). */
  static async start(
    configJson: Record<string, unknown>,
    precision: Precision,
    params: ParamStore,
    m: ReadonlyMap<string, Vec>,
    v: ReadonlyMap<string, Vec>,
    n: number,
  ): Promise<ReplicaPool> {
    const workers: Worker[] = [];
    const ext = import.meta.url.endsWith(".ts") ? ".ts" : ".js";
    const moduleUrl = new URL(`./replica-worker${ext}`, import.meta.url).href;
    const shared = (x: Vec, what: string): SharedArrayBuffer => {
      if (!(x.buffer instanceof SharedArrayBuffer)) throw new Error(`${what} is not in shared memory`);
      return x.buffer;
    };
    const data: Record<string, SharedArrayBuffer> = {};
    const mainGrad: Record<string, SharedArrayBuffer> = {};
    const mom: Record<string, SharedArrayBuffer> = {};
    const vel: Record<string, SharedArrayBuffer> = {};
    for (const p of params.list) {
      data[p.name] = shared(p.data, `parameter ${p.name}`);
      mainGrad[p.name] = shared(p.grad, `gradient of ${p.name}`);
      const pm = m.get(p.name);
      const pv = v.get(p.name);
      if (pm && pv) {
        mom[p.name] = shared(pm, `AdamW m of ${p.name}`);
        vel[p.name] = shared(pv, `AdamW v of ${p.name}`);
      }
    }
    // every replica's gradient buffers, made first: a replica reduces its range over all of them
    const gradBufs: Record<string, SharedArrayBuffer>[] = [];
    const grads: Vec[][] = [];
    for (let w = 0; w < n; w++) {
      const rec: Record<string, SharedArrayBuffer> = {};
      const g: Vec[] = [];
      for (const p of params.list) {
        const sab = new SharedArrayBuffer(p.grad.byteLength);
        rec[p.name] = sab;
        g.push(precision === "f32" ? new Float32Array(sab) : new Float64Array(sab));
      }
      gradBufs.push(rec);
      grads.push(g);
    }
    for (let w = 0; w < n; w++) {
      const init: ReplicaInit = { moduleUrl, configJson, precision, data, grad: gradBufs[w]!, mainGrad, allGrads: gradBufs, m: mom, v: vel };
      const worker = new Worker(new URL("./replica-boot.mjs", import.meta.url), { workerData: init, execArgv: [] });
      await new Promise<void>((resolve, reject) => {
        worker.once("message", () => resolve());
        worker.once("error", reject);
      });
      workers.push(worker);
    }
    return new ReplicaPool(workers, grads);
  }

  get size(): number {
    return this.workers.length;
  }

  private call<T>(w: number, msg: unknown): Promise<T> {
    const worker = this.workers[w]!;
    return new Promise((resolve, reject) => {
      const onError = (e: Error): void => reject(e);
      worker.once("error", onError);
      worker.once("message", (r: { error?: string }) => {
        worker.off("error", onError);
        if (r.error !== undefined) reject(new Error(`training replica ${w + 1}: ${r.error}`));
        else resolve(r as T);
      });
      worker.postMessage(msg);
    });
  }

  /** Start worker w on rows of a step; resolves with its losses and loads (its gradients are in gradsOf(w)). */
  async run(w: number, tokens: Int32Array, B: number, S: number, opts: LossOptions): Promise<StepResult> {
    const r = await this.call<ReplicaReply>(w, { kind: "step", tokens, B, S, opts });
    return {
      loss: r.loss,
      mainLoss: r.mainLoss,
      mtpLoss: r.mtpLoss,
      mtpChainLoss: r.mtpChainLoss,
      balanceLoss: r.balanceLoss,
      mainCorrect: r.mainCorrect,
      mtpCorrect: r.mtpCorrect,
      mtpChainCorrect: r.mtpChainCorrect,
      loads: new Map(r.loads),
    };
  }

  /** Worker w sums every replica's gradients of parameters [p0, p1) into the main ones; resolves with their sum of squares. */
  async reduce(w: number, p0: number, p1: number): Promise<number> {
    return (await this.call<{ ss: number }>(w, { kind: "reduce", p0, p1 })).ss;
  }

  /** Worker w runs AdamW over parameters [p0, p1). */
  async adam(w: number, p0: number, p1: number, h: AdamHyper): Promise<void> {
    await this.call<unknown>(w, { kind: "adam", p0, p1, h });
  }

  /** Worker w's gradient arrays, in ParamStore order. */
  gradsOf(w: number): Vec[] {
    return this.grads[w]!;
  }

  async close(): Promise<void> {
    await Promise.all(this.workers.map((w) => w.terminate()));
  }
}
