// Decode's dual micro-batch overlap (ForwardOptions.microBatches): with the routed experts behind a
// dispatcher that waits on other processes, a step split into micro-batches in flight together gives the
// same bits as one batch, and the micro-batches really are in flight together.
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { DeepseekModel } from "@moela/engine";
import { createInProcessExperts, HostedExpertExecutor, type ExpertHostTransport } from "@moela/moe-dispatch";
import { makeCheckpoint, removeCheckpoints } from "../../helpers/checkpoints.js";
import { greedyRun } from "./greedy-run.js";

const H = 2;

/** The tiny model with its routed experts on H hosts reached through transports that answer a little later, as remote ones do. */
function remoteLike(dir: string, onDispatch: (inFlight: number) => void): DeepseekModel {
  const model = DeepseekModel.load(dir, { kernels: "fast" });
  const local = createInProcessExperts(model, H, "exact");
  let inFlight = 0;
  const hosts: ExpertHostTransport[] = local.hosts.map((h) => ({
    async dispatch(req, signal) {
      onDispatch(++inFlight);
      try {
        await new Promise((r) => setTimeout(r, 2));
        return await h.dispatch(req, signal);
      } finally {
        inFlight--;
      }
    },
  }));
  model.setExpertExecutor(new HostedExpertExecutor({ placement: local.placement, profile: "exact", hosts, hidden: model.config.hiddenSize }));
  return model;
}

describe("decode micro-batches", () => {
  let dir: string;
  beforeAll(() => {
    dir = makeCheckpoint("tiny-v3");
  });
  afterAll(removeCheckpoints);

  it("give the same tokens and logprobs as one batch, for 2 and 3 micro-batches, and overlap their dispatches", async () => {
    let most = 0;
    const model = remoteLike(dir, (n) => (most = Math.max(most, n)));
    const one = await greedyRun(model, 1);
    // One batch: at most H calls (one per host) in flight at once.
    expect(most).toBeLessThanOrEqual(H);
    most = 0;
    const two = await greedyRun(model, 2);
    // Two micro-batches: both dispatch before either's answers are back.
    expect(most).toBeGreaterThan(H);
    const three = await greedyRun(model, 3);
    expect(two).toEqual(one);
    expect(three).toEqual(one);
    // The prompt's forward emits the first token; the steps the other five.
    expect(one.tokens.every((t) => t.length === 5)).toBe(true);
  });
});
