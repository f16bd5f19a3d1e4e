/**
 * The whole model: end-to-end gradients (embedding through MTP) against finite differences in float64, and
 * the training forward against the engine's own forward (DeepseekModel with the reference kernels) on the
 * same weights, main logits and MTP logits.
 */
import { describe, expect, it } from "vitest";
import { DeepseekModel, PagedLatentCache, Rng } from "@moela/engine";
import { TrainModel, f64Ops, toEngineWeights, type LossOptions, type StepResult } from "@moela/train";
import { checkGrad, testParams, tinyConfig } from "./helpers.js";

function randomTokens(n: number, V: number, seed: number): Int32Array {
  const rng = new Rng(seed);
  return Int32Array.from({ length: n }, () => Math.floor(rng.next() * V));
}

/** The id of the largest of row t of `x` [T, V] (the lowest on ties). */
function top(x: ArrayLike<number>, t: number, V: number): number {
  let arg = 0;
  for (let i = 1; i < V; i++) if (x[t * V + i]! > x[t * V + arg]!) arg = i;
  return arg;
}

/** The cross-entropy of `logits` [T, V] summed over the rows whose target(t) is not negative, and how many rows' top-1 it was. */
function againstTargets(logits: ArrayLike<number>, V: number, T: number, target: (t: number) => number): { loss: number; correct: number } {
  let loss = 0;
  let correct = 0;
  for (let t = 0; t < T; t++) {
    const y = target(t);
    if (y < 0) continue;
    let m = -Infinity;
    for (let i = 0; i < V; i++) m = Math.max(m, logits[t * V + i]!);
    let z = 0;
    for (let i = 0; i < V; i++) z += Math.exp(logits[t * V + i]! - m);
    loss += m + Math.log(z) - logits[t * V + y]!;
    if (top(logits, t, V) === y) correct++;
  }
  return { loss, correct };
}

/**
 * One training step of tinyConfig (seeded by `seed`, 2 rows of S positions) with `opts`, then the gradient of every
 * trainable parameter `check` names against float64 finite differences of the step's loss (coordinates whose
 * perturbation changes the routing skipped). Returns the model, the step's result and how many were checked.
 */
function stepGradients(seed: number, S: number, opts: LossOptions, check: (name: string) => boolean) {
  const cfg = tinyConfig();
  const ps = testParams(cfg, seed);
  const model = new TrainModel(cfg, ps, f64Ops);
  const B = 2;
  const tokens = randomTokens(B * model.rowLength(S), cfg.vocabSize, seed + 1);
  ps.zeroGrad();
  const r0 = model.step(tokens, B, S, opts);
  const routing = (r: StepResult): string => [...r.loads.values()].map((l) => l.join(",")).join("|");
  const loads0 = routing(r0);
  let loads = loads0;
  const f = (): number => {
    const r = model.step(tokens, B, S, opts, false);
    loads = routing(r);
    return r.loss;
  };
  let checked = 0;
  for (const p of ps.list) {
    if (!p.trainable || !check(p.name)) continue;
    checkGrad(p.name, p.data, p.grad, f, 3, () => loads === loads0);
    checked++;
  }
  return { model, r0, checked };
}

describe("TrainModel", () => {
  it("end-to-end gradients of CE + lambda * MTP CE + balance loss match finite differences for every tensor", () => {
    const { model, r0, checked } = stepGradients(21, 5, { mtpLambda: 0.3, balanceAlpha: 0.05 }, () => true);
    expect(r0.mtpLoss).toBeGreaterThan(0);
    expect(r0.balanceLoss).toBeGreaterThan(0);
    expect(checked).toBeGreaterThan(40);
    expect(model.params.list.filter((p) => p.trainable)).toHaveLength(checked);
  });

  it("MTP self-distillation: the MTP module's gradients against the main head's top-1 match finite differences, and nothing else gets one", () => {
    // The main model's loss and balance terms do not move with the MTP module's parameters, so the total's
    // finite differences in them are the MTP loss's.
    const opts = { mtpLambda: 0.3, balanceAlpha: 0.05, mtpTargets: "main", mtpOnly: true } as const;
    const { model, r0, checked } = stepGradients(23, 6, opts, (name) => name.startsWith("model.layers.2."));
    expect(r0.mtpLoss).toBeGreaterThan(0);
    expect(checked).toBeGreaterThan(15);
    for (const p of model.params.list) {
      expect(model.isMtpParam(p.name)).toBe(p.name.startsWith("model.layers.2."));
      if (!model.isMtpParam(p.name))
        expect(
          p.grad.every((g) => g === 0),
          `${p.name}: a main-model gradient`,
        ).toBe(true);
    }
  });

  it("mtpDepths 3: the MTP module's gradients of all three depths match finite differences, and nothing else gets one", () => {
    const opts = { mtpLambda: 0.3, balanceAlpha: 0.05, mtpTargets: "main", mtpOnly: true, mtpDepths: 3 } as const;
    const { model, r0, checked } = stepGradients(27, 6, opts, (name) => name.startsWith("model.layers.2."));
    expect(r0.mtpChainLoss).toBeGreaterThan(0);
    expect(r0.loss).toBeCloseTo(r0.mainLoss + 0.3 * (r0.mtpLoss + r0.mtpChainLoss) + r0.balanceLoss, 12);
    expect(checked).toBeGreaterThan(15);
    for (const p of model.params.list) if (!model.isMtpParam(p.name)) expect(p.grad.every((g) => g === 0)).toBe(true);
    // The chained depths add to the MTP module's gradient.
    const one = stepGradients(27, 6, { ...opts, mtpDepths: 1 }, () => false).model;
    const eh = (m: typeof model) => m.params.get("model.layers.2.eh_proj.weight").grad;
    expect(eh(one)).not.toEqual(eh(model));
  });

  it("mtpDepths 2: the chained loss is depth 1's pass with its hidden input replaced by depth 1's normed output at the position before", () => {
    const cfg = tinyConfig();
    const model = new TrainModel(cfg, testParams(cfg, 29), f64Ops);
    const B = 2,
      S = 6,
      V = cfg.vocabSize,
      L = model.rowLength(S),
      hd = cfg.hiddenSize;
    const tokens = randomTokens(B * L, V, 30);
    const ids = Int32Array.from({ length: B * S }, (_, t) => tokens[Math.floor(t / S) * L + (t % S)]!);
    const next = Int32Array.from({ length: B * S }, (_, t) => tokens[Math.floor(t / S) * L + (t % S) + 1]!);
    const main = model.logits(ids, B, S);
    const depth1 = model.mtpForward(main.hidden, next, B, S);
    const hidden = new Float64Array(B * S * hd);
    for (let t = 0; t < B * S; t++) {
      const from = t % S === 0 ? main.hidden.subarray(t * hd, (t + 1) * hd) : depth1.normed.subarray((t - 1) * hd, t * hd);
      hidden.set(from, t * hd);
    }
    const depth2 = model.mtpLogits(hidden, next, B, S);
    const { loss, correct } = againstTargets(depth2, V, B * S, (t) => (t % S === 0 || t % S === S - 1 ? -1 : top(main.logits, t + 1, V)));
    const r = model.step(tokens, B, S, { mtpLambda: 1, balanceAlpha: 0, mtpTargets: "main", mtpDepths: 2 }, false);
    expect(r.mtpChainLoss).toBeCloseTo(loss / (B * S), 10);
    expect(r.mtpChainCorrect).toBe(correct);
    const plain = model.step(tokens, B, S, { mtpLambda: 1, balanceAlpha: 0, mtpTargets: "main" }, false);
    expect([plain.mtpChainLoss, plain.mtpChainCorrect]).toEqual([0, 0]);
    expect(plain.mtpLoss).toBe(r.mtpLoss);
  });

  it("mtpDepths: refused outside 1 to 4, without main targets, and in a backward pass that trains the main model", () => {
    const cfg = tinyConfig();
    const model = new TrainModel(cfg, testParams(cfg, 31), f64Ops);
    const tokens = randomTokens(2 * model.rowLength(4), cfg.vocabSize, 32);
    const base = { mtpLambda: 0.3, balanceAlpha: 0 } as const;
    for (const d of [0, 5, 1.5])
      expect(() => model.step(tokens, 2, 4, { ...base, mtpTargets: "main", mtpOnly: true, mtpDepths: d })).toThrow(/mtpDepths must be an integer from 1 to 4/);
    expect(() => model.step(tokens, 2, 4, { ...base, mtpOnly: true, mtpDepths: 2 })).toThrow(/needs an MTP layer and mtpTargets main/);
    expect(() => model.step(tokens, 2, 4, { ...base, mtpTargets: "main", mtpDepths: 2 })).toThrow(/set mtpOnly/);
    expect(model.step(tokens, 2, 4, { ...base, mtpTargets: "main", mtpDepths: 2 }, false).mtpChainLoss).toBeGreaterThan(0);
  });

  it("mtpTargets main: the MTP loss is the cross-entropy against the main head's top-1 at the next position, the row's last left out", () => {
    const cfg = tinyConfig();
    const ps = testParams(cfg, 25);
    const model = new TrainModel(cfg, ps, f64Ops);
    const B = 2,
      S = 6,
      V = cfg.vocabSize,
      L = model.rowLength(S);
    const tokens = randomTokens(B * L, V, 26);
    const ids = Int32Array.from({ length: B * S }, (_, t) => tokens[Math.floor(t / S) * L + (t % S)]!);
    const next = Int32Array.from({ length: B * S }, (_, t) => tokens[Math.floor(t / S) * L + (t % S) + 1]!);
    const main = model.logits(ids, B, S);
    const mtp = model.mtpLogits(main.hidden, next, B, S);
    const { loss, correct } = againstTargets(mtp, V, B * S, (t) => (t % S === S - 1 ? -1 : top(main.logits, t + 1, V)));
    const r = model.step(tokens, B, S, { mtpLambda: 1, balanceAlpha: 0, mtpTargets: "main" }, false);
    expect(r.mtpLoss).toBeCloseTo(loss / (B * S), 10);
    expect(r.mtpCorrect).toBe(correct);
    // against the data's token after next, the loss differs
    const data = model.step(tokens, B, S, { mtpLambda: 1, balanceAlpha: 0 }, false);
    expect(Math.abs(data.mtpLoss - r.mtpLoss)).toBeGreaterThan(1e-3);
    expect(data.mainLoss).toBe(r.mainLoss);
  });

  for (const [label, over, S] of [
    ["q LoRA, YaRN", {}, 7],
    ["q_proj, no rope scaling, tied embeddings", { q_lora_rank: null, rope_scaling: null, tie_word_embeddings: true }, 7],
    ["140 positions: several causal chunks", {}, 140],
  ] as const) {
    it(`computes the engine's main and MTP logits on the same weights (${label})`, async () => {
      const cfg = tinyConfig(over);
      const ps = testParams(cfg, 31);
      // The engine holds float32 weights: give training the same values.
      for (const p of ps.list) for (let i = 0; i < p.data.length; i++) p.data[i] = Math.fround(p.data[i]!);
      const model = new TrainModel(cfg, ps, f64Ops);
      const B = 2;
      const ids = randomTokens(B * (S + 1), cfg.vocabSize, 32);
      const main = Int32Array.from({ length: B * S }, (_, t) => ids[Math.floor(t / S) * (S + 1) + (t % S)]!);
      const next = Int32Array.from({ length: B * S }, (_, t) => ids[Math.floor(t / S) * (S + 1) + (t % S) + 1]!);
      const ours = model.logits(main, B, S);
      const oursMtp = model.mtpLogits(ours.hidden, next, B, S);

      const engine = new DeepseekModel(cfg, toEngineWeights(model), 0, { kernels: "reference" });
      const cache = new PagedLatentCache({ numLayers: engine.cacheLayers, latentDim: cfg.latentDim, blockSize: 4, numBlocks: 2 * Math.ceil(S / 4) });
      const seqs = [0, 1].map((b) => ({
        blockTable: cache.allocate(Math.ceil(S / 4))!,
        start: 0,
        tokens: main.subarray(b * S, (b + 1) * S),
        logits: "all" as const,
      }));
      const out = await engine.forward(cache, seqs, { attention: "decompressed" });
      const V = cfg.vocabSize;
      let worst = 0;
      for (let i = 0; i < B * S * V; i++) worst = Math.max(worst, Math.abs(out.logits[i]! - ours.logits[i]!));
      const hidden = Float32Array.from(out.hidden);
      const mtp = await engine.forwardMtp(
        cache,
        seqs.map((s, b) => ({ ...s, tokens: next.subarray(b * S, (b + 1) * S), hidden, hiddenOff: b * S * cfg.hiddenSize })),
        { attention: "decompressed" },
      );
      let worstMtp = 0;
      for (let i = 0; i < B * S * V; i++) worstMtp = Math.max(worstMtp, Math.abs(mtp.logits[i]! - oursMtp[i]!));
      // float32 activations in the engine against float64 here
      expect(worst).toBeLessThan(1e-5);
      expect(worstMtp).toBeLessThan(1e-5);
      let scale = 0;
      for (let i = 0; i < B * S * V; i++) scale = Math.max(scale, Math.abs(ours.logits[i]!));
      expect(scale).toBeGreaterThan(0.1);
    });
  }
});
