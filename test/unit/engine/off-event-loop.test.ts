// ModelOptions.computeOffEventLoop: large products run on a kernel thread and are awaited, so a service's event
// loop turns while a step computes, and the bits are the same as computing them on the calling thread.
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { DeepseekModel, Engine, PagedLatentCache, fastKernelsAvailable } from "@moela/engine";
import { makeCheckpoint, removeCheckpoints } from "../../helpers/checkpoints.js";
import { bits } from "../../helpers/bits.js";

const PROMPT = Array.from({ length: 40 }, (_, i) => (11 + 37 * i) % 1000);

async function logits(model: DeepseekModel, attention: "absorbed" | "decompressed"): Promise<Float32Array> {
  const cache = new PagedLatentCache({ numLayers: model.cacheLayers, latentDim: model.config.latentDim, blockSize: 4, numBlocks: 16 });
  const table: number[] = [];
  cache.ensureCapacity(table, PROMPT.length);
  const r = await model.forward(cache, [{ blockTable: table, start: 0, tokens: PROMPT, logits: "all" }], { attention });
  return r.logits.slice();
}

describe.skipIf(!fastKernelsAvailable())("computing off the event loop (fast kernels)", () => {
  let dir: string;
  let onLoop: DeepseekModel;
  let offLoop: DeepseekModel;
  beforeAll(() => {
    dir = makeCheckpoint("tiny-v3");
    onLoop = DeepseekModel.load(dir, { kernels: "fast" });
    // Every product off the loop (the tiny model's are all below the services' threshold).
    offLoop = DeepseekModel.load(dir, { kernels: "fast", computeOffEventLoop: true, offEventLoopMinWork: 0 });
  });
  afterAll(removeCheckpoints);

  it.each(["absorbed", "decompressed"] as const)("gives the same bits (%s attention)", async (attention) => {
    expect(bits(await logits(offLoop, attention))).toEqual(bits(await logits(onLoop, attention)));
  });

  it("generates the same greedy tokens, MTP speculation included", async () => {
    const run = async (model: DeepseekModel) => {
      const engine = new Engine(model, { speculation: "on", blockSize: 4, numBlocks: 64 });
      const seq = engine.newSequence("s", PROMPT.slice(0, 9), { temperature: 0, topP: 1, topK: -1, maxTokens: 12, ignoreEos: true });
      const ids: number[] = [];
      for await (const t of engine.generate(seq)) ids.push(t.id);
      return ids;
    };
    expect(await run(offLoop)).toEqual(await run(onLoop));
  });

  it("lets the event loop turn while a forward computes, and only then", async () => {
    const turnsDuring = async (model: DeepseekModel): Promise<number> => {
      let turns = 0;
      let done = false;
      const tick = (): void => {
        if (done) return;
        turns++;
        setImmediate(tick);
      };
      setImmediate(tick);
      const pending = logits(model, "decompressed");
      await pending;
      done = true;
      return turns;
    };
    // On the loop every product runs synchronously between microtasks: no macrotask gets in.
    expect(await turnsDuring(onLoop)).toBe(0);
    expect(await turnsDuring(offLoop)).toBeGreaterThan(0);
  });
});
