/**
 * The attention side of expert parallelism: an ExpertExecutor (the engine's port) that sends each
 * MoE layer's routed work to the expert-hosts and adds their answers.
 *
 * Per runRouted call (one layer, one micro-batch):
 *   1. encode x ONCE in the profile's dispatch codec (rows are encoded independently, so each
 *      host's rows are sliced out of that one encoding);
 *   2. split the top-k choices by host: a token goes to a host once, with the ids and weights of
 *      all its experts there; hosts no token reaches get no call;
 *   3. call every host concurrently (the calls are issued before runRouted first awaits, so they
 *      are in flight while the engine computes the shared expert);
 *   4. decode each host's partial sums (combine codec) and add them into out in ascending host
 *      order, starting from +0. The order is fixed whatever the transport or arrival order, so an
 *      in-process run and the cluster give identical bits for the same profile and host count.
 * With the shared expert on the hosts (sharedExpert "hosts", and the engine passing sharedOut), each token's
 * shared expert is computed by one of the hosts its routed experts already reach (the one with the
 * fewest shared rows so far), so no token reaches a host it would not have reached; the answers carry
 * those outputs after the partial sums, and they are copied into sharedOut unchanged.
 * If a host fails, the other calls are cancelled and the first error is thrown.
 */
import { DataLossError, FailedPreconditionError, InvalidArgumentError, MoelaError } from "@moela/core";
import type { ExpertExecutor } from "@moela/engine";
import { getDispatchCodec, type DispatchCodec, type EncodedActivations } from "./codec/index.js";
import { checkEncoded, encodedSize, gatherEncodedRows } from "./layout.js";
import { splitByHost, type ExpertPlacement } from "./placement.js";
import { resolveProfile, type PrecisionProfile, type ProfileLike } from "./profile.js";
import type { ExpertDispatchRequest, HostInfo } from "./host.js";

/** One expert-host as the dispatcher sees it; index in HostedExpertExecutor's `hosts` = shard. */
export interface ExpertHostTransport {
  /**
   * Run the host's experts for `req`. Resolves with [req.rows, hidden] partial sums in the
   * profile's combine codec, rows in request order. Rejects with a MoelaError naming the host
   * (UnavailableError when it cannot be reached); `signal` cancels the call.
   */
  dispatch(req: ExpertDispatchRequest, signal?: AbortSignal): Promise<EncodedActivations>;
  /** What the host serves, to check against the placement before the first dispatch (checkHostInfo). */
  info?(signal?: AbortSignal): Promise<HostInfo>;
  /** true for a host that computes in this process (transports/in-process.ts): nothing to overlap with. */
  readonly inProcess?: boolean;
  /** true while the host is reached through shared memory, so it computes on this machine's cores. */
  readonly sameMachine?: boolean;
}

/**
 * The dispatch metrics (names.ts: moeDispatch*), structurally: pass `createServiceMetrics("decode").m`
 * or the prefill one. Every field is optional so a caller can record a subset.
 */
export interface DispatchMetrics {
  /** Observed once per token per call: hosts its top-k reaches. */
  readonly moeDispatchHostsReached?: { observe(value: number): void };
  /** Encoded activation bytes sent, by codec. */
  readonly moeDispatchSentBytes?: { inc(labels: { codec: string }, value: number): void };
  /** Encoded partial-sum bytes received, by codec. */
  readonly moeCombineReceivedBytes?: { inc(labels: { codec: string }, value: number): void };
  /** First call sent to last answer decoded, per runRouted. */
  readonly moeDispatchRoundTrip?: { observe(value: number): void };
  /** Per answer read from shared memory: seconds it waited there for this process (ShmDispatchCallerOptions.onAnswerWait). */
  readonly moeDispatchSharedMemoryAnswerWait?: { observe(value: number): void };
  /** Seconds of the dispatcher's own work, by phase: encode (encode, split, send) and combine (decode, add). */
  readonly moeDispatchPhase?: { inc(labels: { phase: string }, value: number): void };
}

export interface HostedExpertExecutorOptions {
  readonly placement: ExpertPlacement;
  readonly profile: ProfileLike;
  /** One transport per shard: hosts[h] serves placement shard h. */
  readonly hosts: readonly ExpertHostTransport[];
  readonly metrics?: DispatchMetrics;
  /** hidden_size; when absent, runRouted takes it from x.length / T (x must then be exactly [T, hidden]). */
  readonly hidden?: number;
  /** The request (or batch) id each call carries, read per runRouted (logs on the hosts). */
  readonly requestId?: () => string | undefined;
  /**
   * Where the shared expert runs. "local" (default): the engine computes it while the routed experts are in
   * flight. "hosts": the expert-hosts compute it too (they must hold it: HostInfo.sharedExpert); with the exact
   * profile the bits are the same, with a lossy dispatch codec its input is the rounded activation. Not the
   * default: on the 2-core benchmark machine it measured slower (docs/PERFORMANCE.md).
   */
  readonly sharedExpert?: SharedExpertPlacement;
}

export type SharedExpertPlacement = "hosts" | "local";

/** What the last runRouted call sent, for tests and the benchmark. */
export interface DispatchTrace {
  readonly layer: number;
  readonly tokens: number;
  /** [hosts] rows sent to each host (0 = no call). */
  readonly rowsPerHost: readonly number[];
  /** [hosts] (token, expert) pairs sent to each host. */
  readonly pairsPerHost: readonly number[];
  readonly sentBytes: number;
  readonly receivedBytes: number;
}

export class HostedExpertExecutor implements ExpertExecutor {
  readonly placement: ExpertPlacement;
  readonly profile: PrecisionProfile;
  readonly hosts: readonly ExpertHostTransport[];
  /** Some host is another process: the model overlaps its shared expert with the dispatch. */
  readonly waitsOnOtherProcesses: boolean;
  /** The hosts compute the shared expert when the engine passes sharedOut (HostedExpertExecutorOptions.sharedExpert). */
  readonly computesSharedExpert: boolean;
  private readonly dispatchCodec: DispatchCodec;
  private readonly combineCodec: DispatchCodec;
  private readonly metrics: DispatchMetrics;
  private readonly requestId: () => string | undefined;
  private readonly hidden: number | undefined;
  private last: DispatchTrace | undefined;

  constructor(o: HostedExpertExecutorOptions) {
    if (o.hosts.length !== o.placement.hosts) {
      throw new InvalidArgumentError(`HostedExpertExecutor: ${o.hosts.length} host transports for a placement over ${o.placement.hosts} hosts`);
    }
    this.placement = o.placement;
    this.profile = resolveProfile(o.profile);
    this.hosts = o.hosts;
    this.waitsOnOtherProcesses = o.hosts.some((h) => h.inProcess !== true);
    this.computesSharedExpert = o.sharedExpert === "hosts";
    this.dispatchCodec = getDispatchCodec(this.profile.dispatch);
    this.combineCodec = getDispatchCodec(this.profile.combine);
    this.metrics = o.metrics ?? {};
    this.requestId = o.requestId ?? (() => undefined);
    this.hidden = o.hidden;
  }

  /** Some host computes on this machine's cores (ExpertExecutor.sharesCores). */
  get sharesCores(): boolean {
    return this.hosts.some((h) => h.sameMachine === true);
  }

  /** The last call's traffic (undefined before the first). */
  get lastDispatch(): DispatchTrace | undefined {
    return this.last;
  }

  async runRouted(
    layer: number,
    x: Float32Array,
    T: number,
    ids: Int32Array,
    weights: Float32Array,
    out: Float32Array,
    sharedOut?: Float32Array,
  ): Promise<void> {
    if (T === 0) return;
    const hidden = this.hidden ?? x.length / T;
    if (!Number.isInteger(hidden) || hidden < 1 || x.length < T * hidden || out.length < T * hidden) {
      throw new InvalidArgumentError(`runRouted: x has ${x.length} and out ${out.length} values, not [${T}, hidden] matrices`);
    }
    if (sharedOut !== undefined && (!this.computesSharedExpert || sharedOut.length < T * hidden)) {
      throw new InvalidArgumentError(
        this.computesSharedExpert
          ? `runRouted: sharedOut has ${sharedOut.length} values, not [${T}, ${hidden}]`
          : "runRouted: sharedOut given, but the shared expert runs locally (sharedExpert)",
      );
    }
    const k = weights.length === ids.length ? ids.length / T : 0;
    if (!Number.isInteger(k) || k < 1) {
      throw new InvalidArgumentError(`runRouted: ${ids.length} expert ids and ${weights.length} weights for ${T} tokens`);
    }
    const started = performance.now();
    const encoded = this.dispatchCodec.encode(x, T, hidden); // [T, hidden], encoded once
    const batches = splitByHost(ids, weights, T, k, this.placement);
    const sharedRows = sharedOut === undefined ? undefined : assignSharedRows(batches, T);
    const requestId = this.requestId();
    const controller = new AbortController();
    const rowsPerHost: number[] = [];
    const pairsPerHost: number[] = [];
    let sentBytes = 0;
    // Issue every call before the first await, so all are in flight together.
    const calls = batches.map((b) => {
      rowsPerHost.push(b.tokenIndex.length);
      pairsPerHost.push(b.expertIds.length);
      if (b.tokenIndex.length === 0) return null;
      const activations = gatherEncodedRows(encoded, b.tokenIndex);
      sentBytes += encodedSize(activations);
      const req: ExpertDispatchRequest = {
        layer,
        rows: b.tokenIndex.length,
        cols: hidden,
        activations,
        tokenExpertCounts: b.counts,
        expertIds: b.expertIds,
        weights: b.weights,
        ...(requestId === undefined ? {} : { requestId }),
        ...(sharedRows === undefined ? {} : { sharedExpertRows: sharedRows[b.host]! }),
      };
      let call: Promise<EncodedActivations>;
      try {
        call = this.hosts[b.host]!.dispatch(req, controller.signal);
      } catch (err) {
        // A transport that throws instead of rejecting must not leave the other calls running.
        call = Promise.reject(err);
      }
      return call.catch((err: unknown) => {
        controller.abort(err);
        throw err;
      });
    });
    this.metrics.moeDispatchSentBytes?.inc({ codec: this.profile.dispatch }, sentBytes);
    if (this.metrics.moeDispatchHostsReached) {
      const reached = new Int32Array(T);
      for (const b of batches) for (const t of b.tokenIndex) reached[t]!++;
      for (const r of reached) this.metrics.moeDispatchHostsReached.observe(r);
    }
    const sent = performance.now();
    this.metrics.moeDispatchPhase?.inc({ phase: "encode" }, (sent - started) / 1000);
    const replies = await Promise.all(calls);
    const answered = performance.now();
    // Combine in ascending host order: the canonical summation order.
    out.fill(0, 0, T * hidden);
    let receivedBytes = 0;
    for (let h = 0; h < batches.length; h++) {
      const reply = replies[h];
      if (reply === null || reply === undefined) continue;
      const b = batches[h]!;
      const n = b.tokenIndex.length;
      const shared = sharedRows?.[h] ?? [];
      try {
        checkEncoded(`expert-host ${h}'s reply`, reply, this.profile.combine, n + shared.length, hidden);
      } catch (err) {
        throw new DataLossError((err as MoelaError).message, { cause: err });
      }
      receivedBytes += encodedSize(reply);
      const partial = this.combineCodec.decode(reply); // [n + shared rows, hidden]
      for (let i = 0; i < n; i++) {
        const o = b.tokenIndex[i]! * hidden;
        const p = i * hidden;
        for (let c = 0; c < hidden; c++) out[o + c] = out[o + c]! + partial[p + c]!;
      }
      for (let j = 0; j < shared.length; j++) {
        const t = b.tokenIndex[shared[j]!]!;
        sharedOut!.set(partial.subarray((n + j) * hidden, (n + j + 1) * hidden), t * hidden);
      }
    }
    this.metrics.moeCombineReceivedBytes?.inc({ codec: this.profile.combine }, receivedBytes);
    const end = performance.now();
    this.metrics.moeDispatchPhase?.inc({ phase: "combine" }, (end - answered) / 1000);
    this.metrics.moeDispatchRoundTrip?.observe((end - started) / 1000);
    this.last = { layer, tokens: T, rowsPerHost, pairsPerHost, sentBytes, receivedBytes };
  }
}

/**
 * Per host, the rows of its batch (indices into its tokenIndex, ascending) whose shared expert it computes: each
 * token goes to the host among those its routed experts reach that has the fewest shared rows so far (the lowest
 * index on a tie), so every token's shared expert runs exactly once and reaches no new host.
 */
export function assignSharedRows(batches: ReadonlyArray<{ readonly host: number; readonly tokenIndex: ArrayLike<number> }>, T: number): number[][] {
  const hostsOf: number[][] = Array.from({ length: T }, () => []);
  const rowIn: number[][] = Array.from({ length: T }, () => []);
  for (const b of batches) {
    for (let i = 0; i < b.tokenIndex.length; i++) {
      hostsOf[b.tokenIndex[i]!]!.push(b.host);
      rowIn[b.tokenIndex[i]!]!.push(i);
    }
  }
  const rows: number[][] = batches.map(() => []);
  const load = new Map<number, number>();
  const slot = new Map<number, number>(batches.map((b, j) => [b.host, j]));
  for (let t = 0; t < T; t++) {
    const hosts = hostsOf[t]!;
    if (hosts.length === 0) throw new InvalidArgumentError(`runRouted: token ${t} reaches no expert-host`);
    let best = 0;
    for (let j = 1; j < hosts.length; j++) {
      const a = load.get(hosts[j]!) ?? 0;
      const b = load.get(hosts[best]!) ?? 0;
      if (a < b || (a === b && hosts[j]! < hosts[best]!)) best = j;
    }
    const h = hosts[best]!;
    load.set(h, (load.get(h) ?? 0) + 1);
    rows[slot.get(h)!]!.push(rowIn[t]![best]!);
  }
  // Tokens were visited in ascending order and a batch's tokenIndex ascends, so each host's rows already ascend.
  return rows;
}

/** What a dispatcher expects of the host at shard `shard` (checkHostInfo). */
export interface ExpectedHost {
  readonly shard: number;
  readonly placement: ExpertPlacement;
  readonly profile: ProfileLike;
  readonly hidden: number;
  /** The MoE layers the model has (main and MTP), ascending. */
  readonly layers: readonly number[];
  /** When given, the host must report this model id. */
  readonly modelId?: string;
  /** true: the host must hold the shared expert (the dispatcher sends it shared rows). */
  readonly sharedExpert?: boolean;
}

/**
 * Throws a FAILED_PRECONDITION MoelaError naming `name` unless the host's Info matches what the
 * dispatcher will send it: same shard and shard count, model, precision, hidden size, and at every
 * MoE layer exactly the experts the placement gives that shard. Run once per host at start-up.
 */
export function checkHostInfo(info: HostInfo, want: ExpectedHost, name = `expert-host ${want.shard}`): void {
  const fail = (msg: string): never => {
    throw new FailedPreconditionError(`${name}: ${msg}`);
  };
  const profile = resolveProfile(want.profile);
  if (info.shardIndex !== want.shard || info.shardCount !== want.placement.hosts) {
    fail(`serves shard ${info.shardIndex} of ${info.shardCount}, expected shard ${want.shard} of ${want.placement.hosts}`);
  }
  if (want.modelId !== undefined && info.modelId !== want.modelId) fail(`serves model ${info.modelId}, expected ${want.modelId}`);
  if (info.precision !== profile.name) fail(`runs precision ${info.precision}, expected ${profile.name}`);
  if (info.hiddenSize !== want.hidden) fail(`has hidden size ${info.hiddenSize}, expected ${want.hidden}`);
  if (want.sharedExpert === true && !info.sharedExpert)
    fail("holds no shared expert, and this dispatcher sends it the shared expert's rows (run the same moela version everywhere)");
  const expected = want.placement.expertsOfHost[want.shard] ?? [];
  const layers = info.layers.map((l) => l.layer);
  if (layers.join(",") !== want.layers.join(",")) fail(`serves MoE layers [${layers.join(", ")}], expected [${want.layers.join(", ")}]`);
  for (const l of info.layers) {
    if (l.expertIds.join(",") !== expected.join(",")) {
      fail(`holds experts [${l.expertIds.join(", ")}] at layer ${l.layer}, the placement gives it [${expected.join(", ")}]`);
    }
  }
}
