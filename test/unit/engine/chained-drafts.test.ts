/**
 * Chained drafts (EngineOptions.speculativeTokens): the MTP layer run again on its own output row drafts a second
 * and third token per step. The main model verifies them all, so greedy tokens and logprobs stay the plain
 * decoder's; on the bundled model, whose MTP head was trained, a chain's second draft lands about as often as its
 * first, as the teacher-forced rates of scripts/bench/speculation.ts say it should.
 */
import path from "node:path";
import { fileURLToPath } from "node:url";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { DeepseekModel, Engine, MAX_SPECULATIVE_TOKENS, type EmittedToken, type EngineOptions, type GenerationParams, type Sequence } from "@moela/engine";
import { makeCheckpoint, removeCheckpoints } from "../../helpers/checkpoints.js";
import { PerfectDraftEngine } from "../../../scripts/lib/perfect-drafts.js";

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "../../..");
const PROMPTS = [
  [0, 399, 332, 17, 256, 901, 44, 12, 730, 5, 66, 120, 7],
  [0, 12, 5, 800, 3, 3, 91],
  [0, 1000, 2, 640, 77, 18, 250, 9, 11, 402],
];
const GREEDY: GenerationParams = { temperature: 0, topP: 1, topK: -1, maxTokens: 48, ignoreEos: true, topLogprobs: 3 };
const SEEDED: GenerationParams = { temperature: 0.8, topP: 0.95, topK: 50, seed: 11, maxTokens: 40, ignoreEos: true, topLogprobs: 2 };
const BASE: EngineOptions = { blockSize: 4, numBlocks: 256 };

interface Stepped {
  readonly outs: EmittedToken[][];
  /** Per step and sequence: the drafts it verified (0 without one) and the tokens the step emitted. */
  readonly steps: { drafts: number; emitted: number; remaining: number }[];
  readonly seqs: Sequence[];
}

/** Prefill a batch and step it to its end, recording what every sequence verified and emitted at each step. */
async function runBatch(engine: Engine, prompts: readonly (readonly number[])[], params: GenerationParams): Promise<Stepped> {
  const seqs = prompts.map((p, i) => engine.newSequence(`s${i}`, p, params));
  await engine.prefill(seqs);
  const steps: Stepped["steps"] = [];
  for (;;) {
    const live = seqs.filter((s) => !s.finished);
    if (live.length === 0) break;
    const before = live.map((s) => ({ drafts: s.draft === null ? 0 : 1 + s.chainedDrafts.length, remaining: s.params.maxTokens - s.output.length }));
    const results = await engine.step(live);
    results.forEach((r, i) => steps.push({ ...before[i]!, emitted: r.tokens.length }));
  }
  const outs = seqs.map((s) => [...s.output]);
  for (const s of seqs) engine.release(s);
  return { outs, steps, seqs };
}

function expectSameTokens(got: EmittedToken[], want: EmittedToken[]): void {
  expect(got.map((t) => t.id)).toEqual(want.map((t) => t.id));
  expect(got.map((t) => t.logprob)).toEqual(want.map((t) => t.logprob));
  expect(got.map((t) => t.top)).toEqual(want.map((t) => t.top));
}

describe("chained drafts (speculativeTokens)", () => {
  let tiny: DeepseekModel;
  let plain: EmittedToken[][];
  beforeAll(async () => {
    tiny = DeepseekModel.load(makeCheckpoint({ preset: "tiny-v3" }));
    plain = [];
    for (const p of PROMPTS) plain.push((await runBatch(new Engine(tiny, { ...BASE, speculation: "off" }), [p], GREEDY)).outs[0]!);
  });
  afterAll(removeCheckpoints);

  it("refuses a count outside 1 to MAX_SPECULATIVE_TOKENS and defaults to 1", () => {
    expect(new Engine(tiny, BASE).speculativeTokens).toBe(1);
    for (const bad of [0, MAX_SPECULATIVE_TOKENS + 1, 1.5]) {
      expect(() => new Engine(tiny, { ...BASE, speculativeTokens: bad })).toThrow(/speculativeTokens must be an integer from 1 to 4/);
    }
  });

  it.each([2, 3, 4])("%i drafts per step: a batch's greedy tokens and logprobs are each sequence's plain ones", async (k) => {
    const r = await runBatch(new Engine(tiny, { ...BASE, speculation: "on", speculativeTokens: k }), PROMPTS, GREEDY);
    r.outs.forEach((out, i) => expectSameTokens(out, plain[i]!));
    // Chains were made and verified: all k drafts at most steps, never more than the tokens left allow.
    expect(r.steps.filter((s) => s.drafts === k).length).toBeGreaterThan(r.steps.length / 2);
    for (const s of r.steps) {
      expect(s.drafts).toBeLessThanOrEqual(Math.max(1, s.remaining - 1));
      expect(s.emitted).toBeLessThanOrEqual(s.drafts + 1);
    }
    expect(r.seqs.every((s) => s.output.length === GREEDY.maxTokens)).toBe(true);
  });

  it.each([1, 3])("with %i draft(s) per step, an Engine subclass's draftFrom decides every draft (speculation.ts --perfect-drafts)", async (k) => {
    const options: EngineOptions = { ...BASE, speculation: "on", speculativeTokens: k };
    // This random model's own drafts mostly miss; proposing the plain run's tokens instead, every draft lands.
    const own = new Engine(tiny, options);
    await runBatch(own, PROMPTS, GREEDY);
    expect(own.accepted).toBeLessThan(own.drafted / 2);
    const engine = new PerfectDraftEngine(tiny, options, new Map(plain.map((out, i) => [`s${i}`, out.map((t) => t.id)])));
    const r = await runBatch(engine, PROMPTS, GREEDY);
    r.outs.forEach((out, i) => expectSameTokens(out, plain[i]!));
    expect(engine.drafted).toBeGreaterThan(0);
    expect(engine.accepted).toBe(engine.drafted);
    for (const s of r.steps.filter((st) => st.drafts > 0)) expect(s.emitted).toBe(Math.min(s.drafts + 1, s.remaining));
    expect(r.steps.filter((s) => s.drafts === k).length).toBeGreaterThan(r.steps.length / 2);
  });

  it("counts drafts and accepted drafts by position, as decode's metrics report them", async () => {
    const engine = new Engine(tiny, { ...BASE, speculation: "on", speculativeTokens: 3 });
    const r = await runBatch(engine, PROMPTS, GREEDY);
    const verified = r.steps.filter((s) => s.drafts > 0);
    for (let p = 0; p < MAX_SPECULATIVE_TOKENS; p++) expect(engine.draftedAt[p]).toBe(verified.filter((s) => s.drafts > p).length);
    // A step accepted its first `emitted - 1` drafts (when no stop cut its tokens: ignore_eos, and max_tokens leaves
    // room for every draft plus one).
    for (let p = 0; p < MAX_SPECULATIVE_TOKENS; p++) expect(engine.acceptedAt[p]).toBe(verified.filter((s) => s.emitted - 1 > p).length);
    expect(engine.draftedAt.reduce((a, b) => a + b)).toBe(engine.drafted);
    expect(engine.acceptedAt.reduce((a, b) => a + b)).toBe(engine.accepted);
    expect(engine.draftedAt[3]).toBe(0);
    expect(engine.draftedAt[2]).toBeGreaterThan(0);
  });

  it.each(["own", "perfect"])("stepDraftedAt and stepAcceptedAt hold each step's own counts by position (%s drafts)", async (drafter) => {
    const options: EngineOptions = { ...BASE, speculation: "on", speculativeTokens: 3 };
    // This random model's own drafts mostly miss, so the perfect drafter is what exercises accepted counts at every position.
    const engine =
      drafter === "own" ? new Engine(tiny, options) : new PerfectDraftEngine(tiny, options, new Map(plain.map((out, i) => [`s${i}`, out.map((t) => t.id)])));
    const seqs = PROMPTS.map((p, i) => engine.newSequence(`s${i}`, p, GREEDY));
    await engine.prefill(seqs);
    let steps = 0;
    const acceptedSteps = new Array<number>(MAX_SPECULATIVE_TOKENS).fill(0);
    const mostRowsAccepted = new Array<number>(MAX_SPECULATIVE_TOKENS).fill(0);
    for (;;) {
      const live = seqs.filter((s) => !s.finished);
      if (live.length === 0) break;
      const drafts = live.map((s) => (s.draft === null ? 0 : 1 + s.chainedDrafts.length));
      const results = await engine.step(live);
      for (let p = 0; p < MAX_SPECULATIVE_TOKENS; p++) {
        expect(engine.stepDraftedAt[p]).toBe(drafts.filter((d) => d > p).length);
        expect(engine.stepAcceptedAt[p]).toBe(results.filter((r, i) => drafts[i]! > 0 && r.tokens.length - 1 > p).length);
        if (engine.stepAcceptedAt[p]! > 0) acceptedSteps[p]!++;
        mostRowsAccepted[p] = Math.max(mostRowsAccepted[p]!, engine.stepAcceptedAt[p]!);
      }
      steps++;
    }
    expect(steps).toBeGreaterThan(drafter === "own" ? 10 : 4);
    if (drafter === "perfect") {
      // Every draft lands, so each of the three positions had accepted drafts at most steps, and several rows at once.
      for (let p = 0; p < 3; p++) expect(acceptedSteps[p]).toBeGreaterThan(steps / 2);
      expect(engine.accepted).toBe(engine.drafted);
      expect(acceptedSteps[3]).toBe(0);
      for (let p = 0; p < 3; p++) expect(mostRowsAccepted[p]).toBe(PROMPTS.length);
    }
    for (const s of seqs) engine.release(s);
  });

  it("auto, and rows a processor changes, draft one token per step", async () => {
    const auto = await runBatch(new Engine(tiny, { ...BASE, speculation: "auto", speculativeTokens: 3, verifyCost: 1.01 }), PROMPTS.slice(0, 1), GREEDY);
    expect(auto.steps.every((s) => s.drafts <= 1)).toBe(true);
    expectSameTokens(auto.outs[0]!, plain[0]!);
    const penalized: GenerationParams = { ...GREEDY, presencePenalty: 0.5 };
    const want = (await runBatch(new Engine(tiny, { ...BASE, speculation: "off" }), PROMPTS.slice(0, 1), penalized)).outs[0]!;
    const got = await runBatch(new Engine(tiny, { ...BASE, speculation: "on", speculativeTokens: 3 }), PROMPTS.slice(0, 1), penalized);
    expect(got.steps.every((s) => s.drafts === (s.remaining >= 2 ? 1 : 0))).toBe(true);
    expectSameTokens(got.outs[0]!, want);
  });

  it("seeded sampling with chained drafts is reproducible", async () => {
    const a = await runBatch(new Engine(tiny, { ...BASE, speculation: "on", speculativeTokens: 2 }), PROMPTS.slice(0, 2), SEEDED);
    const b = await runBatch(new Engine(tiny, { ...BASE, speculation: "on", speculativeTokens: 2 }), PROMPTS.slice(0, 2), SEEDED);
    a.outs.forEach((out, i) => expectSameTokens(out, b.outs[i]!));
    expect(a.steps.some((s) => s.drafts === 2)).toBe(true);
    expect(a.outs.every((o) => o.length === SEEDED.maxTokens && o.every((t) => Number.isInteger(t.id) && t.logprob <= 0))).toBe(true);
  });

  it("a sampled sequence draws its drafts into the same buffers at every step; a snapshot copies the first", async () => {
    const engine = new Engine(tiny, { ...BASE, speculation: "on", speculativeTokens: 3 });
    const seq = engine.newSequence("s", PROMPTS[0]!, SEEDED);
    await engine.prefill([seq]);
    await engine.step([seq]);
    const buffers = [seq.draft!.probs!, ...seq.chainedDrafts.map((d) => d.probs!)];
    expect(buffers).toHaveLength(3);
    for (let i = 0; i < 3; i++) {
      await engine.step([seq]);
      expect([seq.draft!.probs!, ...seq.chainedDrafts.map((d) => d.probs!)]).toEqual(buffers);
      buffers.forEach((b, j) => expect(j === 0 ? seq.draft!.probs : seq.chainedDrafts[j - 1]!.probs).toBe(b));
    }
    const snap = seq.snapshot();
    expect(snap.draft!.probs).not.toBe(buffers[0]);
    expect(snap.draft!.probs).toEqual(buffers[0]);
    engine.release(seq);
  });

  it("a sequence restored from its snapshot mid-chain continues with the plain tokens", async () => {
    const engine = new Engine(tiny, { ...BASE, speculation: "on", speculativeTokens: 3 });
    const seq = engine.newSequence("s", PROMPTS[0]!, GREEDY);
    await engine.prefill([seq]);
    for (let i = 0; i < 4; i++) await engine.step([seq]);
    expect(seq.chainedDrafts.length).toBe(2);
    // The snapshot carries the first draft only; the restored sequence verifies it, then chains again.
    const restored = engine.restore(seq.snapshot(), seq.blockTable.splice(0));
    expect(restored.chainedDrafts).toEqual([]);
    while (!restored.finished) await engine.step([restored]);
    expectSameTokens(restored.output, plain[0]!);
  });

  it("on the bundled model the second draft of a chain lands about as often as the first", async () => {
    const brown = DeepseekModel.load(path.join(ROOT, "models/moela-v3-brown"));
    try {
      const prompts = [[0, 2021, 2888, 263, 1541, 292], PROMPTS[0]!];
      const params: GenerationParams = { ...GREEDY, maxTokens: 64 };
      const off = await runBatch(new Engine(brown, { ...BASE, speculation: "off" }), prompts, params);
      const on = await runBatch(new Engine(brown, { ...BASE, speculation: "on", speculativeTokens: 2 }), prompts, params);
      on.outs.forEach((out, i) => expectSameTokens(out, off.outs[i]!));
      const chained = on.steps.filter((s) => s.drafts === 2 && s.remaining >= 3);
      const firstLanded = chained.filter((s) => s.emitted >= 2).length;
      const secondLanded = chained.filter((s) => s.emitted === 3).length;
      expect(chained.length).toBeGreaterThan(20);
      // Here 39 of 50 first drafts land, and 33 of those 39 second drafts. Fed the main model's row instead of the
      // MTP layer's own, the second drafts landed 27 times in 44.
      expect(firstLanded / chained.length).toBeGreaterThan(0.6);
      expect(secondLanded / firstLanded).toBeGreaterThan(0.75);
    } finally {
      await brown.close();
    }
  });
});
