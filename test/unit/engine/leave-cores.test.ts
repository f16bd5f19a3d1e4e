// A model whose expert-hosts compute on this machine's cores leaves them its kernel threads while they do:
// products run on the calling thread alone (KernelBackend.callerOnly) from the dispatch to the answer, and the
// threads join again after. The bits do not change.
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { DeepseekModel, nativeKernelsAddon, PagedLatentCache, type ExpertExecutor } from "@moela/engine";
import { makeCheckpoint, removeCheckpoints } from "../../helpers/checkpoints.js";

const native = nativeKernelsAddon!;
const PROMPT = Array.from({ length: 24 }, (_, i) => (5 + 31 * i) % 1000);

async function forward(model: DeepseekModel): Promise<Float32Array> {
  const cache = new PagedLatentCache({ numLayers: model.cacheLayers, latentDim: model.config.latentDim, blockSize: 8, numBlocks: 8 });
  const table: number[] = [];
  cache.ensureCapacity(table, PROMPT.length);
  const r = await model.forward(cache, [{ blockTable: table, start: 0, tokens: PROMPT, logits: "last" }], { attention: "absorbed" });
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
  let dir: string;
  beforeAll(() => {
    dir = makeCheckpoint("tiny-v3");
    // Two threads, every product split, so a worker takes chunks of the shared expert's products whenever it may.
    native.setThreads(2, 0);
  });
  afterAll(() => {
    native.setThreads(1, 1 << 16);
    removeCheckpoints();
  });

  it("no worker takes a chunk between a dispatch and its answer when the hosts share the cores; the same logits", async () => {
    const model = DeepseekModel.load(dir, { kernels: "fast" });
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

  it("hosts elsewhere: the workers keep computing during the wait (the control)", async () => {
    const model = DeepseekModel.load(dir, { kernels: "fast" });
    const remote = remoteExperts(model, false);
    model.setExpertExecutor(remote.executor);
    // A worker may miss a window on a busy machine: forward until one took part in one.
    const deadline = performance.now() + 10_000;
    do await forward(model);
    while (remote.chunksWhileWaiting.every((c) => c === 0) && performance.now() < deadline);
    expect(remote.chunksWhileWaiting.some((c) => c > 0)).toBe(true);
  });
});
