import { afterAll, beforeAll, describe, expect, it } from "vitest";
import {
  DeepseekModel,
  Engine,
  PagedLatentCache,
  PrefixCache,
  prefixBlockHashes,
  type EmittedToken,
  type GenerationParams,
  type KvSink,
  type Sequence,
} from "@moela/engine";
import { makeCheckpoint, removeCheckpoints } from "../../helpers/checkpoints.js";

/** Deterministic token ids in [2, 1000) (0 is BOS, 1 EOS in the tiny vocabulary). */
function tokens(seed: number, n: number): number[] {
  let x = seed * 2654435761 + 1;
  return Array.from({ length: n }, () => {
    x = (Math.imul(x, 1103515245) + 12345) >>> 0;
    return 2 + (x % 998);
  });
}

describe("prefixBlockHashes", () => {
  const t = tokens(1, 20);

  it.each([
    // [prompt length, block size, keys]: blocks with a token after them
    [1, 4, 0],
    [4, 4, 0],
    [5, 4, 1],
    [8, 4, 1],
    [9, 4, 2],
    [20, 4, 4],
    [20, 16, 1],
    [20, 1, 19],
  ])("%i tokens in blocks of %i give %i keys", (len, bs, n) => {
    expect(prefixBlockHashes(t.slice(0, len), bs)).toHaveLength(n);
  });

  it("chains: a prompt's keys are the prefix of a longer prompt's keys", () => {
    const long = prefixBlockHashes(t, 4);
    for (let len = 1; len <= t.length; len++)
      expect(long.slice(0, prefixBlockHashes(t.slice(0, len), 4).length)).toEqual(prefixBlockHashes(t.slice(0, len), 4));
    expect(new Set(long).size).toBe(long.length);
    expect(long[0]).toMatch(/^[0-9a-f]{32}$/);
  });

  it("key i covers exactly tokens [0, (i+1)*bs]: the block and the token after it", () => {
    const base = prefixBlockHashes(t, 4);
    for (let j = 0; j < t.length; j++) {
      const changed = [...t];
      changed[j] = changed[j]! + 1;
      const keys = prefixBlockHashes(changed, 4);
      keys.forEach((k, i) => {
        // Token j is inside key i's range iff j <= (i + 1) * 4.
        if (j <= (i + 1) * 4) expect(k, `token ${j}, key ${i}`).not.toBe(base[i]);
        else expect(k, `token ${j}, key ${i}`).toBe(base[i]);
      });
    }
  });

  it("depends on the block size, and stays what routers and other builds compute (golden value)", () => {
    expect(prefixBlockHashes([0, 1, 2, 3, 4, 5, 6, 7, 8], 4)).not.toEqual(prefixBlockHashes([0, 1, 2, 3, 4, 5, 6, 7, 8], 2).slice(0, 2));
    expect(prefixBlockHashes([0, 1, 2, 3, 4], 4)).toEqual(["6b2298672c5de3103126c8dcca19d270"]);
  });

  it("refuses a bad block size or token", () => {
    expect(() => prefixBlockHashes([1, 2, 3], 0)).toThrow(/block size/);
    expect(() => prefixBlockHashes([1, -2, 3], 1)).toThrow(/not a uint32/);
  });
});

describe("PrefixCache bookkeeping", () => {
  const BS = 4;
  function setup(numBlocks: number, capacityBlocks?: number) {
    const cache = new PagedLatentCache({ numLayers: 1, latentDim: 2, blockSize: BS, numBlocks });
    const pc = new PrefixCache(cache, capacityBlocks === undefined ? {} : { capacityBlocks });
    cache.reclaimer = (need) => void pc.evict(need);
    /** A sequence that computed `prompt` and sampled `next`: its blocks, with the full ones inserted. */
    const computed = (prompt: number[], next: number): number[] => {
      const table = pc.acquire(prompt);
      const from = table.length;
      cache.ensureCapacity(table, prompt.length + 1);
      pc.insert([...prompt, next], table, from);
      return table;
    };
    return { cache, pc, computed };
  }

  it("caches full blocks only (the partial last block stays the sequence's own)", () => {
    const { cache, pc, computed } = setup(8);
    const prompt = tokens(2, 10); // blocks [0,4) [4,8) full, [8,10) partial
    const table = computed(prompt, 5);
    expect(table).toHaveLength(3);
    expect(pc.size).toBe(2);
    expect([pc.isCached(table[0]!), pc.isCached(table[1]!), pc.isCached(table[2]!)]).toEqual([true, true, false]);
    pc.release(table);
    // The partial block went back to the allocator; the full ones stay, unreferenced.
    expect(cache.usedBlocks).toBe(2);
    expect(pc.evictableBlocks).toBe(2);
  });

  it("counts references: a block is evictable only when the last sequence using it lets go", () => {
    const { pc, computed } = setup(16);
    const sys = tokens(3, 9);
    const a = computed([...sys, 7, 8, 9], 4); // 12 tokens + the sampled 4: 3 whole blocks cached
    expect(pc.size).toBe(3);
    const b = pc.acquire([...sys, 11, 12]); // 11 tokens: reusable blocks at most floor(10/4) = 2; block 1 key covers token 8 = sys[8]
    expect(b).toEqual(a.slice(0, 2));
    expect(a.slice(0, 2).map((x) => pc.refCount(x))).toEqual([2, 2]);
    pc.release(a);
    expect(a.slice(0, 2).map((x) => pc.refCount(x))).toEqual([1, 1]);
    expect(pc.evictableBlocks).toBe(1); // a's third block
    expect(pc.evict(10)).toBe(1);
    expect(pc.size).toBe(2);
    pc.release(b);
    expect(pc.evictableBlocks).toBe(2);
    expect(() => pc.release(b)).toThrow(/released more often/);
    const s = pc.getStats();
    expect([s.queries, s.hitTokens, s.inserted, s.evicted]).toEqual([2, 8, 3, 1]);
  });

  it("evicts least recently used first, a chain's tail before its head", () => {
    const { pc, computed } = setup(16);
    const p1 = tokens(4, 13);
    const p2 = tokens(5, 13);
    pc.release(computed(p1, 1)); // 3 blocks
    pc.release(computed(p2, 1)); // 3 blocks, more recent
    expect(pc.evict(2)).toBe(2);
    // p1 lost its last two blocks, its head survives; p2 is whole.
    const h1 = pc.acquire(p1);
    const h2 = pc.acquire(p2);
    expect([h1.length, h2.length]).toEqual([1, 3]);
    pc.release(h2);
    pc.release(h1);
    // p1's head was let go last: p2's tail goes first.
    expect(pc.evict(1)).toBe(1);
    expect(pc.acquire(p2)).toHaveLength(2);
  });

  it("never evicts a referenced block: the allocator refuses instead", () => {
    const { cache, pc, computed } = setup(4);
    const held = computed(tokens(6, 12), 3); // 4 blocks (3 full + 1 for the next row), all held
    expect(cache.freeBlocks).toBe(0);
    expect(pc.evict(4)).toBe(0);
    expect(cache.allocate(1)).toBeNull();
    expect(() => cache.ensureCapacity([], 4)).toThrow(/KV cache full/);
    pc.release(held);
    // Released: the partial block is free, the 3 cached ones evictable on demand.
    expect(cache.freeBlocks).toBe(1);
    expect(cache.allocate(3)).toHaveLength(3);
    expect(pc.size).toBe(1);
  });

  it("holds at most capacityBlocks, evicting unreferenced blocks to take new ones", () => {
    const { pc, computed } = setup(16, 2);
    const a = computed(tokens(7, 13), 1); // 3 full blocks but room for 2
    expect(pc.size).toBe(2);
    pc.release(a);
    const b = computed(tokens(8, 9), 1); // 2 full blocks: both of a's are evicted for them
    expect(pc.size).toBe(2);
    expect(pc.acquire(tokens(7, 13))).toHaveLength(0);
    expect(pc.getStats().evicted).toBe(2);
    pc.release(b);
  });
});

/** Everything observable about one generation: tokens, logprobs, the KV rows a transfer would carry. */
interface Run {
  readonly out: EmittedToken[];
  readonly cached: number;
  /** Per layer: [L, latentDim] rows as the KvSink saw them. */
  readonly rows: Float32Array[];
  readonly promptLogits: Float32Array | null;
  readonly promptMtpLogits: Float32Array | null;
  readonly drafted: number;
}

const GREEDY: GenerationParams = { temperature: 0, topP: 1, topK: -1, maxTokens: 10, ignoreEos: true, topLogprobs: 3 };
const SEEDED: GenerationParams = { temperature: 0.9, topP: 0.95, topK: 50, seed: 11, maxTokens: 10, ignoreEos: true, topLogprobs: 2 };

/** A sink that records each sequence's rows and checks they arrive in order, every position once. */
function recordingSink(engine: Engine, seqs: readonly Sequence[], keepLogits = false): { sink: KvSink; rows: Float32Array[][] } {
  const D = engine.cache.latentDim;
  // The MTP block's rows are computed (and sent) when the engine drafts or keeps the MTP logits.
  const withMtp = engine.model.hasMtp && (engine.speculative || keepLogits);
  const layers = withMtp ? engine.model.cacheLayers : engine.model.config.numHiddenLayers;
  const rows = seqs.map((s) => Array.from({ length: layers }, () => new Float32Array(s.prompt.length * D).fill(Number.NaN)));
  const next = seqs.map(() => new Array<number>(layers).fill(0));
  const sink: KvSink = {
    onLayer(layer, i, start, n, data) {
      expect(start, `sequence ${i} layer ${layer}`).toBe(next[i]![layer]);
      next[i]![layer] = start + n;
      rows[i]![layer]!.set(data.subarray(0, n * D), start * D);
    },
  };
  return { sink, rows };
}

async function generateAll(engine: Engine, seqs: Sequence[], keepLogits = false): Promise<Run[]> {
  const rec = recordingSink(engine, seqs, keepLogits);
  await engine.prefill(seqs, { kvSink: rec.sink, keepLogits });
  for (;;) {
    const live = seqs.filter((s) => !s.finished);
    if (live.length === 0) break;
    await engine.step(live);
  }
  for (const s of seqs) engine.release(s);
  return seqs.map((s, i) => ({
    out: [...s.output],
    cached: s.cachedTokens,
    rows: rec.rows[i]!,
    promptLogits: s.promptLogits,
    promptMtpLogits: s.promptMtpLogits,
    drafted: s.drafted,
  }));
}

async function generateOne(engine: Engine, prompt: number[], params: GenerationParams, keepLogits = false): Promise<Run> {
  return (await generateAll(engine, [engine.newSequence(`s-${prompt.length}`, prompt, params)], keepLogits))[0]!;
}

function expectSameRun(got: Run, want: Run): void {
  expect(got.out.map((t) => t.id)).toEqual(want.out.map((t) => t.id));
  expect(got.out.map((t) => t.logprob)).toEqual(want.out.map((t) => t.logprob));
  expect(got.out.map((t) => t.top)).toEqual(want.out.map((t) => t.top));
  expect(got.drafted).toBe(want.drafted);
  expect(got.rows).toHaveLength(want.rows.length);
  got.rows.forEach((r, layer) => {
    // Every position arrived (no NaN left) and equals the uncached run's row bit for bit.
    expect(
      r.some((v) => Number.isNaN(v)),
      `layer ${layer} has missing rows`,
    ).toBe(false);
    expect(Buffer.from(r.buffer).equals(Buffer.from(want.rows[layer]!.buffer)), `layer ${layer} rows differ`).toBe(true);
  });
  if (want.promptLogits) expect(Array.from(got.promptLogits!)).toEqual(Array.from(want.promptLogits));
  if (want.promptMtpLogits) expect(Array.from(got.promptMtpLogits!)).toEqual(Array.from(want.promptMtpLogits));
}

describe("Engine with a prefix cache", () => {
  let model: DeepseekModel;
  beforeAll(() => {
    model = DeepseekModel.load(makeCheckpoint({ preset: "tiny-v3" }));
  });
  afterAll(removeCheckpoints);

  const SYSTEM = tokens(10, 23);
  const Q1 = tokens(11, 9);
  const Q2 = tokens(12, 7);
  // Drafting at every step: the draft counts compared below then depend on the drafts alone (under the
  // default "auto" a greedy sequence's pauses follow the engine's measured step costs).
  const opts = { blockSize: 4, numBlocks: 64, prefillChunk: 5, speculation: "on" as const };
  /** A fresh engine without a cache: the reference. */
  const reference = (prompt: number[], params: GenerationParams, keepLogits = false, speculative = true) =>
    generateOne(new Engine(model, { ...opts, speculation: speculative ? "on" : "off" }), prompt, params, keepLogits);

  it.each([
    ["greedy", GREEDY],
    ["seeded sampling", SEEDED],
  ])("a hit gives bit-identical tokens, logprobs, drafts and transferred rows (%s, MTP speculation)", async (_name, params) => {
    const engine = new Engine(model, { ...opts, prefixCache: true });
    expect(engine.speculative).toBe(true);
    const first = await generateOne(engine, [...SYSTEM, ...Q1], params);
    expect(first.cached).toBe(0);
    const second = await generateOne(engine, [...SYSTEM, ...Q2], params);
    // SYSTEM is 23 tokens: 5 whole blocks (and the token after the 5th) are shared.
    expect(second.cached).toBe(20);
    expect(second.drafted).toBeGreaterThan(0);
    expectSameRun(second, await reference([...SYSTEM, ...Q2], params));
    expectSameRun(first, await reference([...SYSTEM, ...Q1], params));
    const stats = engine.prefixCache!.getStats();
    expect([stats.queries, stats.hitTokens]).toEqual([2, 20]);
    // Nothing but cached blocks is left once both are released.
    expect(engine.cache.usedBlocks).toBe(engine.prefixCache!.size);
    expect(engine.prefixCache!.evictableBlocks).toBe(engine.prefixCache!.size);
  });

  it("keys the MTP rows on the next token: a prompt ending on a block boundary is reused only by a continuation with the sampled token", async () => {
    const engine = new Engine(model, { ...opts, prefixCache: true });
    const a = [...SYSTEM, 5]; // 24 tokens = 6 whole blocks; block 5's MTP row at 23 was fed the first sampled token
    const runA = await generateOne(engine, a, GREEDY, true);
    const t = runA.out[0]!.id;
    const other = t === 2 ? 3 : 2;
    const same = await generateOne(engine, [...a, t, ...Q1], GREEDY, true);
    const diff = await generateOne(engine, [...a, other, ...Q1], GREEDY, true);
    expect([same.cached, diff.cached]).toEqual([24, 20]);
    expectSameRun(same, await reference([...a, t, ...Q1], GREEDY, true));
    expectSameRun(diff, await reference([...a, other, ...Q1], GREEDY, true));
    // The whole prompt again: its last block is computed (its last position samples the first token).
    const again = await generateOne(engine, a, GREEDY, true);
    expect(again.cached).toBe(20);
    expectSameRun(again, runA);
  });

  it("batches hits and misses of different lengths in one prefill, each as if alone", async () => {
    const engine = new Engine(model, { ...opts, prefillChunk: 3, prefixCache: true });
    await generateOne(engine, [...SYSTEM, ...Q1], GREEDY);
    const prompts = [[...SYSTEM, ...Q2], tokens(13, 6), [...SYSTEM.slice(0, 17), ...Q1], tokens(14, 31)];
    const runs = await generateAll(
      engine,
      prompts.map((p, i) => engine.newSequence(`b${i}`, p, i % 2 === 0 ? GREEDY : SEEDED)),
    );
    expect(runs.map((r) => r.cached)).toEqual([20, 0, 16, 0]);
    for (const [i, p] of prompts.entries()) expectSameRun(runs[i]!, await reference(p, i % 2 === 0 ? GREEDY : SEEDED));
  });

  it("a cache salt separates tenants: a prompt hits only the prefixes cached under the same salt, and stays exact", async () => {
    const engine = new Engine(model, { ...opts, prefixCache: true });
    const a = { ...GREEDY, cacheSalt: "tenant-a" };
    const b = { ...GREEDY, cacheSalt: "tenant-b" };
    expect((await generateOne(engine, [...SYSTEM, ...Q1], a)).cached).toBe(0);
    // Another tenant's identical prefix: no hit; nor for a request without a salt.
    const other = await generateOne(engine, [...SYSTEM, ...Q2], b);
    expect(other.cached).toBe(0);
    expect((await generateOne(engine, [...SYSTEM, ...Q2], GREEDY)).cached).toBe(0);
    // The same tenant again: a hit, bit-identical to an uncached run.
    const same = await generateOne(engine, [...SYSTEM, ...Q2], a);
    expect(same.cached).toBe(20);
    expectSameRun(same, await reference([...SYSTEM, ...Q2], GREEDY));
    expectSameRun(other, await reference([...SYSTEM, ...Q2], GREEDY));
  });

  it("acquirePrefix before prefill pins the blocks and reports the count; release gives them back", async () => {
    const engine = new Engine(model, { ...opts, prefixCache: true });
    await generateOne(engine, [...SYSTEM, ...Q1], GREEDY);
    const seq = engine.newSequence("early", [...SYSTEM, ...Q2], GREEDY);
    expect(engine.acquirePrefix(seq)).toBe(20);
    expect(engine.acquirePrefix(seq)).toBe(20); // once per sequence
    const held = [...seq.blockTable];
    expect(held.every((b) => engine.prefixCache!.refCount(b) === 1)).toBe(true);
    // Pinned: eviction cannot take them.
    engine.prefixCache!.clear();
    expect(held.every((b) => engine.prefixCache!.isCached(b))).toBe(true);
    const [run] = await generateAll(engine, [seq]);
    expectSameRun(run!, await reference([...SYSTEM, ...Q2], GREEDY));
    expect(held.every((b) => engine.prefixCache!.refCount(b) === 0)).toBe(true);
  });

  it("a full cache evicts unreferenced prefixes to make room, and generation stays exact", async () => {
    // 12 blocks: one 31-token prompt + 10 tokens needs 11.
    const engine = new Engine(model, { ...opts, numBlocks: 12, prefixCache: true });
    const prompts = [tokens(20, 30), tokens(21, 30), tokens(22, 30)];
    for (const p of prompts) {
      const r = await generateOne(engine, p, GREEDY);
      expectSameRun(r, await reference(p, GREEDY));
    }
    const stats = engine.prefixCache!.getStats();
    expect(stats.evicted).toBeGreaterThan(0);
    expect(engine.prefixCache!.size).toBeLessThanOrEqual(12);
    // The most recent prompt is (partly) still there and still exact.
    const again = await generateOne(engine, prompts[2]!, GREEDY);
    expect(again.cached).toBeGreaterThan(0);
    expectSameRun(again, await reference(prompts[2]!, GREEDY));
  });

  it("never evicts blocks a running sequence uses: a request that does not fit is refused and the runner stays exact", async () => {
    const engine = new Engine(model, { ...opts, numBlocks: 16, prefixCache: true });
    await generateOne(engine, [...SYSTEM, ...Q1], GREEDY);
    // A running sequence holds the 5 shared blocks plus its own.
    const runner = engine.newSequence("runner", [...SYSTEM, ...Q2], GREEDY);
    const rec = recordingSink(engine, [runner]);
    await engine.prefill([runner], { kvSink: rec.sink });
    expect(runner.cachedTokens).toBe(20);
    const shared = runner.blockTable.slice(0, 5);
    const before = shared.map((b) => engine.cache.slab(0).slice(b * 4 * engine.cache.latentDim, (b + 1) * 4 * engine.cache.latentDim));
    // Wants more blocks than free + evictable: refused, nothing of the runner's evicted.
    const big = engine.newSequence("big", tokens(30, 40), GREEDY);
    await expect(engine.prefill([big])).rejects.toMatchObject({ name: "ResourceExhaustedError" });
    engine.release(big);
    expect(shared.every((b) => engine.prefixCache!.isCached(b) && engine.prefixCache!.refCount(b) === 1)).toBe(true);
    shared.forEach((b, k) => {
      const now = engine.cache.slab(0).subarray(b * 4 * engine.cache.latentDim, (b + 1) * 4 * engine.cache.latentDim);
      expect(Array.from(now)).toEqual(Array.from(before[k]!));
    });
    while (!runner.finished) await engine.step([runner]);
    engine.release(runner);
    const ref = await reference([...SYSTEM, ...Q2], GREEDY);
    expect(runner.output.map((t) => t.id)).toEqual(ref.out.map((t) => t.id));
    expect(runner.output.map((t) => t.logprob)).toEqual(ref.out.map((t) => t.logprob));
  });

  it("without speculation caches the main layers only and bypasses the cache when a prefill wants MTP rows", async () => {
    const engine = new Engine(model, { ...opts, speculation: "off", prefixCache: true });
    await generateOne(engine, [...SYSTEM, ...Q1], GREEDY);
    const hit = await generateOne(engine, [...SYSTEM, ...Q2], GREEDY);
    expect(hit.cached).toBe(20);
    expect(hit.rows).toHaveLength(model.cacheLayers - 1); // no MTP layer crossed the sink
    expectSameRun(hit, await reference([...SYSTEM, ...Q2], GREEDY, false, false));
    const withMtp = await generateOne(engine, [...SYSTEM, ...Q2], GREEDY, true);
    expect(withMtp.cached).toBe(0);
    expectSameRun(withMtp, await reference([...SYSTEM, ...Q2], GREEDY, true, false));
  });

  it("is off by default: release frees every block", async () => {
    const engine = new Engine(model, opts);
    expect(engine.prefixCache).toBeNull();
    const r = await generateOne(engine, [...SYSTEM, ...Q1], GREEDY);
    expect(r.cached).toBe(0);
    expect(engine.cache.usedBlocks).toBe(0);
  });
});
