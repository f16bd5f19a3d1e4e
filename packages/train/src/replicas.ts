/**
 * Data parallelism over threads: the step's batch rows are split between the main thread and `n - 1` worker
 * replicas (replica-worker.ts); each computes the gradients of its rows (losses are means over the whole step,
 * so the parts add up), and the main thread sums the replicas' gradients into its own in replica order. The
 * split and the order are fixed by n, so results are deterministic for a given thread count. Every replica runs
 * the native kernels on its own thread (the kernels' pool is set to 1 thread).
 */
import { Worker } from "node:worker_threads";
import type { StepResult, LossOptions } from "./model.js";
import type { Precision } from "./ops.js";
import type { ParamStore } from "./params.js";
import type { ReplicaInit } from "./replica-worker.js";

interface ReplicaReply {
  loss: number;
  mainLoss: number;
  mtpLoss: number;
  balanceLoss: number;
  mainCorrect: number;
  mtpCorrect: number;
  loads: [number, Int32Array][];
  error?: string;
}

export class ReplicaPool {
  private readonly workers: Worker[];
  private readonly grads: ParamStore["list"][number]["grad"][][];

  private constructor(workers: Worker[], grads: ParamStore["list"][number]["grad"][][]) {
    this.workers = workers;
    this.grads = grads;
  }

  /** Start `n` worker replicas over `params` (whose values must live in SharedArrayBuffers: shareParams). */
  static async start(configJson: Record<string, unknown>, precision: Precision, params: ParamStore, n: number): Promise<ReplicaPool> {
    const workers: Worker[] = [];
    const grads: ParamStore["list"][number]["grad"][][] = [];
    const ext = import.meta.url.endsWith(".ts") ? ".ts" : ".js";
    const moduleUrl = new URL(`./replica-worker${ext}`, import.meta.url).href;
    for (let w = 0; w < n; w++) {
      const data: Record<string, SharedArrayBuffer> = {};
      const grad: Record<string, SharedArrayBuffer> = {};
      const g: ParamStore["list"][number]["grad"][] = [];
      for (const p of params.list) {
        if (!(p.data.buffer instanceof SharedArrayBuffer)) throw new Error(`parameter ${p.name} is not in shared memory`);
        data[p.name] = p.data.buffer;
        const sab = new SharedArrayBuffer(p.grad.byteLength);
        grad[p.name] = sab;
        g.push(precision === "f32" ? new Float32Array(sab) : new Float64Array(sab));
      }
      const init: ReplicaInit = { moduleUrl, configJson, precision, data, grad };
      const worker = new Worker(new URL("./replica-boot.mjs", import.meta.url), { workerData: init, execArgv: [] });
      await new Promise<void>((resolve, reject) => {
        worker.once("message", () => resolve());
        worker.once("error", reject);
      });
      workers.push(worker);
      grads.push(g);
    }
    return new ReplicaPool(workers, grads);
  }

  get size(): number {
    return this.workers.length;
  }

  /** Start worker w on rows of a step; resolves with its losses and loads (its gradients are in gradsOf(w)). */
  run(w: number, tokens: Int32Array, B: number, S: number, opts: LossOptions): Promise<StepResult> {
    const worker = this.workers[w]!;
    return new Promise((resolve, reject) => {
      const onError = (e: Error): void => reject(e);
      worker.once("error", onError);
      worker.once("message", (r: ReplicaReply) => {
        worker.off("error", onError);
        if (r.error !== undefined) reject(new Error(`training replica ${w + 1}: ${r.error}`));
        else resolve({ loss: r.loss, mainLoss: r.mainLoss, mtpLoss: r.mtpLoss, balanceLoss: r.balanceLoss, mainCorrect: r.mainCorrect, mtpCorrect: r.mtpCorrect, loads: new Map(r.loads) });
      });
      worker.postMessage({ tokens, B, S, opts });
    });
  }

  /** Worker w's gradient arrays, in ParamStore order. */
  gradsOf(w: number): ParamStore["list"][number]["grad"][] {
    return this.grads[w]!;
  }

  async close(): Promise<void> {
    await Promise.all(this.workers.map((w) => w.terminate()));
  }
}
