import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { InvalidArgumentError } from "@moela/core";
import {
  DeepseekModel,
  Engine,
  MatmulPool,
  PagedLatentCache,
  f32ToBf16Bits,
  fastKernelsAvailable,
  nativeKernelsAddon,
  matmul,
  type MatmulLayout,
  type Sequence,
  type WeightMatrix,
} from "@moela/engine";
import { makeCheckpoint, removeCheckpoints } from "../../helpers/checkpoints.js";
import { fillRandom } from "../../helpers/random.js";

const fill = fillRandom;

function shared(bytes: number): SharedArrayBuffer {
  return new SharedArrayBuffer(bytes);
}

/** A rows x cols weight of the given kind in shared memory (FP8 codes skip NaN, 0x7f/0xff). */
function makeWeight(kind: "f32" | "bf16" | "fp8", rows: number, cols: number, blockCols = 128): WeightMatrix {
  const v = fill(new Float32Array(rows * cols), rows * 31 + cols);
  if (kind === "f32") {
    const d = new Float32Array(shared(4 * rows * cols));
    d.set(v);
    return { kind, rows, cols, data: d };
  }
  if (kind === "bf16") {
    const d = new Uint16Array(shared(2 * rows * cols));
    for (let i = 0; i < d.length; i++) d[i] = f32ToBf16Bits(v[i]!);
    return { kind, rows, cols, data: d };
  }
  const blockRows = 16;
  const d = new Uint8Array(shared(rows * cols));
  for (let i = 0; i < d.length; i++) d[i] = Math.floor((v[i]! + 1) * 63) | (i & 1 ? 0x80 : 0);
  const scales = Math.ceil(rows / blockRows) * Math.ceil(cols / blockCols);
  const scaleInv = new Float32Array(shared(4 * scales));
  for (let i = 0; i < scales; i++) scaleInv[i] = 0.001 * (i + 1);
  return { kind, rows, cols, data: d, scaleInv, blockRows, blockCols };
}

function bits(a: Float32Array): Uint32Array {
  return new Uint32Array(a.buffer, a.byteOffset, a.length);
}

interface Case {
  name: string;
  rows: number;
  cols: number;
  /** Builds the layout and the sizes of x and y for T tokens. */
  layout: (T: number, rows: number, cols: number) => { layout?: MatmulLayout; xLen: number; yLen: number };
}

const CASES: Case[] = [
  { name: "dense", rows: 67, cols: 40, layout: (T, rows, cols) => ({ xLen: T * cols, yLen: T * rows }) },
  {
    name: "row range (r0/nRows)",
    rows: 90,
    cols: 36,
    layout: (T, _rows, cols) => ({ layout: { r0: 13, nRows: 45 }, xLen: T * cols, yLen: T * 45 }),
  },
  {
    name: "strided x and y",
    rows: 50,
    cols: 33,
    layout: (T, rows, cols) => ({
      layout: { xOff: 7, xStride: cols + 5, yOff: 3, yStride: rows + 9 },
      xLen: 7 + T * (cols + 5),
      yLen: 3 + T * (rows + 9),
    }),
  },
  {
    name: "row range into a strided y (attention's per-head kv_b_proj)",
    rows: 96,
    cols: 24,
    layout: (T, _rows, cols) => ({
      layout: { xStride: cols + 8, r0: 32, nRows: 40, yOff: 5, yStride: 61 },
      xLen: T * (cols + 8),
      yLen: 5 + T * 61,
    }),
  },
];

const KINDS: { kind: "f32" | "bf16" | "fp8"; blockCols?: number }[] = [
  { kind: "f32" },
  { kind: "bf16" },
  { kind: "fp8" },
  // blockCols not a multiple of 4: FP8 always takes the decode-once path.
  { kind: "fp8", blockCols: 6 },
];

describe("MatmulPool", () => {
  // Workers do every chunk (the caller only waits), so the worker code path is what is compared.
  const workersOnly = new MatmulPool({ threads: 3, minWork: 0, callerTakesChunks: false });
  const shared2 = new MatmulPool({ threads: 2, minWork: 0 });
  beforeAll(async () => {
    expect(await workersOnly.ready()).toBe(true);
    expect(await shared2.ready()).toBe(true);
  });
  afterAll(async () => {
    await workersOnly.close();
    await shared2.close();
  });

  for (const k of KINDS) {
    for (const c of CASES) {
      it.each([1, 2, 5, 33])(`${k.kind}${k.blockCols ? ` (blockCols ${k.blockCols})` : ""}, ${c.name}, T=%i: same bits as one thread`, (T) => {
        const w = makeWeight(k.kind, c.rows, c.cols, k.blockCols);
        const { layout, xLen, yLen } = c.layout(T, c.rows, c.cols);
        const x = fill(new Float32Array(shared(4 * xLen)), T * 7 + xLen);
        // y starts from the same garbage everywhere, so untouched gaps must stay equal too.
        const ref = fill(new Float32Array(yLen), 99);
        const y1 = new Float32Array(shared(4 * yLen));
        const y2 = new Float32Array(shared(4 * yLen));
        y1.set(ref);
        y2.set(ref);
        matmul(w, x, T, ref, layout);
        const before = workersOnly.workerChunks;
        workersOnly.matmul(w, x, T, y1, layout);
        expect(workersOnly.workerChunks).toBeGreaterThan(before);
        shared2.matmul(w, x, T, y2, layout);
        expect(bits(y1)).toEqual(bits(ref));
        expect(bits(y2)).toEqual(bits(ref));
        expect(ref.some((v) => !Number.isFinite(v))).toBe(false);
      });
    }
  }

  it("reads x and y through an offset view of a shared buffer", () => {
    const w = makeWeight("bf16", 64, 32);
    const xBuf = new Float32Array(shared(4 * 1000));
    fill(xBuf, 5);
    const x = xBuf.subarray(100, 100 + 3 * 32);
    const yBuf = new Float32Array(shared(4 * 1000));
    const y = yBuf.subarray(300, 300 + 3 * 64);
    const ref = new Float32Array(3 * 64);
    matmul(w, x, 3, ref);
    workersOnly.matmul(w, x, 3, y);
    expect(bits(y)).toEqual(bits(ref));
    // Nothing outside the view was written.
    expect(yBuf.subarray(0, 300).every((v) => v === 0)).toBe(true);
    expect(yBuf.subarray(300 + 3 * 64).every((v) => v === 0)).toBe(true);
  });

  it("runs unshared buffers and small products on the caller, with the same bits", () => {
    const w = makeWeight("f32", 40, 16);
    const x = fill(new Float32Array(2 * 16), 3); // not shared
    const y = new Float32Array(2 * 40);
    const ref = new Float32Array(2 * 40);
    matmul(w, x, 2, ref);
    const before = workersOnly.workerChunks;
    workersOnly.matmul(w, x, 2, y);
    expect(workersOnly.workerChunks).toBe(before);
    expect(bits(y)).toEqual(bits(ref));

    const big = new MatmulPool({ threads: 2, minWork: 1e9, callerTakesChunks: false });
    const xs = new Float32Array(shared(4 * 2 * 16));
    xs.set(x);
    const ys = new Float32Array(shared(4 * 2 * 40));
    big.matmul(w, xs, 2, ys); // below minWork: would hang if it went to the (possibly unstarted) workers
    expect(big.workerChunks).toBe(0);
    expect(bits(ys)).toEqual(bits(ref));
    void big.close();
  });

  it("keeps working on the caller after close()", async () => {
    const p = new MatmulPool({ threads: 2, minWork: 0 });
    await p.ready();
    await p.close();
    const w = makeWeight("fp8", 32, 128);
    const x = fill(new Float32Array(shared(4 * 128)), 8);
    const y = new Float32Array(shared(4 * 32));
    const ref = new Float32Array(32);
    matmul(w, x, 1, ref);
    p.matmul(w, x, 1, y);
    expect(bits(y)).toEqual(bits(ref));
  });

  it.each([0, -1, 1.5, Number.NaN])("rejects threads = %s", (threads) => {
    expect(() => new MatmulPool({ threads })).toThrow(InvalidArgumentError);
  });
});

const PROMPTS = [
  [0, 399, 332, 17, 256, 901, 44, 12, 730, 5, 66, 120, 7],
  [0, 5, 9, 700, 3],
];

/** Every logits/hidden row a model produces over prefill (decompressed), batched decode (absorbed) and MTP. */
async function trace(model: DeepseekModel): Promise<Float32Array[]> {
  const out: Float32Array[] = [];
  const cache = new PagedLatentCache({ numLayers: model.cacheLayers, latentDim: model.config.latentDim, blockSize: 4, numBlocks: 32 });
  const tables = PROMPTS.map((p) => {
    const t: number[] = [];
    cache.ensureCapacity(t, p.length + 4);
    return t;
  });
  const pre = await model.forward(
    cache,
    PROMPTS.map((p, i) => ({ blockTable: tables[i]!, start: 0, tokens: p, logits: "all" as const })),
    { attention: "decompressed" },
  );
  out.push(pre.logits.slice(), pre.hidden.slice());
  const mtp = await model.forwardMtp(
    cache,
    PROMPTS.map((p, i) => ({
      blockTable: tables[i]!,
      start: 0,
      tokens: [...p.slice(1), 11],
      logits: "all" as const,
      hidden: pre.hidden,
      hiddenOff: pre.tokenRow[i]! * model.config.hiddenSize,
    })),
    { attention: "decompressed" },
  );
  out.push(mtp.logits.slice());
  for (let step = 0; step < 3; step++) {
    const r = await model.forward(
      cache,
      PROMPTS.map((p, i) => ({ blockTable: tables[i]!, start: p.length + step, tokens: [17 + step * 3 + i], logits: "last" as const })),
      { attention: "absorbed" },
    );
    out.push(r.logits.slice());
  }
  return out;
}

/** Greedy tokens of a small batch through the Engine (prefill, MTP-speculative decode steps). */
async function generate(model: DeepseekModel): Promise<number[][]> {
  const engine = new Engine(model, { blockSize: 4, numBlocks: 64, prefillChunk: 6 });
  const seqs: Sequence[] = PROMPTS.map((p, i) => engine.newSequence(`s${i}`, p, { temperature: 0, topP: 1, topK: -1, maxTokens: 8, ignoreEos: true }));
  await engine.prefill(seqs);
  while (seqs.some((s) => !s.finished)) await engine.step(seqs.filter((s) => !s.finished));
  return seqs.map((s) => s.output.map((t) => t.id));
}

// The MatmulPool serves the TypeScript backends (portable, reference); the fast backend's threads are native
// (test/unit/engine/kernels.test.ts and the model test below).
describe("DeepseekModel with threads (portable kernels, MatmulPool)", () => {
  let dir: string;
  let single: DeepseekModel;
  let multi: DeepseekModel;
  beforeAll(async () => {
    dir = makeCheckpoint("tiny-v3");
    single = DeepseekModel.load(dir, { kernels: "portable" });
    multi = DeepseekModel.load(dir, { threads: 2, kernels: "portable" });
    expect(multi.threads).toBe(2);
    // The tiny model's products are all below the default threshold: split everything, and only in the worker.
    multi.setThreads(2, { minWork: 0, callerTakesChunks: false });
    expect(await multi.matmulPool!.ready()).toBe(true);
  });
  afterAll(async () => {
    await multi.close();
    removeCheckpoints();
  });

  it("gives bit-identical logits and hidden states to threads = 1", async () => {
    const a = await trace(single);
    const before = multi.matmulPool!.workerChunks;
    const b = await trace(multi);
    expect(multi.matmulPool!.workerChunks).toBeGreaterThan(before);
    expect(b.length).toBe(a.length);
    for (let i = 0; i < a.length; i++) expect(bits(b[i]!)).toEqual(bits(a[i]!));
  });

  it("generates the same greedy tokens through the Engine", async () => {
    expect(await generate(multi)).toEqual(await generate(single));
  });

  it("close() stops the workers and the model keeps working alone", async () => {
    const m = DeepseekModel.load(dir, { threads: 2, kernels: "portable" });
    await m.matmulPool!.ready();
    await m.close();
    expect(m.threads).toBe(1);
    expect(await generate(m)).toEqual(await generate(single));
  });
});

describe.skipIf(!fastKernelsAvailable())("DeepseekModel with threads (fast kernels, native threads)", () => {
  let dir: string;
  beforeAll(() => {
    dir = makeCheckpoint("tiny-v3");
  });
  afterAll(() => {
    nativeKernelsAddon!.setThreads(1, 1 << 16);
    removeCheckpoints();
  });

  it("gives bit-identical logits, hidden states and greedy tokens to one thread", async () => {
    const model = DeepseekModel.load(dir, { kernels: "fast", threads: 1 });
    expect(model.threads).toBe(1);
    const a = await trace(model);
    const tokensA = await generate(model);
    // Split every product (minWork 0), as a large model's would be.
    nativeKernelsAddon!.setThreads(2, 0);
    expect(model.threads).toBe(2);
    const before = nativeKernelsAddon!.workerChunks();
    const b = await trace(model);
    const tokensB = await generate(model);
    // The caller takes chunks too, so on a busy machine (CI runs unit files side by side) a worker may miss every
    // product of one pass: generate again, each pass the same tokens, until one took part.
    const deadline = performance.now() + 10_000;
    while (nativeKernelsAddon!.workerChunks() === before && performance.now() < deadline) expect(await generate(model)).toEqual(tokensA);
    expect(nativeKernelsAddon!.workerChunks()).toBeGreaterThan(before);
    expect(b.length).toBe(a.length);
    for (let i = 0; i < a.length; i++) expect(bits(b[i]!)).toEqual(bits(a[i]!));
    expect(tokensB).toEqual(tokensA);
  });
});
