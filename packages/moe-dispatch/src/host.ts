/**
 * The expert-host core: one shard of the routed experts of every MoE layer, and the computation a
 * Dispatch call asks for. services/expert-host serves it over gRPC; the in-process transport calls
 * it directly (`moela generate`, tests), so both paths run this exact code and agree bit for bit.
 *
 * A request carries, for `rows` tokens, their activations in the profile's dispatch codec and per
 * token the ids and gate weights of its experts held here; the answer is per token
 * sum_j weight_j * expert_j(x) in the profile's combine codec. Each token's terms are added in
 * ascending expert id starting from +0, the order the engine's own LocalExpertExecutor uses, so a
 * single host holding every expert reproduces it exactly under the exact profile.
 */
import { createHash } from "node:crypto";
import { readFileSync } from "node:fs";
import { basename, join, resolve } from "node:path";
import { CheckpointError, InvalidArgumentError } from "@moela/core";
import { bucketByExpert, defaultKernels, OFF_LOOP_MIN_WORK, runExpertGroup, runExpertGroupAsync, Workspace, type MlpWeights, type ModelConfig } from "@moela/engine";
import { getDispatchCodec, type EncodedActivations } from "./codec/index.js";
import { checkEncoded } from "./layout.js";
import { placeExperts, type ExpertPlacement } from "./placement.js";
import { resolveProfile, type PrecisionName, type PrecisionProfile, type ProfileLike } from "./profile.js";

/** One Dispatch call as the library sees it (transports turn it into and out of wire form). */
export interface ExpertDispatchRequest {
  /** Decoder layer index (the MTP block is num_hidden_layers). */
  readonly layer: number;
  /** Tokens in the request. */
  readonly rows: number;
  /** hidden_size. */
  readonly cols: number;
  /** [rows, cols] in the profile's dispatch codec. */
  readonly activations: EncodedActivations;
  /** [rows] experts of each token held by this host (1..k each). */
  readonly tokenExpertCounts: ArrayLike<number>;
  /** [sum(counts)] global expert ids, token-major. */
  readonly expertIds: ArrayLike<number>;
  /** [sum(counts)] final gate weights aligned with expertIds. */
  readonly weights: ArrayLike<number>;
  /** For logs: the request id, or a batch id. */
  readonly requestId?: string;
}

/** What a host serves (the Info RPC, in library form). */
export interface HostInfo {
  readonly shardIndex: number;
  readonly shardCount: number;
  /** One entry per MoE layer, ascending: the global expert ids held, ascending. */
  readonly layers: ReadonlyArray<{ readonly layer: number; readonly expertIds: readonly number[] }>;
  readonly modelId: string;
  readonly precision: PrecisionName;
  readonly hiddenSize: number;
}

export interface ExpertHostCoreOptions {
  /** Routed experts by MoE layer, indexed by global id, null where another shard holds them. */
  readonly expertsByLayer: ReadonlyMap<number, ReadonlyArray<MlpWeights | null>>;
  readonly hidden: number;
  readonly profile: ProfileLike;
  readonly shardIndex: number;
  readonly shardCount: number;
  /** The model's identity (see checkpointModelId); "" when unknown. */
  readonly modelId?: string;
}

/**
 * out[r] = sum over the request's (token r, expert e, weight w) entries, in ascending e, of
 * w * expert_e(x[r]). Entries are bucketed by expert with a counting sort so every expert runs once
 * over all its tokens. x: [rows, hidden]; out: [rows, hidden], overwritten.
 */
export function computeHostPartial(
  experts: ReadonlyArray<MlpWeights | null>,
  x: Float32Array,
  rows: number,
  hidden: number,
  counts: ArrayLike<number>,
  expertIds: ArrayLike<number>,
  weights: ArrayLike<number>,
  out: Float32Array,
  ws: Workspace,
  offEventLoop = false,
): void | Promise<void> {
  const P = expertIds.length;
  const tokenOf = ws.i32("host.token", P); // [P] token row of each entry
  for (let r = 0, p = 0; r < rows; r++) for (let j = 0; j < counts[r]!; j++) tokenOf[p++] = r;
  const start = ws.i32("host.start", experts.length + 1); // [E + 1] bucket starts
  const order = ws.i32("host.order", P); // [P] entries grouped by expert, token order within
  bucketByExpert(experts.length, expertIds, P, start, order, ws);
  // Every expert once over all its tokens (one grouped call on the fast kernels), then the ascending-id sum.
  const k = defaultKernels();
  if (!offEventLoop) {
    runExpertGroup(experts, x, hidden, start, order, 1, weights, rows, out, ws, k, k.matmul, (p) => tokenOf[p]!);
    return;
  }
  return runExpertGroupAsync(experts, x, hidden, start, order, 1, weights, rows, out, ws, k, k.matmul, OFF_LOOP_MIN_WORK, (p) => tokenOf[p]!);
}

export class ExpertHostCore {
  readonly profile: PrecisionProfile;
  readonly hidden: number;
  readonly shardIndex: number;
  readonly shardCount: number;
  readonly modelId: string;
  private readonly expertsByLayer: ReadonlyMap<number, ReadonlyArray<MlpWeights | null>>;
  private readonly ws = new Workspace();
  /** The last dispatchAsync call's completion: the next one starts after it. */
  private queue: Promise<void> = Promise.resolve();

  constructor(o: ExpertHostCoreOptions) {
    this.expertsByLayer = o.expertsByLayer;
    this.hidden = o.hidden;
    this.profile = resolveProfile(o.profile);
    this.shardIndex = o.shardIndex;
    this.shardCount = o.shardCount;
    this.modelId = o.modelId ?? "";
  }

  /** MoE layers served, ascending. */
  get layers(): number[] {
    return [...this.expertsByLayer.keys()].sort((a, b) => a - b);
  }

  /** Global ids of the experts held at `layer`, ascending (empty for a layer not served). */
  ownedExperts(layer: number): number[] {
    const experts = this.expertsByLayer.get(layer) ?? [];
    const ids: number[] = [];
    experts.forEach((w, e) => {
      if (w !== null) ids.push(e);
    });
    return ids;
  }

  info(): HostInfo {
    return {
      shardIndex: this.shardIndex,
      shardCount: this.shardCount,
      layers: this.layers.map((layer) => ({ layer, expertIds: this.ownedExperts(layer) })),
      modelId: this.modelId,
      precision: this.profile.name,
      hiddenSize: this.hidden,
    };
  }

  /**
   * Throws InvalidArgumentError with a message naming the offending field unless the request is
   * one this host can answer: an MoE layer it serves, hidden-size rows in its dispatch codec,
   * counts that match ids and weights, only experts it holds (each at most once per token), and
   * finite weights. Returns the layer's experts.
   */
  validate(req: ExpertDispatchRequest): ReadonlyArray<MlpWeights | null> {
    const { layer, rows, cols } = req;
    const experts = Number.isInteger(layer) ? this.expertsByLayer.get(layer) : undefined;
    if (experts === undefined) {
      throw new InvalidArgumentError(`layer ${layer} is not an MoE layer of this model (MoE layers: ${this.layers.join(", ") || "none"})`);
    }
    if (!Number.isSafeInteger(rows) || rows < 0) throw new InvalidArgumentError(`rows must be an integer >= 0, got ${rows}`);
    if (cols !== this.hidden) throw new InvalidArgumentError(`activations have ${cols} columns, the model's hidden_size is ${this.hidden}`);
    checkEncoded("activations", req.activations, this.profile.dispatch, rows, cols);
    const counts = req.tokenExpertCounts;
    if (counts.length !== rows) {
      throw new InvalidArgumentError(`token_expert_counts has ${counts.length} entries for ${rows} tokens`);
    }
    let total = 0;
    for (let r = 0; r < rows; r++) {
      const c = counts[r]!;
      if (!(Number.isInteger(c) && c >= 1)) throw new InvalidArgumentError(`token_expert_counts[${r}] is ${c}; each token needs at least 1 expert`);
      total += c;
    }
    if (req.expertIds.length !== total) {
      throw new InvalidArgumentError(`expert_ids has ${req.expertIds.length} entries, token_expert_counts sum to ${total}`);
    }
    if (req.weights.length !== total) {
      throw new InvalidArgumentError(`weights has ${req.weights.length} entries, token_expert_counts sum to ${total}`);
    }
    for (let r = 0, p = 0; r < rows; r++) {
      const end = p + counts[r]!;
      for (let q = p; q < end; q++) {
        const e = req.expertIds[q]!;
        if (!(Number.isInteger(e) && e >= 0 && e < experts.length)) {
          throw new InvalidArgumentError(`expert_ids[${q}] = ${e} is outside [0, ${experts.length})`);
        }
        if (experts[e] === null) {
          throw new InvalidArgumentError(
            `expert ${e} of layer ${layer} is not held by shard ${this.shardIndex} of ${this.shardCount} (expert_ids[${q}], token ${r}); the caller's placement disagrees`,
          );
        }
        for (let s = p; s < q; s++) {
          if (req.expertIds[s] === e) throw new InvalidArgumentError(`expert ${e} appears twice for token ${r} (expert_ids[${s}] and [${q}])`);
        }
        const w = req.weights[q]!;
        if (!Number.isFinite(w)) throw new InvalidArgumentError(`weights[${q}] is ${w}; gate weights must be finite`);
      }
      p = end;
    }
    return experts;
  }

  /** Validate, decode, compute the weighted partial sums, encode them in the combine codec. */
  dispatch(req: ExpertDispatchRequest): EncodedActivations {
    const { experts, x, y } = this.decodeRequest(req);
    void computeHostPartial(experts, x, req.rows, req.cols, req.tokenExpertCounts, req.expertIds, req.weights, y, this.ws);
    return getDispatchCodec(this.profile.combine).encode(y, req.rows, req.cols);
  }

  /**
   * dispatch() with the experts' products off the event loop when large (the gRPC service: health checks and
   * other calls are served meanwhile). Calls run one at a time, in arrival order: they share this core's scratch.
   */
  dispatchAsync(req: ExpertDispatchRequest): Promise<EncodedActivations> {
    const run = async (): Promise<EncodedActivations> => {
      const { experts, x, y } = this.decodeRequest(req);
      await computeHostPartial(experts, x, req.rows, req.cols, req.tokenExpertCounts, req.expertIds, req.weights, y, this.ws, true);
      return getDispatchCodec(this.profile.combine).encode(y, req.rows, req.cols);
    };
    const result = this.queue.then(run);
    this.queue = result.then(
      () => undefined,
      () => undefined,
    );
    return result;
  }

  /** The request validated, its activations decoded (x: [rows, hidden]) and the partial sums' buffer (y). */
  private decodeRequest(req: ExpertDispatchRequest): { experts: ReadonlyArray<MlpWeights | null>; x: Float32Array; y: Float32Array } {
    const experts = this.validate(req);
    const n = req.rows * req.cols;
    const x = getDispatchCodec(this.profile.dispatch).decode(req.activations, this.ws.f32("host.in", n));
    return { experts, x, y: this.ws.f32("host.out", n) };
  }
}

/**
 * A checkpoint's identity for Info.model_id: the folder name and the first 12 hex digits of the
 * SHA-256 of its config.json, e.g. "tiny-v3@1a2b3c4d5e6f". Callers compare it with their own so a
 * host serving another model is refused before the first Dispatch.
 */
export function checkpointModelId(dir: string): string {
  const file = join(dir, "config.json");
  let bytes: Buffer;
  try {
    bytes = readFileSync(file);
  } catch (err) {
    throw new CheckpointError(file, "cannot read config.json", undefined, { cause: err });
  }
  return `${basename(resolve(dir))}@${createHash("sha256").update(bytes).digest("hex").slice(0, 12)}`;
}

/** The placement of a model's routed experts over `hosts` expert-hosts (placeExperts with its n_group). */
export function placementFor(config: ModelConfig, hosts: number): ExpertPlacement {
  return placeExperts({ nRoutedExperts: config.nRoutedExperts, nGroup: config.nGroup, hosts });
}
