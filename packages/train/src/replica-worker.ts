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
import { adamRange, reduceRange, type AdamHyper, type OptimSlot } from "./optim.js";

export interface ReplicaInit {
  readonly moduleUrl: string;
  readonly configJson: Record<string, unknown>;
  readonly precision: Precision;
  /** Per parameter: its values, this replica's gradient, the main thread's gradient, AdamW's m and v. */
  readonly data: Record<string, SharedArrayBuffer>;
  readonly grad: Record<string, SharedArrayBuffer>;
  readonly mainGrad: Record<string, SharedArrayBuffer>;
  /** Every replica's gradients (this one's included), in replica order. */
  readonly allGrads: Record<string, SharedArrayBuffer>[];
  readonly m: Record<string, SharedArrayBuffer>;
  readonly v: Record<string, SharedArrayBuffer>;
}

type ReplicaMessage =
  | { readonly kind: "step"; readonly tokens: Int32Array; readonly B: number; readonly S: number; readonly opts: LossOptions }
  | { readonly kind: "reduce"; readonly p0: number; readonly p1: number }
  | { readonly kind: "adam"; readonly p0: number; readonly p1: number; readonly h: AdamHyper };

export function runReplica(): void {
  const init = workerData as ReplicaInit;
  const cfg = parseModelConfig(init.configJson);
  const ops = opsFor(init.precision);
  const view = (sab: SharedArrayBuffer): Vec => (init.precision === "f32" ? new Float32Array(sab) : new Float64Array(sab));
  const params = buildParams(
    cfg,
    (spec) => view(init.data[spec.name]!),
    (spec) => view(init.grad[spec.name]!),
  );
  const model = new TrainModel(cfg, params, ops);
  // the optimizer's view: the main thread's gradients (the sums), AdamW's moments
  const slots: OptimSlot[] = params.list.map((p) => ({
    data: p.data,
    grad: view(init.mainGrad[p.name]!),
    m: init.m[p.name] ? view(init.m[p.name]!) : null,
    v: init.v[p.name] ? view(init.v[p.name]!) : null,
    decay: p.decay,
    // As the main thread's slots: a parameter without moments is frozen (the main model when only the MTP module trains).
    trainable: p.trainable && init.m[p.name] !== undefined,
  }));
  const others = init.allGrads.map((g) => params.list.map((p) => view(g[p.name]!)));
  const port = parentPort!;
  port.on("message", (m: ReplicaMessage) => {
    try {
      if (m.kind === "step") {
        params.zeroGrad();
        const r = model.step(m.tokens, m.B, m.S, m.opts);
        port.postMessage({ ...r, loads: [...r.loads.entries()] });
      } else if (m.kind === "reduce") {
        port.postMessage({ ss: reduceRange(slots, others, m.p0, m.p1) });
      } else {
        adamRange(slots, m.p0, m.p1, m.h);
        port.postMessage({});
      }
    } catch (err) {
      port.postMessage({ error: err instanceof Error ? `${err.message}\n${err.stack ?? ""}` : String(err) });
    }
  });
  port.postMessage("ready");
}
