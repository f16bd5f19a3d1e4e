/**
 * The training loop: bit-identical runs for a seed, bit-identical resume from a checkpoint, the float32 path
 * against float64, the balancing rule, learning, and the saved FP8 model as the engine loads it.
 */
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import { DeepseekModel, dequantFp8Block, PagedLatentCache, parseModelConfig, quantizeFp8Block, readModelConfig, Rng, roundBf16 } from "@moela/engine";
import {
  DEFAULT_TRAIN_OPTIONS,
  TrainModel,
  Trainer,
  f32Ops,
  f64Ops,
  initParams,
  learningRate,
  mla,
  mlaBack,
  mlaParams,
  mlaShape,
  saveHfModel,
  setTrainThreads,
  shareParams,
  type Ops,
  type TrainOptions,
} from "@moela/train";
import { tinyConfigJson } from "./helpers.js";

const tmp = fs.mkdtempSync(path.join(os.tmpdir(), "moela-train-"));
afterAll(() => fs.rmSync(tmp, { recursive: true, force: true }));

const cfgJson = tinyConfigJson({ hidden_size: 32, moe_intermediate_size: 16, intermediate_size: 48, kv_lora_rank: 16, q_lora_rank: 24 });
const cfg = parseModelConfig(cfgJson);

/** A corpus the model can learn: a repeating ramp with noise. */
function corpus(n: number, V: number, seed: number): Int32Array {
  const rng = new Rng(seed);
  return Int32Array.from({ length: n }, (_, i) => (rng.next() < 0.1 ? Math.floor(rng.next() * V) : (i * 3) % V));
}

const OPTS: TrainOptions = { ...DEFAULT_TRAIN_OPTIONS, steps: 8, batch: 3, seqLen: 9, lr: 1e-2, warmup: 2, balanceAlpha: 0.01, seed: 5 };
const data = { tokens: corpus(2000, cfg.vocabSize, 3) };

function trainer(ops: Ops, opts = OPTS): Trainer {
  return new Trainer(new TrainModel(cfg, initParams(cfg, ops, 11), ops), data, opts);
}

function snapshot(t: Trainer): Uint8Array[] {
  return t.model.params.list.map((p) => new Uint8Array(p.data.buffer.slice(p.data.byteOffset, p.data.byteOffset + p.data.byteLength)));
}

const native = f32Ops !== null;

describe("Trainer", () => {
  it("learning rate: linear warm-up, then cosine down to lr * minLrRatio", () => {
    const o = { lr: 1, minLrRatio: 0.1, warmup: 4, steps: 14 };
    expect([0, 1, 2, 3].map((s) => learningRate(o, s))).toEqual([0.25, 0.5, 0.75, 1]);
    expect(learningRate(o, 9)).toBeCloseTo(0.55, 12);
    expect(learningRate(o, 14)).toBeCloseTo(0.1, 12);
  });

  it.skipIf(!native)("two float32 runs with the same seed give identical bits, on 1 and on 2 threads", async () => {
    const runs: Uint8Array[][] = [];
    const losses: number[][] = [];
    for (const threads of [1, 1, 2]) {
      setTrainThreads(threads);
      const t = trainer(f32Ops!);
      const l: number[] = [];
      for (let i = 0; i < 4; i++) l.push((await t.trainStep()).loss);
      runs.push(snapshot(t));
      losses.push(l);
    }
    setTrainThreads(1);
    expect(losses[1]).toEqual(losses[0]);
    expect(losses[2]).toEqual(losses[0]);
    for (let i = 0; i < runs[0]!.length; i++) {
      expect(Buffer.from(runs[1]![i]!).equals(Buffer.from(runs[0]![i]!))).toBe(true);
      expect(Buffer.from(runs[2]![i]!).equals(Buffer.from(runs[0]![i]!))).toBe(true);
    }
  });

  for (const ops of [f64Ops, ...(native ? [f32Ops!] : [])]) {
    it(`2N steps equal N steps, checkpoint, resume in a fresh trainer, N steps (${ops.precision}, identical bits)`, async () => {
      const a = trainer(ops);
      for (let i = 0; i < 6; i++) await a.trainStep();
      const b = trainer(ops);
      for (let i = 0; i < 3; i++) await b.trainStep();
      const dir = path.join(tmp, `ckpt-${ops.precision}`);
      b.saveCheckpoint(dir);
      const c = trainer(ops);
      c.loadCheckpoint(dir);
      expect(c.step).toBe(3);
      for (let i = 0; i < 3; i++) await c.trainStep();
      const sa = snapshot(a);
      const sc = snapshot(c);
      for (let i = 0; i < sa.length; i++) expect(Buffer.from(sc[i]!).equals(Buffer.from(sa[i]!)), a.model.params.list[i]!.name).toBe(true);
    });
  }

  it("data-parallel replicas (2 threads): identical bits run to run and across a resume, and the same training as 1 thread", async () => {
    const ops = f32Ops ?? f64Ops;
    const make = (): Trainer => new Trainer(new TrainModel(cfg, shareParams(cfg, initParams(cfg, ops, 11)), ops), data, OPTS);
    const runs: Uint8Array[][] = [];
    const losses: number[][] = [];
    for (let k = 0; k < 2; k++) {
      const t = make();
      await t.startReplicas(cfgJson, 2);
      const l: number[] = [];
      for (let i = 0; i < 4; i++) l.push((await t.trainStep()).loss);
      if (k === 1) {
        const dir = path.join(tmp, "ckpt-replicas");
        t.saveCheckpoint(dir);
        await t.close();
        const c = make();
        c.loadCheckpoint(dir);
        await c.startReplicas(cfgJson, 2);
        for (let i = 0; i < 2; i++) l.push((await c.trainStep()).loss);
        runs.push(snapshot(c));
        await c.close();
      } else {
        for (let i = 0; i < 2; i++) l.push((await t.trainStep()).loss);
        runs.push(snapshot(t));
        await t.close();
      }
      losses.push(l);
    }
    expect(losses[1]).toEqual(losses[0]);
    for (let i = 0; i < runs[0]!.length; i++) expect(Buffer.from(runs[1]![i]!).equals(Buffer.from(runs[0]![i]!))).toBe(true);
    // one thread computes the same losses up to float rounding (the sums are split differently)
    const single = make();
    const l1: number[] = [];
    for (let i = 0; i < 6; i++) l1.push((await single.trainStep()).loss);
    for (let i = 0; i < 6; i++) expect(Math.abs(l1[i]! - losses[0]![i]!)).toBeLessThan(1e-3 * l1[i]!);
  });

  it.skipIf(!native)("float32 gradients agree with float64 gradients", () => {
    const p64 = initParams(cfg, f64Ops, 11, 0.2);
    const p32 = initParams(cfg, f32Ops!, 11, 0.2);
    const m64 = new TrainModel(cfg, p64, f64Ops);
    const m32 = new TrainModel(cfg, p32, f32Ops!);
    for (const p of p64.list) p.data.set(p32.get(p.name).data);
    const tokens = new Trainer(m64, data, OPTS).nextBatch();
    const lo = { mtpLambda: 0.3, balanceAlpha: 0.01 };
    const r64 = m64.step(tokens, OPTS.batch, OPTS.seqLen, lo);
    const r32 = m32.step(tokens, OPTS.batch, OPTS.seqLen, lo);
    expect(Math.abs(r32.loss - r64.loss)).toBeLessThan(1e-4 * r64.loss);
    for (const p of p64.list) {
      if (!p.trainable) continue;
      const g32 = p32.get(p.name).grad;
      let num = 0;
      let den = 0;
      for (let i = 0; i < p.grad.length; i++) {
        num += (g32[i]! - p.grad[i]!) ** 2;
        den += p.grad[i]! ** 2;
      }
      expect(Math.sqrt(num / Math.max(den, 1e-30)), p.name).toBeLessThan(1e-3);
    }
  });

  it.skipIf(!native)("float32 attention over several causal chunks agrees with float64 (outputs and input gradients)", () => {
    const p64 = initParams(cfg, f64Ops, 12, 0.3);
    const p32 = initParams(cfg, f32Ops!, 12, 0.3);
    const S = 150;
    const sh = mlaShape(cfg, S);
    const m64 = mlaParams((n) => p64.get(n), cfg, 0);
    const m32 = mlaParams((n) => p32.get(n), cfg, 0);
    const rng = new Rng(4);
    const x = Float64Array.from({ length: S * cfg.hiddenSize }, () => rng.next() * 2 - 1);
    const r = Float64Array.from({ length: S * cfg.hiddenSize }, () => rng.next() * 2 - 1);
    const a = mla(f64Ops, m64, sh, x, 1, S);
    const b = mla(f32Ops!, m32, sh, Float32Array.from(x), 1, S);
    const da = mlaBack(f64Ops, m64, sh, a.saved, r, 1, S);
    const db = mlaBack(f32Ops!, m32, sh, b.saved, Float32Array.from(r), 1, S);
    const rel = (u: ArrayLike<number>, v: ArrayLike<number>): number => {
      let num = 0;
      let den = 0;
      for (let i = 0; i < u.length; i++) {
        num += (u[i]! - v[i]!) ** 2;
        den += u[i]! ** 2;
      }
      return Math.sqrt(num / den);
    };
    expect(rel(a.y, b.y)).toBeLessThan(1e-5);
    expect(rel(da, db)).toBeLessThan(1e-4);
  });

  it("aux-loss-free balancing: an overloaded expert's bias goes down by gamma, an idle one's up", async () => {
    const t = trainer(f64Ops, { ...OPTS, biasUpdateSpeed: 0.01, lr: 0 });
    const name = "model.layers.1.mlp.gate.e_score_correction_bias";
    const before = Float64Array.from(t.model.params.get(name).data);
    const s = await t.trainStep();
    const load = s.loads.get(1)!;
    const mean = load.reduce((a, b) => a + b, 0) / load.length;
    const after = t.model.params.get(name).data;
    for (let e = 0; e < load.length; e++) expect(after[e]! - before[e]!).toBeCloseTo(0.01 * Math.sign(mean - load[e]!), 12);
    expect(s.loads.has(cfg.numHiddenLayers)).toBe(true); // the MTP block's MoE is balanced too
  });

  it("learns: the loss falls well below log(V) on a learnable corpus", async () => {
    const ops = f32Ops ?? f64Ops;
    const t = trainer(ops, { ...OPTS, steps: 60, lr: 2e-2, warmup: 5, batch: 4, seqLen: 16 });
    const first = (await t.trainStep()).mainLoss;
    let last = first;
    for (let i = 1; i < 60; i++) last = (await t.trainStep()).mainLoss;
    expect(first).toBeGreaterThan(0.9 * Math.log(cfg.vocabSize));
    expect(last).toBeLessThan(0.5 * first);
  });

  it("saves an FP8 HF checkpoint the engine loads, and the engine's logits equal training's on the dequantized weights", async () => {
    const t = trainer(f64Ops);
    for (let i = 0; i < 2; i++) await t.trainStep();
    const dir = path.join(tmp, "model");
    const files = saveHfModel(t.model, cfgJson, dir);
    expect(files).toContain("model.safetensors");
    const loaded = readModelConfig(dir);
    expect(loaded.fp8BlockSize).toEqual([128, 128]);
    const engine = DeepseekModel.load(dir, { kernels: "reference" });
    expect(engine.weights.layers[0]!.attn.kvB.kind).toBe("fp8");
    // training's model with every quantized linear replaced by its FP8 values (and the rest rounded to BF16)
    const m = t.model;
    for (const p of m.params.list) {
      if (p.spec.quantizable) {
        const [r, c] = p.shape as [number, number];
        const q = quantizeFp8Block(Float32Array.from(p.data), r, c);
        p.data.set(dequantFp8Block(q.data, q.scaleInv, r, c));
      } else if (p.spec.dtype !== "F32") {
        for (let i = 0; i < p.data.length; i++) p.data[i] = roundBf16(p.data[i]!);
      }
    }
    const B = 1,
      S = 8;
    const ids = Int32Array.from({ length: S }, (_, i) => (i * 5) % cfg.vocabSize);
    const ours = m.logits(ids, B, S);
    const cache = new PagedLatentCache({ numLayers: engine.cacheLayers, latentDim: cfg.latentDim, blockSize: 4, numBlocks: 8 });
    const out = await engine.forward(cache, [{ blockTable: cache.allocate(S)!, start: 0, tokens: ids, logits: "all" }], { attention: "decompressed" });
    let worst = 0;
    for (let i = 0; i < S * cfg.vocabSize; i++) worst = Math.max(worst, Math.abs(out.logits[i]! - ours.logits[i]!));
    expect(worst).toBeLessThan(1e-5);
  });
});

describe("optimizer ranges", () => {
  it("partition: contiguous ranges of about equal size, covering every parameter once", async () => {
    const { partition } = await import("@moela/train");
    expect(partition([5, 5, 5, 5], 2)).toEqual([0, 2, 4]);
    expect(partition([100, 1, 1, 1], 2)).toEqual([0, 1, 4]);
    expect(partition([3], 1)).toEqual([0, 1]);
    const cuts = partition([7, 1, 9, 2, 2, 8, 1, 1, 30, 4], 3);
    expect(cuts[0]).toBe(0);
    expect(cuts[3]).toBe(10);
    for (let i = 0; i < 3; i++) expect(cuts[i + 1]!).toBeGreaterThanOrEqual(cuts[i]!);
  });
});
