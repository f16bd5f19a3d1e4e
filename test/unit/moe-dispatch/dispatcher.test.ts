import { describe, expect, it } from "vitest";
import { Code, InvalidArgumentError, MoelaError, UnavailableError } from "@moela/core";
import { defaultKernels, LocalExpertExecutor, mlpForward, mlpForwardGroup, Workspace, type MlpWeights, type MoeWeights } from "@moela/engine";
import {
  checkHostInfo,
  ExpertHostCore,
  getDispatchCodec,
  HostedExpertExecutor,
  InProcessExpertHost,
  placeExperts,
  PRECISION_PROFILES,
  type EncodedActivations,
  type ExpertDispatchRequest,
  type ExpertHostTransport,
  type ExpertPlacement,
  type PrecisionName,
} from "@moela/moe-dispatch";
import { bits, gaussianMatrix, rng } from "./random.js";

// A miniature MoE layer: 16 experts in 4 groups, hidden 200 (one full and one partial 128-tile).
const E = 16;
const GROUPS = 4;
const HIDDEN = 200;
const INTER = 24;
const K = 4;
const T = 11;
const LAYER = 3;

function randomExpert(seed: number): MlpWeights {
  const m = (s: number, rows: number, cols: number) => ({ kind: "f32" as const, rows, cols, data: gaussianMatrix(s, rows, cols, () => 0.08) });
  return { gate: m(seed, INTER, HIDDEN), up: m(seed + 1, INTER, HIDDEN), down: m(seed + 2, HIDDEN, INTER) };
}

const EXPERTS: MlpWeights[] = Array.from({ length: E }, (_, e) => randomExpert(1000 + 10 * e));
const X = gaussianMatrix(7, T, HIDDEN); // [T, hidden]

/** Top-k routing: K distinct experts per token, positive weights; `avoid` experts are never chosen. */
function routing(seed: number, avoid: (e: number) => boolean = () => false): { ids: Int32Array; weights: Float32Array } {
  const rand = rng(seed);
  const ids = new Int32Array(T * K);
  const weights = new Float32Array(T * K);
  for (let t = 0; t < T; t++) {
    const chosen: number[] = [];
    while (chosen.length < K) {
      const e = Math.floor(rand() * E);
      if (!chosen.includes(e) && !avoid(e)) chosen.push(e);
    }
    chosen.forEach((e, j) => {
      ids[t * K + j] = e;
      weights[t * K + j] = 0.1 + rand();
    });
  }
  return { ids, weights };
}

function core(placement: ExpertPlacement, h: number, profile: PrecisionName): ExpertHostCore {
  const experts = EXPERTS.map((w, e) => (placement.hostOfExpert[e] === h ? w : null));
  return new ExpertHostCore({
    expertsByLayer: new Map([[LAYER, experts]]),
    hidden: HIDDEN,
    profile,
    shardIndex: h,
    shardCount: placement.hosts,
    modelId: "test",
  });
}

/** An in-process host that records what it was sent. */
class RecordingHost implements ExpertHostTransport {
  readonly requests: ExpertDispatchRequest[] = [];
  constructor(private readonly inner: InProcessExpertHost) {}
  dispatch(req: ExpertDispatchRequest, signal?: AbortSignal): Promise<EncodedActivations> {
    this.requests.push(req);
    return this.inner.dispatch(req, signal);
  }
}

function setup(H: number, profile: PrecisionName) {
  const placement = placeExperts({ nRoutedExperts: E, nGroup: GROUPS, hosts: H });
  const hosts = Array.from({ length: H }, (_, h) => new RecordingHost(new InProcessExpertHost(core(placement, h, profile))));
  const executor = new HostedExpertExecutor({ placement, profile, hosts });
  return { placement, hosts, executor };
}

async function runHosted(H: number, profile: PrecisionName, ids: Int32Array, weights: Float32Array) {
  const s = setup(H, profile);
  const out = new Float32Array(T * HIDDEN).fill(123); // overwritten, never accumulated into
  await s.executor.runRouted(LAYER, X, T, ids, weights, out);
  return { ...s, out };
}

/**
 * The expected result computed term by term, independently of the dispatcher: optionally round the
 * activations through the dispatch codec, per host sum w * expert(x) over the token's experts there
 * in ascending id (float32 accumulation from +0), optionally round that partial through the combine
 * codec, then add the hosts' partials in ascending host order.
 */
function expected(H: number, profile: PrecisionName, ids: Int32Array, weights: Float32Array): Float32Array {
  const p = PRECISION_PROFILES[profile];
  const placement = placeExperts({ nRoutedExperts: E, nGroup: GROUPS, hosts: H });
  const x = getDispatchCodec(p.dispatch).roundTrip(X.slice(), T, HIDDEN, new Float32Array(T * HIDDEN));
  const out = new Float32Array(T * HIDDEN);
  const ws = new Workspace();
  const y = new Float32Array(HIDDEN);
  for (let t = 0; t < T; t++) {
    for (let h = 0; h < H; h++) {
      const slots = Array.from({ length: K }, (_, j) => j)
        .filter((j) => placement.hostOfExpert[ids[t * K + j]!] === h)
        .sort((a, b) => ids[t * K + a]! - ids[t * K + b]!);
      if (slots.length === 0) continue;
      const partial = new Float32Array(HIDDEN);
      for (const j of slots) {
        mlpForward(EXPERTS[ids[t * K + j]!]!, x.subarray(t * HIDDEN, (t + 1) * HIDDEN), 1, y, ws);
        for (let c = 0; c < HIDDEN; c++) partial[c] = partial[c]! + weights[t * K + j]! * y[c]!;
      }
      getDispatchCodec(p.combine).roundTrip(partial, 1, HIDDEN);
      for (let c = 0; c < HIDDEN; c++) out[t * HIDDEN + c] = out[t * HIDDEN + c]! + partial[c]!;
    }
  }
  return out;
}

function maxAbsDiff(a: Float32Array, b: Float32Array): number {
  let m = 0;
  for (let i = 0; i < a.length; i++) m = Math.max(m, Math.abs(a[i]! - b[i]!));
  return m;
}

describe("LocalExpertExecutor", () => {
  const { ids, weights } = routing(42);

  it("computes the shared expert in the routed experts' group with the bits of a group of its own", async () => {
    const shared = randomExpert(7000);
    const moe: MoeWeights = { gate: EXPERTS[0]!.gate, bias: null, experts: EXPERTS, shared };
    const alone = { routed: new Float32Array(T * HIDDEN), shared: new Float32Array(T * HIDDEN) };
    const executor = new LocalExpertExecutor(new Map([[LAYER, moe]]), HIDDEN, K, new Workspace());
    expect(executor.computesSharedExpert).toBe(true);
    await executor.runRouted(LAYER, X, T, ids, weights, alone.routed);
    // How the model computed it before: a group of one entry over all T rows.
    mlpForwardGroup([shared], [T], X, alone.shared, new Workspace(), defaultKernels());
    const together = { routed: new Float32Array(T * HIDDEN), shared: new Float32Array(T * HIDDEN).fill(Number.NaN) };
    await executor.runRouted(LAYER, X, T, ids, weights, together.routed, together.shared);
    expect(bits(together.routed)).toEqual(bits(alone.routed));
    expect(bits(together.shared)).toEqual(bits(alone.shared));
  });

  it("gives zeros for the shared expert of a layer that has none", async () => {
    const moe: MoeWeights = { gate: EXPERTS[0]!.gate, bias: null, experts: EXPERTS, shared: null };
    const sharedOut = new Float32Array(T * HIDDEN).fill(Number.NaN);
    await new LocalExpertExecutor(new Map([[LAYER, moe]]), HIDDEN, K, new Workspace()).runRouted(
      LAYER,
      X,
      T,
      ids,
      weights,
      new Float32Array(T * HIDDEN),
      sharedOut,
    );
    expect(sharedOut.every((v) => v === 0)).toBe(true);
  });
});

describe("HostedExpertExecutor over in-process hosts", () => {
  const { ids, weights } = routing(42);

  it("with one host under the exact profile reproduces LocalExpertExecutor", async () => {
    const moe: MoeWeights = { gate: EXPERTS[0]!.gate, bias: null, experts: EXPERTS, shared: null };
    const local = new Float32Array(T * HIDDEN);
    await new LocalExpertExecutor(new Map([[LAYER, moe]]), HIDDEN, K, new Workspace()).runRouted(LAYER, X, T, ids, weights, local);
    const { out } = await runHosted(1, "exact", ids, weights);
    expect(maxAbsDiff(out, local)).toBeLessThanOrEqual(1e-6);
    // Same kernel, same summation order: in fact bit for bit.
    expect(bits(out)).toEqual(bits(local));
  });

  it.each<[PrecisionName, number]>([
    ["exact", 1],
    ["exact", 2],
    ["exact", 3],
    ["exact", 4],
    ["paper", 1],
    ["paper", 2],
    ["paper", 4],
    ["paper-logfmt8", 1],
    ["paper-logfmt8", 2],
    ["paper-logfmt8", 4],
  ])("profile %s over %i hosts equals the term-by-term sum with the profile's roundings", async (profile, H) => {
    const { out } = await runHosted(H, profile, ids, weights);
    expect(bits(out)).toEqual(bits(expected(H, profile, ids, weights)));
  });

  it("the paper profile really rounds: it departs from exact by about FP8/BF16 precision, no more", async () => {
    const exact = (await runHosted(2, "exact", ids, weights)).out;
    const paper = (await runHosted(2, "paper", ids, weights)).out;
    const scale = Math.max(...Array.from(exact, Math.abs));
    const diff = maxAbsDiff(exact, paper);
    expect(diff).toBeGreaterThan(1e-4 * scale);
    expect(diff).toBeLessThan(0.1 * scale);
  });

  it("paper-logfmt8 sends LogFMT-8 activations and BF16 partial sums, and rounds otherwise than paper", async () => {
    const logfmt = await runHosted(2, "paper-logfmt8", ids, weights);
    const sent = logfmt.hosts.flatMap((h) => h.requests);
    expect(sent.length).toBeGreaterThan(0);
    for (const req of sent) {
      expect(req.activations.codec).toBe("logfmt8");
      expect(req.activations.data.length).toBe(req.rows * HIDDEN);
      expect(req.activations.meta.length).toBe(req.rows * 2 * 2); // (lo, hi) per 1x128 tile, 2 tiles per row
    }
    const paper = (await runHosted(2, "paper", ids, weights)).out;
    const exact = (await runHosted(2, "exact", ids, weights)).out;
    expect(bits(logfmt.out)).not.toEqual(bits(paper));
    const scale = Math.max(...Array.from(exact, Math.abs));
    expect(maxAbsDiff(exact, logfmt.out)).toBeGreaterThan(1e-4 * scale);
    expect(maxAbsDiff(exact, logfmt.out)).toBeLessThan(0.1 * scale);
  });

  it("over H hosts agrees with the single-host sum up to float32 reassociation", async () => {
    const one = (await runHosted(1, "exact", ids, weights)).out;
    const four = (await runHosted(4, "exact", ids, weights)).out;
    const scale = Math.max(...Array.from(one, Math.abs));
    expect(maxAbsDiff(one, four)).toBeLessThanOrEqual(1e-6 * scale);
  });

  it("sends a token to a host once, with all its experts there, and skips hosts no token reaches", async () => {
    const H = 4;
    const placement = placeExperts({ nRoutedExperts: E, nGroup: GROUPS, hosts: H });
    // Host 2 holds group 2 (experts 8..11): route around it.
    const r = routing(9, (e) => placement.hostOfExpert[e] === 2);
    const { hosts, executor } = await runHosted(H, "exact", r.ids, r.weights);
    for (let h = 0; h < H; h++) {
      const reached: number[] = [];
      let pairs = 0;
      for (let t = 0; t < T; t++) {
        const mine = Array.from(r.ids.subarray(t * K, (t + 1) * K)).filter((e) => placement.hostOfExpert[e] === h);
        if (mine.length > 0) reached.push(t);
        pairs += mine.length;
      }
      const reqs = hosts[h]!.requests;
      if (reached.length === 0) {
        expect(reqs).toHaveLength(0);
        continue;
      }
      expect(reqs).toHaveLength(1);
      const req = reqs[0]!;
      expect(req.rows).toBe(reached.length);
      expect(req.activations.rows).toBe(reached.length);
      expect(Array.from(req.tokenExpertCounts).reduce((a, b) => a + b, 0)).toBe(pairs);
      expect(req.expertIds.length).toBe(pairs);
      expect(Array.from(req.expertIds).every((e) => placement.hostOfExpert[e] === h)).toBe(true);
    }
    expect(hosts[2]!.requests).toHaveLength(0);
    expect(executor.lastDispatch!.rowsPerHost[2]).toBe(0);
    expect(executor.lastDispatch!.pairsPerHost.reduce((a, b) => a + b, 0)).toBe(T * K);
  });

  it("sends each host's rows of the one encoding (fp8 tiles are sliced, not re-encoded)", async () => {
    const { hosts } = await runHosted(2, "paper", ids, weights);
    const whole = getDispatchCodec("fp8-tile").encode(X, T, HIDDEN);
    for (const host of hosts) {
      for (const req of host.requests) {
        const ts = Array.from({ length: T }, (_, t) => t).filter((t) =>
          Array.from(ids.subarray(t * K, (t + 1) * K)).some((e) => req.expertIds.length > 0 && Array.from(req.expertIds).includes(e)),
        );
        expect(req.activations.codec).toBe("fp8-tile");
        expect(req.activations.data.length).toBe(req.rows * HIDDEN);
        expect(req.activations.meta.length).toBe(req.rows * 2);
        // Row 0 of the request is the first token routed there: the same bytes as in the whole encoding.
        const t0 = ts[0]!;
        expect(Array.from(req.activations.data.subarray(0, HIDDEN))).toEqual(Array.from(whole.data.subarray(t0 * HIDDEN, (t0 + 1) * HIDDEN)));
      }
    }
  });

  it("issues every host's call before awaiting any, and cancels the rest when one host fails", async () => {
    const placement = placeExperts({ nRoutedExperts: E, nGroup: GROUPS, hosts: 2 });
    const seen: AbortSignal[] = [];
    let started = 0;
    const failing: ExpertHostTransport = {
      dispatch: () => {
        started++;
        return Promise.reject(new UnavailableError("expert-host 0 (127.0.0.1:1) is unavailable: connection refused"));
      },
    };
    const hanging: ExpertHostTransport = {
      dispatch: (_req, signal) => {
        started++;
        seen.push(signal!);
        return new Promise((_resolve, reject) => signal!.addEventListener("abort", () => reject(signal!.reason)));
      },
    };
    const executor = new HostedExpertExecutor({ placement, profile: "exact", hosts: [failing, hanging] });
    const pending = executor.runRouted(LAYER, X, T, ids, weights, new Float32Array(T * HIDDEN));
    expect(started).toBe(2); // both calls were in flight before runRouted's first await
    await expect(pending).rejects.toBeInstanceOf(UnavailableError);
    await expect(pending).rejects.toThrow(/expert-host 0/);
    expect(seen[0]!.aborted).toBe(true);
  });

  it("refuses a reply of the wrong shape as DATA_LOSS", async () => {
    const placement = placeExperts({ nRoutedExperts: E, nGroup: GROUPS, hosts: 1 });
    const short: ExpertHostTransport = {
      dispatch: async (req) => getDispatchCodec("f32").encode(new Float32Array((req.rows - 1) * HIDDEN), req.rows - 1, HIDDEN),
    };
    const executor = new HostedExpertExecutor({ placement, profile: "exact", hosts: [short] });
    await expect(executor.runRouted(LAYER, X, T, ids, weights, new Float32Array(T * HIDDEN))).rejects.toMatchObject({
      code: Code.DATA_LOSS,
    });
  });

  it("records dispatch metrics: hosts reached per token and bytes by codec", async () => {
    const placement = placeExperts({ nRoutedExperts: E, nGroup: GROUPS, hosts: 2 });
    const hosts = [0, 1].map((h) => new InProcessExpertHost(core(placement, h, "paper")));
    const reached: number[] = [];
    const bytes: Record<string, number> = {};
    const executor = new HostedExpertExecutor({
      placement,
      profile: "paper",
      hosts,
      metrics: {
        moeDispatchHostsReached: { observe: (v) => reached.push(v) },
        moeDispatchSentBytes: { inc: (l, v) => void (bytes[`sent.${l.codec}`] = (bytes[`sent.${l.codec}`] ?? 0) + v) },
        moeCombineReceivedBytes: { inc: (l, v) => void (bytes[`recv.${l.codec}`] = (bytes[`recv.${l.codec}`] ?? 0) + v) },
      },
    });
    await executor.runRouted(LAYER, X, T, ids, weights, new Float32Array(T * HIDDEN));
    expect(reached).toHaveLength(T);
    const rows = executor.lastDispatch!.rowsPerHost.reduce((a, b) => a + b, 0);
    expect(reached.reduce((a, b) => a + b, 0)).toBe(rows);
    // fp8: 1 byte per value + one float32 per 128-tile (2 tiles per row of 200); bf16 back: 2 bytes per value.
    expect(bytes["sent.fp8-tile"]).toBe(rows * (HIDDEN + 4 * 2));
    expect(bytes["recv.bf16"]).toBe(rows * HIDDEN * 2);
  });
});

/** Two tokens of X for a host holding `mine`: token 0 to its first two experts, token 1 to its third. */
function twoTokenRequest(mine: readonly number[], over: Partial<ExpertDispatchRequest> = {}): ExpertDispatchRequest {
  return {
    layer: LAYER,
    rows: 2,
    cols: HIDDEN,
    activations: getDispatchCodec("f32").encode(X, 2, HIDDEN),
    tokenExpertCounts: [2, 1],
    expertIds: [mine[0]!, mine[1]!, mine[2]!],
    weights: [0.5, 0.25, 1],
    ...over,
  };
}

describe("ExpertHostCore validation", () => {
  const placement = placeExperts({ nRoutedExperts: E, nGroup: GROUPS, hosts: 2 });
  const host0 = core(placement, 0, "exact");
  const mine = placement.expertsOfHost[0]!;
  const theirs = placement.expertsOfHost[1]!;
  const good = (over: Partial<ExpertDispatchRequest> = {}): ExpertDispatchRequest => twoTokenRequest(mine, over);

  it("answers a well-formed request", () => {
    const out = host0.dispatch(good());
    expect(out.codec).toBe("f32");
    expect([out.rows, out.cols]).toEqual([2, HIDDEN]);
  });

  it.each<[string, Partial<ExpertDispatchRequest>, RegExp]>([
    ["a dense or unknown layer", { layer: 0 }, /layer 0 is not an MoE layer/],
    [
      "an expert another shard holds",
      { expertIds: [mine[0]!, theirs[0]!, mine[2]!] },
      new RegExp(`expert ${theirs[0]} of layer ${LAYER} is not held by shard 0`),
    ],
    ["an expert id out of range", { expertIds: [mine[0]!, 99, mine[2]!] }, /outside \[0, 16\)/],
    ["the same expert twice for a token", { expertIds: [mine[0]!, mine[0]!, mine[2]!] }, /appears twice for token 0/],
    ["counts that do not sum to the ids", { tokenExpertCounts: [1, 1] }, /token_expert_counts sum to 2/],
    ["a count per token missing", { tokenExpertCounts: [3] }, /token_expert_counts has 1 entries for 2 tokens/],
    ["a token with no experts", { tokenExpertCounts: [3, 0] }, /token_expert_counts\[1\] is 0/],
    ["more rows than a dispatch may carry", { rows: 70_000 }, /rows 70000 exceeds the 65536 one dispatch may carry/],
    ["weights not aligned with ids", { weights: [0.5, 0.25] }, /weights has 2 entries/],
    ["a NaN weight", { weights: [0.5, Number.NaN, 1] }, /weights\[1\] is NaN/],
    ["an infinite weight", { weights: [0.5, 1, Number.POSITIVE_INFINITY] }, /weights\[2\] is Infinity/],
    ["the wrong hidden size", { cols: 100, activations: getDispatchCodec("f32").encode(X, 2, 100) }, /100 columns, the model's hidden_size is 200/],
    ["rows that disagree with the activations", { rows: 3, tokenExpertCounts: [1, 1, 1] }, /shape \[2, 200\], expected \[3, 200\]/],
    ["the wrong dispatch codec", { activations: getDispatchCodec("fp8-tile").encode(X, 2, HIDDEN) }, /encoded as fp8-tile, expected f32/],
    ["truncated activation bytes", { activations: { ...getDispatchCodec("f32").encode(X, 2, HIDDEN), data: new Uint8Array(10) } }, /carries 10 data bytes/],
  ])("rejects %s with INVALID_ARGUMENT", (_, over, message) => {
    const run = () => host0.dispatch(good(over));
    expect(run).toThrow(InvalidArgumentError);
    expect(run).toThrow(message);
    // ...and keeps answering afterwards.
    expect(host0.dispatch(good()).rows).toBe(2);
  });
});

describe("ExpertHostCore.dispatchAsync (the expert-host service's path, off the event loop)", () => {
  const placement = placeExperts({ nRoutedExperts: E, nGroup: GROUPS, hosts: 2 });
  const host0 = core(placement, 0, "exact");
  const req = (weights: number[]): ExpertDispatchRequest => twoTokenRequest(placement.expertsOfHost[0]!, { weights });
  const bytes = (a: { data: Uint8Array }) => Array.from(a.data);

  it("answers with dispatch()'s bytes, concurrent calls each their own (grouped when they wait together), and rejects bad input", async () => {
    const weights = [
      [0.5, 0.25, 1],
      [1, 1, 0.125],
      [0.3, 0.6, 0.9],
    ];
    const want = weights.map((w) => bytes(host0.dispatch(req(w))));
    // Issued together: they share the core's scratch, so they must run one at a time and not mix.
    const grouped = host0.groupedRequests;
    const got = await Promise.all(weights.map((w) => host0.dispatchAsync(req(w))));
    expect(got.map(bytes)).toEqual(want);
    // The calls that waited while the first computed were computed as one group, with the same bytes.
    expect(host0.groupedRequests - grouped).toBe(2);
    await expect(host0.dispatchAsync({ ...req([0.5, 0.25, 1]), layer: 0 })).rejects.toThrow(/layer 0 is not an MoE layer/);
    expect(bytes(await host0.dispatchAsync(req(weights[0]!)))).toEqual(want[0]);
  });
});

describe("checkHostInfo", () => {
  const placement = placeExperts({ nRoutedExperts: E, nGroup: GROUPS, hosts: 2 });
  const want = { shard: 1, placement, profile: "paper" as const, hidden: HIDDEN, layers: [LAYER], modelId: "test" };

  it("accepts the host the placement describes", () => {
    expect(() => checkHostInfo(core(placement, 1, "paper").info(), want)).not.toThrow();
  });

  it.each<[string, ExpertHostCore, RegExp]>([
    ["another shard", core(placement, 0, "paper"), /serves shard 0 of 2, expected shard 1 of 2/],
    ["another precision", core(placement, 1, "exact"), /runs precision exact, expected paper/],
  ])("refuses %s with FAILED_PRECONDITION", (_, host, message) => {
    const run = () => checkHostInfo(host.info(), want);
    expect(run).toThrow(message);
    try {
      run();
    } catch (err) {
      expect(err).toBeInstanceOf(MoelaError);
      expect((err as MoelaError).code).toBe(Code.FAILED_PRECONDITION);
    }
  });
});
