/**
 * A data-parallel training replica in a worker thread: the model over the main thread's parameter values
 * (SharedArrayBuffers, read-only while a step runs) with gradients of its own (also shared, so the main thread
 * sums them). Messages: {tokens, B, S, opts} -> {loss, mainLoss, mtpLoss, balanceLoss, loads}.
 */
import { parentPort, workerData } from "node:worker_threads";
import { parseModelConfig } from "@moela/engine";
import { TrainModel, type LossOptions } from "./model.js";
import { opsFor, type Precision, type Vec } from "./ops.js";
import { buildParams } from "./params.js";

export interface ReplicaInit {
  readonly moduleUrl: string;
  readonly configJson: Record<string, unknown>;
  readonly precision: Precision;
  /** Per parameter, in ParamStore order: its values and its gradient buffer for this replica. */
  readonly data: Record<string, SharedArrayBuffer>;
  readonly grad: Record<string, SharedArrayBuffer>;
}

export interface ReplicaStep {
  readonly tokens: Int32Array;
  readonly B: number;
  readonly S: number;
  readonly opts: LossOptions;
}

export function runReplica(): void {
  const init = workerData as ReplicaInit;
  const cfg = parseModelConfig(init.configJson);
  const ops = opsFor(init.precision);
  const view = (sab: SharedArrayBuffer): Vec => (init.precision === "f32" ? new Float32Array(sab) : new Float64Array(sab));
  const params = buildParams(cfg, (spec) => view(init.data[spec.name]!), (spec) => view(init.grad[spec.name]!));
  const model = new TrainModel(cfg, params, ops);
  const port = parentPort!;
  port.on("message", (m: ReplicaStep | "close") => {
    if (m === "close") {
      port.close();
      return;
    }
    try {
      params.zeroGrad();
      const r = model.step(m.tokens, m.B, m.S, m.opts);
      port.postMessage({ ...r, loads: [...r.loads.entries()] });
    } catch (err) {
      port.postMessage({ error: err instanceof Error ? `${err.message}\n${err.stack ?? ""}` : String(err) });
    }
  });
  port.postMessage("ready");
}
