// The expert-host's A/B switch expert-host-one-thread (@moela/core ab-switch.ts): while it is on, a host computes
// its experts on its calling thread alone. The answers keep their bits; only where the products run changes.
import { afterAll, afterEach, beforeAll, describe, expect, it, vi } from "vitest";
import { DeepseekModel, nativeKernelsAddon } from "@moela/engine";
import { createInProcessExperts, HostedExpertExecutor, type ExpertHostTransport } from "@moela/moe-dispatch";
import { makeCheckpoint, removeCheckpoints } from "../../helpers/checkpoints.js";
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
  let dir: string;
  beforeAll(() => {
    dir = makeCheckpoint("tiny-v3");
    // Two threads, every product split, so a worker takes chunks of a host's products whenever it may.
    native.setThreads(2, 0);
  });
  afterAll(() => {
    native.setThreads(1, 1 << 16);
    removeCheckpoints();
  });
  afterEach(() => {
    vi.useRealTimers();
    delete process.env["MOELA_AB_SWITCH"];
  });

  it("no worker takes a chunk of a host's products while it is on; the same tokens and logprobs", async () => {
    const off: number[] = [];
    const want = await greedyRun(withHosts(dir, off));
    expect(off.some((c) => c > 0)).toBe(true);
    process.env["MOELA_AB_SWITCH"] = "expert-host-one-thread";
    vi.useFakeTimers({ toFake: ["Date"] });
    vi.setSystemTime(150); // an odd 100 ms window: on
    const on: number[] = [];
    const got = await greedyRun(withHosts(dir, on));
    expect(on.length).toBe(off.length);
    expect(on.every((c) => c === 0)).toBe(true);
    expect(got).toEqual(want);
  });
});
