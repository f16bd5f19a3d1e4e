/**
 * The trainable state of a model: one parameter (values + gradient) per Hugging Face tensor name, in the
 * precision of the run (Float64Array for the gradient checks, Float32Array for training).
 *
 * The MTP layer's `embed_tokens` and `shared_head.head` are not parameters of their own: as in DeepSeek-V3
 * (its README_WEIGHTS.md: the MTP module shares the main model's embedding and output head), the MTP module
 * reads `model.embed_tokens.weight` and `lm_head.weight`, and saving writes copies under the MTP names.
 */
import { checkpointTensorSpecs, Rng, type ModelConfig, type TensorSpec } from "@moela/engine";
import type { Ops, Vec } from "./ops.js";

export interface Param {
  readonly name: string;
  readonly shape: readonly number[];
  readonly spec: TensorSpec;
  readonly data: Vec;
  readonly grad: Vec;
  /** AdamW's decoupled weight decay applies (2-D weights; never norms or biases). */
  readonly decay: boolean;
  /** Moved by the optimizer (false: e_score_correction_bias, which the balancing rule moves). */
  readonly trainable: boolean;
}

/** The MTP tensors that are the main model's (tied): MTP name -> main name. */
export function tiedMtpTensors(cfg: ModelConfig): Map<string, string> {
  const m = new Map<string, string>();
  for (let k = 0; k < cfg.numNextnPredictLayers; k++) {
    const p = `model.layers.${cfg.numHiddenLayers + k}`;
    m.set(`${p}.embed_tokens.weight`, "model.embed_tokens.weight");
    m.set(`${p}.shared_head.head.weight`, cfg.tieWordEmbeddings ? "model.embed_tokens.weight" : "lm_head.weight");
  }
  return m;
}

export class ParamStore {
  readonly list: readonly Param[];
  private readonly byName: Map<string, Param>;

  constructor(list: Param[]) {
    this.list = list;
    this.byName = new Map(list.map((p) => [p.name, p]));
  }

  get(name: string): Param {
    const p = this.byName.get(name);
    if (p === undefined) throw new Error(`no parameter '${name}'`);
    return p;
  }

  has(name: string): boolean {
    return this.byName.has(name);
  }

  zeroGrad(): void {
    for (const p of this.list) p.grad.fill(0);
  }

  /** Number of values (all parameters, the balancing biases included). */
  get size(): number {
    let n = 0;
    for (const p of this.list) n += p.data.length;
    return n;
  }
}

/** Standard normal values from (seed, name): Box-Muller over the engine's xoshiro128** seeded by a hash of both. */
function normals(seed: number, name: string, n: number): Float64Array {
  let h = 0x811c9dc5;
  const key = `${seed}:${name}`;
  for (let i = 0; i < key.length; i++) h = Math.imul(h ^ key.charCodeAt(i), 0x01000193) >>> 0;
  const rng = new Rng(h * 65536 + (seed & 0xffff));
  const out = new Float64Array(n);
  for (let i = 0; i < n; i += 2) {
    const u = 1 - rng.next();
    const v = rng.next();
    const r = Math.sqrt(-2 * Math.log(u));
    out[i] = r * Math.cos(2 * Math.PI * v);
    if (i + 1 < n) out[i + 1] = r * Math.sin(2 * Math.PI * v);
  }
  return out;
}

/** Is this tensor the output projection of a residual branch (o_proj, down_proj)? */
function isResidualOut(name: string): boolean {
  return name.endsWith(".o_proj.weight") || name.endsWith(".down_proj.weight");
}

/**
 * Fresh parameters for `cfg`: linears, the router, the embedding and the head N(0, std^2) with std = `initStd`
 * (0.02 unless given), residual output projections (o_proj, down_proj) scaled by 1/sqrt(2 * blocks) as in
 * GPT-2, norms 1, balancing biases 0. Values depend only on (seed, name).
 */
export function initParams(cfg: ModelConfig, ops: Ops, seed: number, initStd = 0.02): ParamStore {
  const blocks = cfg.numHiddenLayers + cfg.numNextnPredictLayers;
  return buildParams(
    cfg,
    (spec, n) => {
      const data = ops.alloc(n);
      if (spec.init === "norm") data.fill(1);
      else if (spec.init !== "bias") {
        const std = isResidualOut(spec.name) ? initStd / Math.sqrt(2 * blocks) : initStd;
        const z = normals(seed, spec.name, n);
        for (let i = 0; i < n; i++) data[i] = std * z[i]!;
      }
      return data;
    },
    (_, n) => ops.alloc(n),
  );
}

/** The parameters of `cfg` (tied MTP tensors left out) over the arrays `data` and `grad` give. */
export function buildParams(cfg: ModelConfig, data: (spec: TensorSpec, n: number) => Vec, grad: (spec: TensorSpec, n: number) => Vec): ParamStore {
  const tied = tiedMtpTensors(cfg);
  const list: Param[] = [];
  for (const spec of checkpointTensorSpecs(cfg)) {
    if (tied.has(spec.name)) continue;
    const n = spec.shape.reduce((a, b) => a * b, 1);
    list.push({
      name: spec.name,
      shape: spec.shape,
      spec,
      data: data(spec, n),
      grad: grad(spec, n),
      decay: spec.shape.length === 2,
      trainable: spec.init !== "bias",
    });
  }
  return new ParamStore(list);
}

/** The same parameters with values and gradients in SharedArrayBuffers (replicas in worker threads read them). */
export function shareParams(cfg: ModelConfig, ps: ParamStore): ParamStore {
  const make = (src: Vec): Vec => {
    const sab = new SharedArrayBuffer(src.byteLength);
    const v = src instanceof Float32Array ? new Float32Array(sab) : new Float64Array(sab);
    v.set(src);
    return v;
  };
  return buildParams(
    cfg,
    (spec) => make(ps.get(spec.name).data),
    (spec) => make(ps.get(spec.name).grad),
  );
}
