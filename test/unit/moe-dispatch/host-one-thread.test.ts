// The expert-host's A/B switch expert-host-one-thread (@moela/core ab-switch.ts): while it is on, a host computes
// its experts on its calling thread alone. The answers keep their bits; only where the products run changes.
import { describe, expect, it } from "vitest";
import { DeepseekModel, nativeKernelsAddon } from "@moela/engine";
import { createInProcessExperts, HostedExpertExecutor, type ExpertHostTransport } from "@moela/moe-dispatch";
import { abSwitchOnNow, tinyModelOnTwoThreads } from "../../helpers/two-threads.js";
import { greedyRun } from "./greedy-run.js";

const native = nativeKernelsAddon!;

/** The tiny model on two in-process hosts (their grouped path, as the service runs it); `chunks` gets, per dispatch,
 * the chunks the kernel workers took while the host computed. */
function withHosts(dir: string, chunks: number[]): DeepseekModel {
  const model = DeepseekModel.load(dir, { kernels: "fast" });
  const local = createInProcessExperts(model, 2, "exact", { computeOffEventLoop: true });
  const hosts: ExpertHostTransport[] = local.hosts.map((h) => ({
    async dispatch(req, signal) {
      const before = native.workerChunks();
      const out = await h.dispatch(req, signal);
      chunks.push(native.workerChunks() - before);
      return out;
    },
  }));
  model.setExpertExecutor(new HostedExpertExecutor({ placement: local.placement, profile: "exact", hosts, hidden: model.config.hiddenSize }));
  return model;
}

describe("expert-host-one-thread", () => {
  const dir = tinyModelOnTwoThreads();

  it("no worker takes a chunk of a host's products while it is on; the same tokens and logprobs", async () => {
    const off: number[] = [];
    let want = await greedyRun(withHosts(dir(), off));
    const dispatches = off.length;
    // A worker may miss every product of a run on a busy machine (CI ran one such): run again until one took part.
    const deadline = performance.now() + 10_000;
    while (off.every((c) => c === 0) && performance.now() < deadline) want = await greedyRun(withHosts(dir(), off));
    expect(off.some((c) => c > 0)).toBe(true);
    abSwitchOnNow("expert-host-one-thread");
    const on: number[] = [];
    const got = await greedyRun(withHosts(dir(), on));
    expect(on.length).toBe(dispatches);
    expect(on.every((c) => c === 0)).toBe(true);
    expect(got).toEqual(want);
  });
});
