import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { DeepseekModel, Engine, PagedLatentCache, ResourceExhaustedErrorName, type ForwardSeq } from "./model-helpers.js";
import { fastKernelsAvailable } from "@moela/engine";
import { makeCheckpoint, removeCheckpoints } from "../../helpers/checkpoints.js";

/** Max |a - b| over two equal-length arrays. */
function maxDiff(a: ArrayLike<number>, b: ArrayLike<number>): number {
  expect(a.length).toBe(b.length);
  let m = 0;
  for (let i = 0; i < a.length; i++) m = Math.max(m, Math.abs(a[i]! - b[i]!));
  return m;
}

const PROMPT = [0, 399, 332, 17, 256, 901, 44, 12, 730, 5, 66, 120, 7];

/** A cache of `numBlocks` blocks of 4 tokens for `model`, and a block table with room for PROMPT. */
function promptCache(model: DeepseekModel, numBlocks = 16): { cache: PagedLatentCache; table: number[] } {
  const cache = new PagedLatentCache({ numLayers: model.cacheLayers, latentDim: model.config.latentDim, blockSize: 4, numBlocks });
  const table: number[] = [];
  cache.ensureCapacity(table, PROMPT.length);
  return { cache, table };
}

/** Logits of every prompt position in one call, on a fresh cache. */
async function allLogits(model: DeepseekModel, attention: "absorbed" | "decompressed"): Promise<Float32Array> {
  const { cache, table } = promptCache(model);
  const r = await model.forward(cache, [{ blockTable: table, start: 0, tokens: PROMPT, logits: "all" }], { attention });
  return r.logits.slice();
}

// Every kernel backend (packages/engine/src/kernels) keeps these invariances bit for bit.
const BACKENDS = ["fast", "portable", "reference"] as const;
const PRESETS = [
  ["V3 block-FP8 with MTP", { preset: "tiny-v3" as const }],
  ["V2-Lite style", { preset: "tiny-v2-lite" as const }],
] as const;

describe.each(PRESETS.flatMap(([name, opts]) => BACKENDS.map((kernels) => [`${name}, ${kernels} kernels`, opts, kernels] as const)))(
  "forward pass: %s",
  (_name, opts, kernels) => {
    let model: DeepseekModel;
    beforeAll(() => {
      model = DeepseekModel.load(makeCheckpoint(opts), { kernels });
      expect(model.kernels.name).toBe(kernels === "fast" && !fastKernelsAvailable() ? "portable" : kernels);
    });
    afterAll(removeCheckpoints);

    it("absorbed attention equals decompressed attention", async () => {
      const a = await allLogits(model, "decompressed");
      const b = await allLogits(model, "absorbed");
      const d = maxDiff(a, b);
      expect(d).toBeLessThan(1e-5);
      // Not trivially equal: the two paths round differently.
      expect(a.some((v, i) => v !== b[i])).toBe(true);
    });

    it("incremental decode on the latent cache equals full recompute", async () => {
      const full = await allLogits(model, "decompressed");
      const V = model.config.vocabSize;
      const { cache, table } = promptCache(model);
      const split = 5;
      const head = await model.forward(cache, [{ blockTable: table, start: 0, tokens: PROMPT.slice(0, split), logits: "last" }], { attention: "decompressed" });
      expect(maxDiff(head.logits, full.subarray((split - 1) * V, split * V))).toBe(0);
      for (let p = split; p < PROMPT.length; p++) {
        const r = await model.forward(cache, [{ blockTable: table, start: p, tokens: [PROMPT[p]!], logits: "last" }], { attention: "absorbed" });
        expect(maxDiff(r.logits, full.subarray(p * V, (p + 1) * V))).toBeLessThan(1e-5);
      }
    });

    it("chunked prefill equals one-shot prefill, bit for bit", async () => {
      const oneShot = await allLogits(model, "decompressed");
      const V = model.config.vocabSize;
      const { cache, table } = promptCache(model);
      for (let s = 0; s < PROMPT.length; s += 3) {
        const tokens = PROMPT.slice(s, s + 3);
        const r = await model.forward(cache, [{ blockTable: table, start: s, tokens, logits: "all" }], { attention: "decompressed" });
        expect(Array.from(r.logits)).toEqual(Array.from(oneShot.subarray(s * V, (s + tokens.length) * V)));
      }
    });

    it("a batch of sequences gives each the logits it gets alone", async () => {
      const alone = await allLogits(model, "absorbed");
      const V = model.config.vocabSize;
      const { cache, table: t1 } = promptCache(model, 32);
      const t2: number[] = [];
      cache.ensureCapacity(t2, 4);
      const seqs: ForwardSeq[] = [
        { blockTable: t2, start: 0, tokens: [3, 4, 5, 6], logits: "all" },
        { blockTable: t1, start: 0, tokens: PROMPT, logits: "all" },
      ];
      const r = await model.forward(cache, seqs, { attention: "absorbed" });
      const rows = r.logits.subarray(r.logitRow[1]! * V, (r.logitRow[1]! + PROMPT.length) * V);
      expect(Array.from(rows)).toEqual(Array.from(alone));
    });

    it("decoding a batch at different positions gives each sequence its logits alone, bit for bit", async () => {
      // One cache decodes the three sequences together, the other one at a time, each at its own position over
      // its own blocks.
      const prompts = [PROMPT.slice(0, 3), PROMPT, [7, 8, 9, 10, 11, 12]];
      const caches = [promptCache(model, 64).cache, promptCache(model, 64).cache];
      const tables = caches.map(() => prompts.map(() => [] as number[]));
      caches.forEach((cache, c) => prompts.forEach((p, i) => cache.ensureCapacity(tables[c]![i]!, p.length + 4)));
      for (const [c, cache] of caches.entries())
        for (const [i, p] of prompts.entries())
          await model.forward(cache, [{ blockTable: tables[c]![i]!, start: 0, tokens: p, logits: "last" }], { attention: "absorbed" });
      for (let step = 0; step < 3; step++) {
        const seq = (c: number, i: number): ForwardSeq => ({
          blockTable: tables[c]![i]!,
          start: prompts[i]!.length + step,
          tokens: [100 + 7 * i + step],
          logits: "last",
        });
        const together = await model.forward(
          caches[0]!,
          prompts.map((_, i) => seq(0, i)),
          { attention: "absorbed" },
        );
        const V = model.config.vocabSize;
        const batched = Array.from(together.logits.subarray(0, prompts.length * V));
        const alone: number[] = [];
        for (let i = 0; i < prompts.length; i++) alone.push(...(await model.forward(caches[1]!, [seq(1, i)], { attention: "absorbed" })).logits.subarray(0, V));
        expect(batched).toEqual(alone);
      }
    });

    it.skipIf(kernels === "reference")("stays within 2e-4 of the reference kernels' logits", async () => {
      const ref = DeepseekModel.load(makeCheckpoint(opts), { kernels: "reference" });
      for (const attention of ["absorbed", "decompressed"] as const) {
        const d = maxDiff(await allLogits(model, attention), await allLogits(ref, attention));
        expect(d).toBeLessThan(2e-4);
      }
    });
  },
);

describe.each(BACKENDS)("generation on the %s kernels", (kernels) => {
  let model: DeepseekModel;
  beforeAll(() => {
    model = DeepseekModel.load(makeCheckpoint({ preset: "tiny-v3" }), { kernels });
  });
  afterAll(removeCheckpoints);

  it("speculative greedy equals plain greedy, and chunked prefill changes nothing", async () => {
    const run = async (speculative: boolean, chunk: number) => {
      const engine = new Engine(model, { speculative, blockSize: 4, numBlocks: 64, prefillChunk: chunk });
      const seq = engine.newSequence("s", PROMPT, { temperature: 0, topP: 1, topK: -1, maxTokens: 16, ignoreEos: true, topLogprobs: 2 });
      const out = [];
      for await (const t of engine.generate(seq)) out.push(t);
      return out;
    };
    const plain = await run(false, 256);
    for (const [spec, chunk] of [
      [true, 256],
      [true, 3],
      [false, 5],
    ] as const) {
      const other = await run(spec, chunk);
      expect(other.map((t) => [t.id, t.logprob])).toEqual(plain.map((t) => [t.id, t.logprob]));
    }
  });
});

describe("generation with MTP speculation", () => {
  let model: DeepseekModel;
  beforeAll(() => {
    model = DeepseekModel.load(makeCheckpoint({ preset: "tiny-v3" }));
  });
  afterAll(removeCheckpoints);

  async function greedy(speculative: boolean, chunk = 256) {
    const engine = new Engine(model, { speculative, blockSize: 4, numBlocks: 64, prefillChunk: chunk });
    const seq = engine.newSequence("s", PROMPT, { temperature: 0, topP: 1, topK: -1, maxTokens: 24, ignoreEos: true, topLogprobs: 3 });
    const out = [];
    for await (const t of engine.generate(seq)) out.push(t);
    return { out, seq, engine };
  }

  it("speculative greedy output equals plain greedy output, logprobs included", async () => {
    const plain = await greedy(false);
    const spec = await greedy(true);
    expect(spec.out.map((t) => t.id)).toEqual(plain.out.map((t) => t.id));
    expect(spec.out.map((t) => t.logprob)).toEqual(plain.out.map((t) => t.logprob));
    expect(spec.out.map((t) => t.top)).toEqual(plain.out.map((t) => t.top));
    // A greedy token is the best one, and its logprob and its own top_logprobs entry share one normalizer.
    for (const t of plain.out) expect(t.top![0]).toEqual([t.id, t.logprob]);
    expect(spec.out).toHaveLength(24);
    // Drafts were made and counted: every step drafts once, but one left a single token by max_tokens; accepted
    // drafts add a token each.
    expect(spec.seq.drafted).toBeGreaterThan(0);
    expect(1 + spec.seq.drafted + spec.seq.accepted).toBeGreaterThanOrEqual(23);
    expect(plain.seq.drafted).toBe(0);
  });

  it("chunked prefill does not change generation", async () => {
    const a = await greedy(true, 256);
    const b = await greedy(true, 4);
    expect(b.out.map((t) => t.id)).toEqual(a.out.map((t) => t.id));
  });

  it("frees every KV block when a sequence ends", async () => {
    const { engine } = await greedy(true);
    expect(engine.cache.usedBlocks).toBe(0);
  });

  it("seeded sampling is reproducible with speculation on", async () => {
    const run = async () => {
      const engine = new Engine(model, { blockSize: 4, numBlocks: 64 });
      const seq = engine.newSequence("s", PROMPT, { temperature: 0.8, topP: 0.95, topK: 50, seed: 7, maxTokens: 16, ignoreEos: true });
      const ids: number[] = [];
      for await (const t of engine.generate(seq)) ids.push(t.id);
      return ids;
    };
    expect(await run()).toEqual(await run());
  });

  it("refuses a sequence the cache cannot hold and takes nothing", async () => {
    const engine = new Engine(model, { blockSize: 4, numBlocks: 2 });
    const seq = engine.newSequence("s", PROMPT, { temperature: 0, topP: 1, topK: -1, maxTokens: 4 });
    await expect(engine.prefill([seq])).rejects.toMatchObject({ name: ResourceExhaustedErrorName });
    expect(engine.cache.usedBlocks).toBe(0);
  });

  it("rejects absurd requests with clear errors", () => {
    const engine = new Engine(model, { blockSize: 4, numBlocks: 8 });
    const base = { temperature: 0, topP: 1, topK: -1, maxTokens: 4 };
    expect(() => engine.newSequence("s", [], base)).toThrow(/empty/);
    expect(() => engine.newSequence("s", [model.config.vocabSize], base)).toThrow(/outside the vocabulary/);
    expect(() => engine.newSequence("s", [1], { ...base, maxTokens: 0 })).toThrow(/max_tokens/);
    expect(() => engine.newSequence("s", [1], { ...base, maxTokens: 10_000_000 })).toThrow(/exceeds/);
  });
});
