// PhaseTimes: a forward pass reports where its time went, phase by phase (the cluster's time breakdown,
// exported by prefill and decode as moela_engine_forward_phase_seconds_total).
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { DeepseekModel, FORWARD_PHASES, PagedLatentCache, PhaseTimes, type ExpertExecutor } from "@moela/engine";
import { FORWARD_PHASE_VALUES } from "@moela/metrics";
import { makeCheckpoint, removeCheckpoints } from "../../helpers/checkpoints.js";

const PROMPT = Array.from({ length: 24 }, (_, i) => (5 + 31 * i) % 1000);

async function forward(model: DeepseekModel): Promise<void> {
  const cache = new PagedLatentCache({ numLayers: model.cacheLayers, latentDim: model.config.latentDim, blockSize: 8, numBlocks: 8 });
  const table: number[] = [];
  cache.ensureCapacity(table, PROMPT.length);
  await model.forward(cache, [{ blockTable: table, start: 0, tokens: PROMPT, logits: "last" }], { attention: "absorbed" });
}

describe("PhaseTimes", () => {
  let dir: string;
  beforeAll(() => {
    dir = makeCheckpoint("tiny-v3");
  });
  afterAll(removeCheckpoints);

  it("the metric's phase values are the engine's phases", () => {
    expect([...FORWARD_PHASE_VALUES]).toEqual([...FORWARD_PHASES]);
  });

  it("in one process: every phase the model runs gets time, routed and shared experts as local compute, and drain starts from zero", async () => {
    const model = DeepseekModel.load(dir, { kernels: "portable" });
    const times = new PhaseTimes();
    model.phaseTimes = times;
    await forward(model);
    const s = times.drain();
    // tiny-v3: a dense first layer, then MoE layers with a shared expert, which one process computes in the
    // routed experts' group of products.
    for (const p of ["attention", "gate", "routed_experts", "dense_mlp", "lm_head"] as const) expect(s[p]).toBeGreaterThan(0);
    expect(s.shared_expert).toBe(0);
    expect(s.routed_wait).toBe(0);
    expect(Object.values(times.drain()).every((v) => v === 0)).toBe(true);
  });

  it("with experts on other processes: the shared expert runs first and the rest is routed_wait", async () => {
    const model = DeepseekModel.load(dir, { kernels: "portable" });
    const local = model.moeLayers();
    // An executor that answers after a delay, as a remote host would (the answer itself is irrelevant here).
    const remote: ExpertExecutor = {
      waitsOnOtherProcesses: true,
      async runRouted(_layer, _x, T, _ids, _w, out) {
        await new Promise((r) => setTimeout(r, 20));
        out.fill(0, 0, T * model.config.hiddenSize);
      },
    };
    expect(local.size).toBeGreaterThan(0);
    model.setExpertExecutor(remote);
    const times = new PhaseTimes();
    model.phaseTimes = times;
    await forward(model);
    const s = times.drain();
    expect(s.routed_experts).toBe(0);
    // No MoE layer ends before its 20 ms answer: shared expert and waiting cover at least that (the main
    // model's MoE layers; the MTP block's is not in this forward), whatever the machine's load.
    const moeLayers = model.config.numHiddenLayers - model.config.firstKDenseReplace;
    expect(s.shared_expert + s.routed_wait).toBeGreaterThanOrEqual(0.019 * moeLayers);
    expect(s.routed_wait).toBeGreaterThan(0);
    expect(s.shared_expert).toBeGreaterThan(0);
  });
});
