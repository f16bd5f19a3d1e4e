/**
 * Finite-difference checks (float64) of every layer's backward pass: each layer's output is reduced to a
 * scalar with a fixed random projection r (loss = r . y), and the analytic gradients of its inputs and of
 * every parameter are compared with central differences.
 */
import { describe, it } from "vitest";
import { Rng } from "@moela/engine";
import {
  crossEntropyInPlace,
  embed,
  embedBack,
  f64Ops as ops,
  linear,
  linearBack,
  mla,
  mlaBack,
  mlaParams,
  mlaShape,
  mlp,
  mlpBack,
  moe,
  moeBack,
  moeParams,
  balanceLoss,
  rmsNorm,
  rmsNormBack,
  type Param,
  type ParamStore,
} from "@moela/train";
import { checkGrad, dotLoss, randomVec, testParams, tinyConfig } from "./helpers.js";

function param(name: string, shape: number[], rng: Rng, std = 1, mean = 0): Param {
  const n = shape.reduce((a, b) => a * b, 1);
  const data = randomVec(n, rng, std);
  for (let i = 0; i < n; i++) data[i] = data[i]! + mean;
  return { name, shape, spec: { name, shape, init: "linear", quantizable: false }, data, grad: new Float64Array(n), decay: true, trainable: true };
}

function zero(ps: ParamStore | Param[]): void {
  for (const p of Array.isArray(ps) ? ps : ps.list) p.grad.fill(0);
}

describe("layer gradients against finite differences (float64)", () => {
  it("linear: input and weight", () => {
    const rng = new Rng(1);
    const T = 3,
      I = 5,
      O = 4;
    const W = param("w", [O, I], rng);
    const x = randomVec(T * I, rng);
    const r = randomVec(T * O, rng);
    const dx = linearBack(ops, W, x, r, T);
    const f = (): number => dotLoss(r, linear(ops, W, x, T));
    checkGrad("dx", x, dx, f);
    checkGrad("dW", W.data, W.grad, f);
  });

  it("embedding: repeated ids accumulate; a negative id is a zero row", () => {
    const rng = new Rng(2);
    const E = param("e", [7, 4], rng);
    const ids = Int32Array.from([3, -1, 3, 0, 6]);
    const r = randomVec(5 * 4, rng);
    embedBack(E, ids, 5, r);
    checkGrad("dE", E.data, E.grad, () => dotLoss(r, embed(ops, E, ids, 5)), 28);
  });

  it("RMSNorm: input and weight", () => {
    const rng = new Rng(3);
    const T = 3,
      n = 6;
    const w = param("w", [n], rng, 0.2, 1);
    const x = randomVec(T * n, rng);
    const r = randomVec(T * n, rng);
    const { saved } = rmsNorm(ops, x, T, n, w, 1e-6);
    const dx = rmsNormBack(ops, saved, T, n, w, r);
    const f = (): number => dotLoss(r, rmsNorm(ops, x, T, n, w, 1e-6).y);
    checkGrad("dx", x, dx, f, 18);
    checkGrad("dw", w.data, w.grad, f, 6);
  });

  it("SwiGLU MLP (dense layer): input and gate/up/down", () => {
    const rng = new Rng(4);
    const T = 3,
      h = 6,
      inter = 5;
    const ps = [param("g", [inter, h], rng), param("u", [inter, h], rng), param("d", [h, inter], rng)];
    const m = { gate: ps[0]!, up: ps[1]!, down: ps[2]! };
    const x = randomVec(T * h, rng);
    const r = randomVec(T * h, rng);
    const { saved } = mlp(ops, m, x, T);
    const dx = mlpBack(ops, m, saved, r);
    const f = (): number => dotLoss(r, mlp(ops, m, x, T).y);
    checkGrad("dx", x, dx, f);
    for (const p of ps) checkGrad(p.name, p.data, p.grad, f);
  });

  it("cross-entropy: logits (skipped targets included)", () => {
    const rng = new Rng(5);
    const T = 4,
      V = 7;
    const logits = randomVec(T * V, rng, 2);
    const targets = Int32Array.from([2, -1, 6, 0]);
    const g = Float64Array.from(logits);
    crossEntropyInPlace(g, T, V, targets, 0.7, 3);
    checkGrad("dlogits", logits, g, () => 0.7 * crossEntropyInPlace(Float64Array.from(logits), T, V, targets, 1, 3), 28);
  });

  for (const [label, over, B, S] of [
    ["MLA with q LoRA (q_a_proj, q_a_layernorm, q_b_proj) and YaRN rope", {}, 2, 5],
    ["MLA with q_proj and plain rope", { q_lora_rank: null, rope_scaling: null }, 2, 5],
    ["MLA over 150 positions (three causal chunks of queries)", {}, 1, 150],
  ] as const) {
    it(`${label}: input and every projection, norm`, () => {
      const cfg = tinyConfig(over);
      const ps = testParams(cfg, 7);
      const T = B * S;
      const sh = mlaShape(cfg, S);
      const p = mlaParams((n) => ps.get(n), cfg, 0);
      const rng = new Rng(8);
      const x = randomVec(T * cfg.hiddenSize, rng);
      const r = randomVec(T * cfg.hiddenSize, rng);
      zero(ps);
      const { saved } = mla(ops, p, sh, x, B, S);
      const dx = mlaBack(ops, p, sh, saved, r, B, S);
      const f = (): number => dotLoss(r, mla(ops, p, sh, x, B, S).y);
      checkGrad("dx", x, dx, f, 24);
      const query = p.query.kind === "lora" ? [p.query.qA, p.query.qANorm, p.query.qB] : [p.query.q];
      for (const w of [...query, p.kvA, p.kvANorm, p.kvB, p.o]) checkGrad(w.name, w.data, w.grad, f, 16);
    });
  }

  for (const alpha of [0, 0.3]) {
    it(`DeepSeekMoE (sigmoid gate, group-limited top-k, shared expert, SwiGLU experts)${alpha ? " with the sequence-wise balance loss" : ""}`, () => {
      const cfg = tinyConfig();
      const ps = testParams(cfg, 9);
      const B = 2,
        S = 6,
        T = B * S;
      const p = moeParams(
        (n) => ps.get(n),
        (n) => ps.has(n),
        cfg,
        1,
      );
      const rng = new Rng(10);
      const x = randomVec(T * cfg.hiddenSize, rng);
      const r = randomVec(T * cfg.hiddenSize, rng);
      zero(ps);
      const { saved } = moe(ops, cfg, p, x, T);
      const dx = moeBack(ops, cfg, p, saved, r, { balanceAlpha: alpha, S });
      const ids0 = saved.ids.join(",");
      let ids = ids0;
      const f = (): number => {
        const o = moe(ops, cfg, p, x, T);
        ids = o.saved.ids.join(",");
        return dotLoss(r, o.y) + balanceLoss(cfg, o.saved, S, alpha);
      };
      const stable = (): boolean => ids === ids0;
      checkGrad("dx", x, dx, f, 24, stable);
      checkGrad("gate", p.gate.data, p.gate.grad, f, 24, stable);
      for (const e of [0, 3, 7]) {
        const m = p.experts[e]!;
        if (saved.load[e] === 0) continue;
        for (const w of [m.gate, m.up, m.down]) checkGrad(w.name, w.data, w.grad, f, 8, stable);
      }
      for (const w of [p.shared!.gate, p.shared!.up, p.shared!.down]) checkGrad(w.name, w.data, w.grad, f, 8, stable);
    });
  }
});
