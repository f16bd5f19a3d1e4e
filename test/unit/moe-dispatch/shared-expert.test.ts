// The shared expert on the expert-hosts (HostedExpertExecutorOptions.sharedExpert): DeepSeek-V3's decoding treats
// it as one more routed expert every token selects. The hosts then compute it with the engine's own bits, each
// token's on exactly one host its routed experts already reach, and a bad request is refused naming the field.
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { DeepseekModel, readModelConfig } from "@moela/engine";
import {
  assignSharedRows,
  createInProcessExperts,
  getDispatchCodec,
  HostedExpertExecutor,
  placeExperts,
  splitByHost,
  type ExpertDispatchRequest,
  type ExpertHostTransport,
  type SharedExpertPlacement,
} from "@moela/moe-dispatch";
import { makeCheckpoint, removeCheckpoints } from "../../helpers/checkpoints.js";
import { greedyRun } from "./greedy-run.js";

const H = 2;

interface Seen {
  dispatches: ExpertDispatchRequest[];
  routedTokens: number;
}

/** The tiny model with its routed experts on H hosts behind transports that answer a little later, as remote ones do. */
function remoteLike(dir: string, sharedExpert: SharedExpertPlacement, seen: Seen, computeOffEventLoop = false): DeepseekModel {
  const model = DeepseekModel.load(dir, { kernels: "fast" });
  // computeOffEventLoop: the hosts' grouped path (dispatchAsync), as the expert-host service runs it.
  const local = createInProcessExperts(model, H, "exact", { computeOffEventLoop });
  const hosts: ExpertHostTransport[] = local.hosts.map((h) => ({
    async dispatch(req, signal) {
      seen.dispatches.push(req);
      await new Promise((r) => setTimeout(r, 1));
      return await h.dispatch(req, signal);
    },
  }));
  const executor = new HostedExpertExecutor({ placement: local.placement, profile: "exact", hosts, hidden: model.config.hiddenSize, sharedExpert });
  const runRouted = executor.runRouted.bind(executor);
  executor.runRouted = (layer, x, T, ids, weights, out, sharedOut) => {
    seen.routedTokens += T;
    return runRouted(layer, x, T, ids, weights, out, sharedOut);
  };
  model.setExpertExecutor(executor);
  return model;
}

describe("the shared expert on the expert-hosts", () => {
  let dir: string;
  beforeAll(() => {
    dir = makeCheckpoint("tiny-v3");
  });
  afterAll(removeCheckpoints);

  it("gives the tokens and logprobs of the model computing it itself (1 and 2 micro-batches), and every token's runs once on the hosts", async () => {
    expect(readModelConfig(dir).nSharedExperts).toBeGreaterThan(0);
    // The same H hosts with the shared expert computed by the model (the routed sums' order depends on H only).
    const localSeen: Seen = { dispatches: [], routedTokens: 0 };
    const local = await greedyRun(remoteLike(dir, "local", localSeen));
    const hostsSeen: Seen = { dispatches: [], routedTokens: 0 };
    const onHosts = await greedyRun(remoteLike(dir, "hosts", hostsSeen));
    const onHostsMicroBatched = await greedyRun(remoteLike(dir, "hosts", { dispatches: [], routedTokens: 0 }), 2);
    const onHostsGrouped = await greedyRun(remoteLike(dir, "hosts", { dispatches: [], routedTokens: 0 }, true), 2);
    expect(onHosts).toEqual(local);
    expect(onHostsMicroBatched).toEqual(local);
    expect(onHostsGrouped).toEqual(local);
    expect(localSeen.dispatches.every((d) => d.sharedExpertRows === undefined)).toBe(true);
    const sharedRows = hostsSeen.dispatches.reduce((a, d) => a + (d.sharedExpertRows?.length ?? 0), 0);
    expect(hostsSeen.routedTokens).toBeGreaterThan(0);
    expect(sharedRows).toBe(hostsSeen.routedTokens);
    // Local unless asked for.
    const model = DeepseekModel.load(dir, { kernels: "fast" });
    const inProc = createInProcessExperts(model, H, "exact");
    const remote = inProc.hosts.map((h): ExpertHostTransport => ({ dispatch: (req, s) => h.dispatch(req, s) }));
    const hidden = model.config.hiddenSize;
    expect(inProc.executor.computesSharedExpert).toBe(false);
    expect(new HostedExpertExecutor({ placement: inProc.placement, profile: "exact", hosts: remote, hidden }).computesSharedExpert).toBe(false);
    expect(new HostedExpertExecutor({ placement: inProc.placement, profile: "exact", hosts: remote, hidden, sharedExpert: "hosts" }).computesSharedExpert).toBe(
      true,
    );
  });

  it("assigns each token to one host it reaches, balancing the hosts", () => {
    const placement = placeExperts({ nRoutedExperts: 4, nGroup: 2, hosts: 2 });
    expect([...placement.hostOfExpert]).toEqual([0, 0, 1, 1]);
    // 4 tokens, k = 2: tokens 0 and 2 reach both hosts, token 1 only host 0, token 3 only host 1.
    const ids = Int32Array.from([0, 2, 0, 1, 1, 3, 2, 3]);
    const weights = new Float32Array(8).fill(0.5);
    const batches = splitByHost(ids, weights, 4, 2, placement);
    const rows = assignSharedRows(batches, 4);
    const owner = new Map<number, number>();
    rows.forEach((rs, h) => rs.forEach((r) => owner.set(batches[h]!.tokenIndex[r]!, h)));
    expect([...owner.keys()].sort()).toEqual([0, 1, 2, 3]);
    expect(owner.get(1)).toBe(0);
    expect(owner.get(3)).toBe(1);
    // Token 0 goes to host 0 (tie, lowest index); token 2 then finds host 0 busier (tokens 0 and 1) and goes to host 1.
    expect(owner.get(0)).toBe(0);
    expect(owner.get(2)).toBe(1);
    for (const rs of rows) expect([...rs].sort((a, b) => a - b)).toEqual(rs);
  });

  it("is refused naming the field when the rows are out of range, unordered, or the host holds no shared expert", () => {
    const model = DeepseekModel.load(dir, { kernels: "fast" });
    const { hosts, placement } = createInProcessExperts(model, H, "exact");
    const core = hosts[0]!.core;
    expect(core.info().sharedExpert).toBe(true);
    const hidden = model.config.hiddenSize;
    const layer = core.layers[0]!;
    const expert = placement.expertsOfHost[0]![0]!;
    const x = Float32Array.from({ length: 2 * hidden }, (_, i) => Math.sin(i));
    const req = (sharedExpertRows: number[]): ExpertDispatchRequest => ({
      layer,
      rows: 2,
      cols: hidden,
      activations: getDispatchCodec("f32").encode(x, 2, hidden),
      tokenExpertCounts: [1, 1],
      expertIds: [expert, expert],
      weights: [1, 1],
      sharedExpertRows,
    });
    expect(core.dispatch(req([0, 1])).rows).toBe(4);
    expect(() => core.validate(req([2]))).toThrow(/shared_expert_rows\[0\] = 2 is outside \[0, 2\)/);
    expect(() => core.validate(req([1, 0]))).toThrow(/ascending and distinct/);
    expect(() => core.validate(req([0, 0]))).toThrow(/ascending and distinct/);
    // Loaded from the checkpoint, a shard holds the shared expert only when it will compute it.
    const bare = createInProcessExperts(dir, H, "exact").hosts[0]!.core;
    expect(bare.info().sharedExpert).toBe(false);
    expect(() => bare.validate(req([0]))).toThrow(/shared_expert_rows: this host holds no shared expert for layer/);
    expect(createInProcessExperts(dir, H, "exact", { sharedExpert: "hosts" }).hosts[0]!.core.info().sharedExpert).toBe(true);
  });
});
