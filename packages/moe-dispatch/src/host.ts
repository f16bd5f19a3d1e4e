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
 *
 * A request may also name rows whose shared expert this host computes (sharedExpertRows): DeepSeek-V3's
 * decoding treats the shared expert as one more routed expert that every token selects, held by every
 * host, so the attention side has nothing to compute while the hosts work. Those outputs follow the
 * partial sums in the answer, and are computed exactly as the engine computes its own shared expert.
 */
import { createHash } from "node:crypto";
import { readFileSync } from "node:fs";
import { basename, join, resolve } from "node:path";
import { abSwitchOn, CheckpointError, InvalidArgumentError } from "@moela/core";
import {
  bucketByExpert,
  defaultKernels,
  mlpForwardGroupAsync,
  OFF_LOOP_MIN_WORK,
  runExpertGroup,
  runExpertGroupAsync,
  Workspace,
  type MlpWeights,
  type ModelConfig,
} from "@moela/engine";
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
  /**
   * Rows (ascending, distinct, < rows) whose shared expert this host computes too. The answer then has
   * rows + sharedExpertRows.length rows: the partial sums, then these rows' shared-expert outputs in this order.
   */
  readonly sharedExpertRows?: ArrayLike<number>;
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
  /** The host holds every served layer's shared expert and computes it for the rows a request names. */
  readonly sharedExpert: boolean;
}

export interface ExpertHostCoreOptions {
  /** Routed experts by MoE layer, indexed by global id, null where another shard holds them. */
  readonly expertsByLayer: ReadonlyMap<number, ReadonlyArray<MlpWeights | null>>;
  /** Each served layer's shared expert (loadExpertShard's sharedByLayer); without it, requests may name no shared rows. */
  readonly sharedByLayer?: ReadonlyMap<number, MlpWeights>;
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
  const g = { experts, x, hidden, start, order, weights, T: rows, out, ws, kernels: k, mm: k.matmul, tokenOf: (p: number) => tokenOf[p]! };
  if (!offEventLoop) {
    runExpertGroup(g);
    return;
  }
  return runExpertGroupAsync(g, OFF_LOOP_MIN_WORK);
}

/** Most rows computed as one group (a bound on the scratch a burst of calls can claim). */
const MAX_GROUP_ROWS = 8192;
/** Most rows one dispatch may carry: twice prefill's largest forward (32,768 tokens by default). */
export const MAX_DISPATCH_ROWS = 65_536;

interface WaitingDispatch {
  readonly req: ExpertDispatchRequest;
  resolve(out: EncodedActivations): void;
  reject(err: unknown): void;
}

export class ExpertHostCore {
  readonly profile: PrecisionProfile;
  readonly hidden: number;
  readonly shardIndex: number;
  readonly shardCount: number;
  readonly modelId: string;
  private readonly expertsByLayer: ReadonlyMap<number, ReadonlyArray<MlpWeights | null>>;
  private readonly sharedByLayer: ReadonlyMap<number, MlpWeights>;
  private readonly ws = new Workspace();
  /** dispatchAsync calls not yet computed, in arrival order. */
  private waiting: WaitingDispatch[] = [];
  /** A group is being computed (drain() is running). */
  private computing = false;

  constructor(o: ExpertHostCoreOptions) {
    this.expertsByLayer = o.expertsByLayer;
    this.sharedByLayer = o.sharedByLayer ?? new Map();
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
      sharedExpert: this.layers.length > 0 && this.layers.every((l) => this.sharedByLayer.has(l)),
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
    if (rows > MAX_DISPATCH_ROWS) throw new InvalidArgumentError(`rows ${rows} exceeds the ${MAX_DISPATCH_ROWS} one dispatch may carry`);
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
    const shared = req.sharedExpertRows;
    if (shared !== undefined && shared.length > 0) {
      if (!this.sharedByLayer.has(layer)) throw new InvalidArgumentError(`shared_expert_rows: this host holds no shared expert for layer ${layer}`);
      for (let i = 0; i < shared.length; i++) {
        const r = shared[i]!;
        if (!(Number.isInteger(r) && r >= 0 && r < rows)) throw new InvalidArgumentError(`shared_expert_rows[${i}] = ${r} is outside [0, ${rows})`);
        if (i > 0 && r <= shared[i - 1]!)
          throw new InvalidArgumentError(`shared_expert_rows must be ascending and distinct; [${i - 1}] = ${shared[i - 1]}, [${i}] = ${r}`);
      }
    }
    return experts;
  }

  /** Validate, decode, compute the weighted partial sums, encode them in the combine codec. */
  dispatch(req: ExpertDispatchRequest): EncodedActivations {
    const { experts, x, y } = this.decodeRequest(req);
    const ns = req.sharedExpertRows?.length ?? 0;
    // Both run on this thread (offEventLoop false): they return no promise, and `void` only drops the
    // `void | Promise<void>` of their signatures. A failure throws here, to the caller.
    void computeHostPartial(experts, x, req.rows, req.cols, req.tokenExpertCounts, req.expertIds, req.weights, y, this.ws);
    if (ns > 0) void this.computeShared(req.layer, x, [{ rows: req.sharedExpertRows!, r0: 0 }], y.subarray(req.rows * req.cols), false);
    return getDispatchCodec(this.profile.combine).encode(y, req.rows + ns, req.cols);
  }

  /**
   * The shared expert of `layer` over the named rows of x (each part's rows offset by its r0), gathered in order
   * into out ([total rows, hidden]), as the engine's own shared expert computes them (one MLP over the rows).
   */
  private computeShared(
    layer: number,
    x: Float32Array,
    parts: ReadonlyArray<{ readonly rows: ArrayLike<number>; readonly r0: number }>,
    out: Float32Array,
    offEventLoop: boolean,
  ): void | Promise<void> {
    const hidden = this.hidden;
    const n = parts.reduce((a, p) => a + p.rows.length, 0);
    const xs = this.ws.f32("host.shared.in", n * hidden);
    let i = 0;
    for (const p of parts) {
      for (let j = 0; j < p.rows.length; j++, i++) xs.set(x.subarray((p.r0 + p.rows[j]!) * hidden, (p.r0 + p.rows[j]! + 1) * hidden), i * hidden);
    }
    const k = defaultKernels();
    return mlpForwardGroupAsync(
      [this.sharedByLayer.get(layer)!],
      [n],
      xs,
      out.subarray(0, n * hidden),
      this.ws,
      k,
      k.matmul,
      offEventLoop ? OFF_LOOP_MIN_WORK : Infinity,
    );
  }

  /**
   * dispatch() with the experts' products off the event loop when large (the gRPC service: health checks and
   * other calls are served meanwhile). Calls run one computation at a time, in arrival order (they share this
   * core's scratch); the calls that arrived for the same layer while the previous computation ran are computed
   * together as one group, so each expert's weights are read once for all of them: a caller's micro-batches,
   * and other callers', batch up by themselves without a timer. Every row is computed as it would be alone
   * (per token, its experts' sum in ascending id), so grouping changes no bits. An invalid request is refused
   * alone, before any compute.
   */
  dispatchAsync(req: ExpertDispatchRequest): Promise<EncodedActivations> {
    return new Promise<EncodedActivations>((resolve, reject) => {
      this.waiting.push({ req, resolve, reject });
      // Not awaited: a drain already running takes this request in its next group. drain() never
      // rejects; each request's failure goes to its own reject.
      void this.drain();
    });
  }

  /** Requests that were grouped with others (metrics and tests). */
  groupedRequests = 0;

  private async drain(): Promise<void> {
    if (this.computing) return;
    this.computing = true;
    try {
      while (this.waiting.length > 0) {
        const layer = this.waiting[0]!.req.layer;
        const group: WaitingDispatch[] = [];
        let rows = 0;
        this.waiting = this.waiting.filter((w) => {
          if (w.req.layer !== layer || (group.length > 0 && rows + w.req.rows > MAX_GROUP_ROWS)) return true;
          group.push(w);
          rows += w.req.rows;
          return false;
        });
        const valid: WaitingDispatch[] = [];
        for (const w of group) {
          try {
            this.validate(w.req);
            valid.push(w);
          } catch (err) {
            w.reject(err);
          }
        }
        if (valid.length === 0) continue;
        if (valid.length > 1) this.groupedRequests += valid.length;
        try {
          const out = await this.computeGroup(valid.map((w) => w.req));
          valid.forEach((w, i) => w.resolve(out[i]!));
        } catch (err) {
          for (const w of valid) w.reject(err);
        }
      }
    } finally {
      this.computing = false;
    }
  }

  /** Validated requests of one layer as one computation; each request's partial sums in the combine codec. */
  private async computeGroup(reqs: readonly ExpertDispatchRequest[]): Promise<EncodedActivations[]> {
    const experts = this.expertsByLayer.get(reqs[0]!.layer)!;
    const hidden = this.hidden;
    const rows = reqs.reduce((a, r) => a + r.rows, 0);
    const pairs = reqs.reduce((a, r) => a + r.expertIds.length, 0);
    const sharedRows = reqs.reduce((a, r) => a + (r.sharedExpertRows?.length ?? 0), 0);
    const x = this.ws.f32("host.in", rows * hidden);
    const counts = this.ws.i32("host.counts", rows);
    const ids = this.ws.i32("host.ids", pairs);
    // float64: a weight reaches the sum exactly as the caller gave it (as it does ungrouped).
    const weights = this.ws.f64("host.weights", pairs);
    const dispatchCodec = getDispatchCodec(this.profile.dispatch);
    let r0 = 0;
    let p0 = 0;
    for (const req of reqs) {
      dispatchCodec.decode(req.activations, x.subarray(r0 * hidden, (r0 + req.rows) * hidden));
      for (let r = 0; r < req.rows; r++) counts[r0 + r] = req.tokenExpertCounts[r]!;
      for (let p = 0; p < req.expertIds.length; p++) {
        ids[p0 + p] = req.expertIds[p]!;
        weights[p0 + p] = req.weights[p]!;
      }
      r0 += req.rows;
      p0 += req.expertIds.length;
    }
    const y = this.ws.f32("host.out", rows * hidden);
    const ys = this.ws.f32("host.shared.out", sharedRows * hidden); // every request's shared rows, in request order
    const oneThread = abSwitchOn("expert-host-one-thread") ? defaultKernels().callerOnly?.() : undefined;
    try {
      await computeHostPartial(experts, x, rows, hidden, counts, ids, weights, y, this.ws, true);
      if (sharedRows > 0) {
        const parts: Array<{ rows: ArrayLike<number>; r0: number }> = [];
        r0 = 0;
        for (const req of reqs) {
          if (req.sharedExpertRows !== undefined && req.sharedExpertRows.length > 0) parts.push({ rows: req.sharedExpertRows, r0 });
          r0 += req.rows;
        }
        await this.computeShared(reqs[0]!.layer, x, parts, ys, true);
      }
    } finally {
      oneThread?.();
    }
    const combine = getDispatchCodec(this.profile.combine);
    r0 = 0;
    let s0 = 0;
    return reqs.map((req) => {
      const ns = req.sharedExpertRows?.length ?? 0;
      let reply = y.subarray(r0 * hidden, (r0 + req.rows) * hidden);
      if (ns > 0) {
        // One answer matrix: the partial sums, then the shared-expert rows.
        const both = this.ws.f32("host.reply", (req.rows + ns) * hidden);
        both.set(reply);
        both.set(ys.subarray(s0 * hidden, (s0 + ns) * hidden), req.rows * hidden);
        reply = both;
      }
      const enc = combine.encode(reply, req.rows + ns, hidden);
      r0 += req.rows;
      s0 += ns;
      return enc;
    });
  }

  /** The request validated, its activations decoded (x: [rows, hidden]) and the partial sums' buffer (y). */
  private decodeRequest(req: ExpertDispatchRequest): { experts: ReadonlyArray<MlpWeights | null>; x: Float32Array; y: Float32Array } {
    const experts = this.validate(req);
    const n = req.rows * req.cols;
    const x = getDispatchCodec(this.profile.dispatch).decode(req.activations, this.ws.f32("host.in", n));
    return { experts, x, y: this.ws.f32("host.out", n + (req.sharedExpertRows?.length ?? 0) * req.cols) };
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
