// A model whose expert-hosts compute on this machine's cores leaves them its kernel threads while they compute a
// batch of LEAVE_CORES_MIN_ROWS rows or more: products run on the calling thread alone (KernelBackend.callerOnly)
// from the dispatch to the answer, and the threads join again after. Smaller batches keep the threads. The bits do
// not change either way.
import { describe, expect, it } from "vitest";
import { DeepseekModel, LEAVE_CORES_MIN_ROWS, nativeKernelsAddon, PagedLatentCache, PhaseTimes, type ExpertExecutor } from "@moela/engine";
import { abSwitchOnNow, tinyModelOnTwoThreads } from "../../helpers/two-threads.js";

const native = nativeKernelsAddon!;
/** A forward of LEAVE_CORES_MIN_ROWS rows or more leaves the cores; SHORT's does not. */
const PROMPT = Array.from({ length: 24 }, (_, i) => (5 + 31 * i) % 1000);
const SHORT = PROMPT.slice(0, 4);

async function forward(model: DeepseekModel, prompt: readonly number[] = PROMPT): Promise<Float32Array> {
  const cache = new PagedLatentCache({ numLayers: model.cacheLayers, latentDim: model.config.latentDim, blockSize: 8, numBlocks: 8 });
  const table: number[] = [];
  cache.ensureCapacity(table, prompt.length);
  const r = await model.forward(cache, [{ blockTable: table, start: 0, tokens: [...prompt], logits: "last" }], { attention: "absorbed" });
  return Float32Array.from(r.logits.subarray(0, model.config.vocabSize));
}

/**
 * Remote-like experts that answer zeros after a delay, as a host would answer (the answer itself is irrelevant
 * here). Records, per call, the worker chunks taken between the dispatch and the answer: the model computes the
 * shared expert in that window.
 */
function remoteExperts(model: DeepseekModel, sharesCores: boolean): { executor: ExpertExecutor; chunksWhileWaiting: number[] } {
  const chunksWhileWaiting: number[] = [];
  const executor: ExpertExecutor = {
    waitsOnOtherProcesses: true,
    sharesCores,
    async runRouted(_layer, _x, T, _ids, _weights, out) {
      const before = native.workerChunks();
      await new Promise((r) => setTimeout(r, 15));
      chunksWhileWaiting.push(native.workerChunks() - before);
      out.fill(0, 0, T * model.config.hiddenSize);
    },
  };
  return { executor, chunksWhileWaiting };
}

describe("leaving the cores to expert-hosts on this machine", () => {
  // Every product split over two threads, so a worker takes chunks of the shared expert's products whenever it may.
  const dir = tinyModelOnTwoThreads();

  it("no worker takes a chunk between a dispatch and its answer when the hosts share the cores; the same logits", async () => {
    const model = DeepseekModel.load(dir(), { kernels: "fast" });
    model.setExpertExecutor(remoteExperts(model, false).executor);
    const want = await forward(model);
    const shared = remoteExperts(model, true);
    model.setExpertExecutor(shared.executor);
    const before = native.workerChunks();
    const got = await forward(model);
    expect(shared.chunksWhileWaiting.length).toBe(model.config.numHiddenLayers - model.config.firstKDenseReplace);
    expect(shared.chunksWhileWaiting.every((c) => c === 0)).toBe(true);
    // Outside the windows the workers still take part (attention, the dense layer, the head).
    const deadline = performance.now() + 10_000;
    while (native.workerChunks() === before && performance.now() < deadline) await forward(model);
    expect(native.workerChunks()).toBeGreaterThan(before);
    expect(Array.from(got)).toEqual(Array.from(want));
  });

  it("a batch below LEAVE_CORES_MIN_ROWS keeps the workers computing during the wait; the same logits", async () => {
    expect(SHORT.length).toBeLessThan(LEAVE_CORES_MIN_ROWS);
    expect(PROMPT.length).toBeGreaterThanOrEqual(LEAVE_CORES_MIN_ROWS);
    const model = DeepseekModel.load(dir(), { kernels: "fast" });
    model.setExpertExecutor(remoteExperts(model, false).executor);
    const want = await forward(model, SHORT);
    const shared = remoteExperts(model, true);
    model.setExpertExecutor(shared.executor);
    let got = await forward(model, SHORT);
    // A worker may miss a window on a busy machine: forward until one took part in one.
    const deadline = performance.now() + 10_000;
    while (shared.chunksWhileWaiting.every((c) => c === 0) && performance.now() < deadline) got = await forward(model, SHORT);
    expect(shared.chunksWhileWaiting.some((c) => c > 0)).toBe(true);
    expect(Array.from(got)).toEqual(Array.from(want));
  });

  it("hosts elsewhere: the workers keep computing during the wait (the control)", async () => {
    const model = DeepseekModel.load(dir(), { kernels: "fast" });
    const remote = remoteExperts(model, false);
    model.setExpertExecutor(remote.executor);
    // A worker may miss a window on a busy machine: forward until one took part in one.
    const deadline = performance.now() + 10_000;
    do await forward(model);
    while (remote.chunksWhileWaiting.every((c) => c === 0) && performance.now() < deadline);
    expect(remote.chunksWhileWaiting.some((c) => c > 0)).toBe(true);
  });

  describe("with an A/B switch on (@moela/core ab-switch.ts), the same logits", () => {
    it("decode-keep-cores: the workers may compute during the wait, as with hosts elsewhere", async () => {
      const model = DeepseekModel.load(dir(), { kernels: "fast" });
      model.setExpertExecutor(remoteExperts(model, true).executor);
      const want = await forward(model);
      abSwitchOnNow("decode-keep-cores");
      const kept = remoteExperts(model, true);
      model.setExpertExecutor(kept.executor);
      let got = await forward(model);
      const deadline = performance.now() + 10_000;
      while (kept.chunksWhileWaiting.every((c) => c === 0) && performance.now() < deadline) got = await forward(model);
      expect(kept.chunksWhileWaiting.some((c) => c > 0)).toBe(true);
      expect(Array.from(got)).toEqual(Array.from(want));
    });

    it("decode-leave-cores: a batch below LEAVE_CORES_MIN_ROWS leaves the cores too", async () => {
      const model = DeepseekModel.load(dir(), { kernels: "fast" });
      model.setExpertExecutor(remoteExperts(model, true).executor);
      const want = await forward(model, SHORT);
      abSwitchOnNow("decode-leave-cores");
      const left = remoteExperts(model, true);
      model.setExpertExecutor(left.executor);
      const got = await forward(model, SHORT);
      expect(left.chunksWhileWaiting.length).toBe(model.config.numHiddenLayers - model.config.firstKDenseReplace);
      expect(left.chunksWhileWaiting.every((c) => c === 0)).toBe(true);
      expect(Array.from(got)).toEqual(Array.from(want));
    });

    it("decode-shared-expert-after: the shared expert after the answer, not during the wait", async () => {
      const model = DeepseekModel.load(dir(), { kernels: "fast" });
      model.setExpertExecutor(remoteExperts(model, true).executor);
      // The order the model closes its MoE phases in: the shared expert's before the wait's, or after.
      const phases: string[] = [];
      model.phaseTimes = new PhaseTimes();
      const since = model.phaseTimes.since.bind(model.phaseTimes);
      model.phaseTimes.since = (phase, t0) => (phases.push(phase), since(phase, t0));
      const want = await forward(model);
      const moePhases = (): string[] => phases.filter((p) => p === "shared_expert" || p === "routed_wait").slice(0, 2);
      expect(moePhases()).toEqual(["shared_expert", "routed_wait"]);
      phases.length = 0;
      abSwitchOnNow("decode-shared-expert-after");
      const got = await forward(model);
      expect(moePhases()).toEqual(["routed_wait", "shared_expert"]);
      expect(Array.from(got)).toEqual(Array.from(want));
    });
  });
});
