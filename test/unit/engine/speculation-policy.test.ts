import { describe, expect, it } from "vitest";
import {
  draftingPays,
  initialDraftingState,
  nextDraftingState,
  SPECULATION_POLICY,
  VERIFY_COST_PRIOR,
  MIN_VERIFY_COST,
  VerifyCostEstimator,
  type DraftingState,
  type StepOutcome,
  type SpeculationContext,
} from "@moela/engine";

const ACCEPTED: StepOutcome = { verified: true, accepted: true };
const REJECTED: StepOutcome = { verified: true, accepted: false };
const PLAIN: StepOutcome = { verified: false, accepted: false };

/** A sequence whose drafts are accepted per `accept(i)` (i counts its drafts), for `steps` steps. */
function simulate(steps: number, accept: (draft: number, step: number) => boolean, ctx: SpeculationContext, from = initialDraftingState()) {
  let s = from;
  const drafts: number[] = []; // step indices that verified a draft
  const states: DraftingState[] = [];
  for (let step = 0; step < steps; step++) {
    const outcome = s.drafting ? (accept(drafts.length, step) ? ACCEPTED : REJECTED) : PLAIN;
    if (s.drafting) drafts.push(step);
    s = nextDraftingState(s, outcome, ctx);
    states.push(s);
  }
  return { drafts, states, last: s };
}

/** A measured c, and no word on the engine's acceptance. */
const measured = (costRatio: number, engineRate: number | null = null): SpeculationContext => ({ costRatio, costSource: "measured", engineRate });

describe("draftingPays: 1 + acceptance > c", () => {
  it.each([
    [0.9, 1.1, true],
    [0.15, 1.1, true],
    [0.05, 1.1, false],
    [0.74, 1.74, false],
    [0.75, 1.74, true],
    [1, 2, false],
    [0, 0.9, true],
  ])("rate %d at c %d: %s", (rate, c, pays) => {
    expect(draftingPays(rate, c)).toBe(pays);
  });
});

describe("nextDraftingState", () => {
  it.each([
    ["every draft accepted, c 1.2", () => true, 1.2, 200],
    ["90 % accepted, c 1.2", (i: number) => i % 10 !== 9, 1.2, 200],
    ["80 % accepted, c 1.5", (i: number) => i % 5 !== 4, 1.5, 200],
    ["every draft accepted, c 1.9", () => true, 1.9, 200],
  ])("high acceptance keeps drafting at every step (%s)", (_name, accept, c, steps) => {
    const { drafts, last } = simulate(steps, accept, measured(c));
    expect(drafts).toHaveLength(steps);
    expect(last.drafting).toBe(true);
  });

  it.each([
    // c, drafts before the pause: the rate falls from 1 by a quarter per rejection (0.75^k) until 1 + rate <= c
    [1.1, 9],
    [1.2, 6],
    [1.5, 3],
    [1.74, 2],
    [2.3, 1],
  ])("zero acceptance stops drafting within a few drafts (c %d: %d)", (c, n) => {
    const { drafts, states } = simulate(n + 3, () => false, measured(c));
    expect(drafts).toEqual(Array.from({ length: n }, (_, i) => i));
    expect(states[n - 1]!.drafting).toBe(false);
  });

  it("a paused sequence probes after 16 plain steps, then waits twice as long after each failed probe, up to 256", () => {
    const c = measured(1.2);
    const { drafts } = simulate(3000, () => false, c);
    // 6 drafts (steps 0-5), then probes; each probe is one draft.
    const waits = drafts.slice(6).map((d, i) => d - drafts[5 + i]! - 1);
    expect(waits.slice(0, 7)).toEqual([16, 32, 64, 128, 256, 256, 256]);
    expect(Math.max(...waits)).toBe(SPECULATION_POLICY.maxProbeInterval);
  });

  it("an accepted probe resumes drafting, and the wait after the next pause starts at 16 again", () => {
    const c = measured(1.2);
    // Rejected until step 200 (pause, probes at 16, 32, 64, 128 fail), accepted from then on.
    const { drafts, states } = simulate(400, (_i, step) => step >= 200, c);
    const firstAfter = drafts.find((d) => d >= 200)!;
    expect(firstAfter).toBeLessThan(200 + 256 + 1);
    // From the successful probe on it drafts every step.
    expect(drafts.filter((d) => d >= firstAfter)).toHaveLength(400 - firstAfter);
    expect(states[firstAfter]!).toMatchObject({ drafting: true, probing: false, probeAfter: 16 });
  });

  it("a recovered rate resumes drafting within one probe, and a failed probe leaves the sequence paused", () => {
    const c = measured(1.5);
    let s = simulate(3, () => false, c).last; // paused after 3 rejected drafts, waiting for its first probe
    expect(s).toMatchObject({ drafting: false, plainSteps: 0, probeAfter: 16 });
    for (let i = 0; i < 16 && !s.drafting; i++) s = nextDraftingState(s, PLAIN, c);
    expect(s).toMatchObject({ drafting: true, probing: true, rate: 0.5 }); // probes start at the break-even c - 1
    expect(nextDraftingState(s, ACCEPTED, c)).toMatchObject({ drafting: true, probing: false });
    expect(nextDraftingState(s, REJECTED, c)).toMatchObject({ drafting: false, probing: false, probeAfter: 32 });
  });

  it("with c >= 2 (no rate can pay) a paused sequence never probes; it retires after 256 steps, at once when c is fixed", () => {
    const { drafts, states } = simulate(400, () => true, measured(2.3));
    expect(drafts).toEqual([0]); // even accepted drafts do not pay
    expect(states.findIndex((s) => s.retired)).toBe(SPECULATION_POLICY.maxProbeInterval);
    const fixed = simulate(3, () => true, { costRatio: VERIFY_COST_PRIOR, costSource: "fixed", engineRate: null });
    expect(fixed.drafts).toEqual([0]);
    expect(fixed.states[0]!.retired).toBe(true);
  });

  it("a paused sequence whose measured c falls below 2 probes at once if it has waited long enough", () => {
    let s = simulate(1, () => false, measured(2.3)).last;
    for (let i = 0; i < 40; i++) s = nextDraftingState(s, PLAIN, measured(2.3));
    expect(s).toMatchObject({ drafting: false, retired: false, plainSteps: 40 });
    expect(nextDraftingState(s, PLAIN, measured(1.2))).toMatchObject({ drafting: true, probing: true });
  });

  it("a paused sequence does not probe while the engine's drafts at large do not pay; it probes once they do", () => {
    // c 1.2: the engine's acceptance must exceed 0.2 for a probe.
    const { drafts, states } = simulate(300, () => false, measured(1.2, 0.1));
    expect(drafts).toEqual([0, 1, 2, 3, 4, 5]);
    expect(states.findIndex((s) => s.retired)).toBe(5 + SPECULATION_POLICY.maxProbeInterval);
    let s = simulate(6 + 40, () => false, measured(1.2, 0.1)).last;
    expect(s).toMatchObject({ drafting: false, retired: false, plainSteps: 40 });
    s = nextDraftingState(s, PLAIN, measured(1.2, 0.6));
    expect(s).toMatchObject({ drafting: true, probing: true });
  });

  it("on the engine's prior c (not yet measured) a paused sequence probes with trials of 4 drafts: after 16, 32, 64, ... plain steps", () => {
    // The engine's drafts land often enough to pay at the cheapest plausible verify: trials measure c.
    const prior: SpeculationContext = { costRatio: VERIFY_COST_PRIOR, costSource: "prior", engineRate: 0.9 };
    // Even perfect drafts do not pay at c = 2; trials are there to time verify steps.
    expect(simulate(130, () => true, prior).drafts).toEqual([0, 17, 18, 19, 20, 53, 54, 55, 56, 121, 122, 123, 124]);
    expect(simulate(130, () => false, prior).drafts).toEqual([0, 17, 18, 19, 20, 53, 54, 55, 56, 121, 122, 123, 124]);
    // Once the engine has measured c, the same paused sequence is judged by the usual rules.
    const paused = simulate(30, () => true, prior).last;
    expect(paused).toMatchObject({ drafting: false, retired: false, trialLeft: 0, plainSteps: 9, probeAfter: 32 });
    let s = paused;
    for (let i = 0; i < 23; i++) s = nextDraftingState(s, PLAIN, measured(1.3, 0.9));
    expect(s).toMatchObject({ drafting: true, probing: true, trialLeft: 0 });
    expect(nextDraftingState(s, ACCEPTED, measured(1.3, 0.9))).toMatchObject({ drafting: true, probing: false, probeAfter: 16 });
  });

  it("on the prior, no trial where the engine's drafts could not pay even at the cheapest verify: it retires after 256 steps", () => {
    expect(MIN_VERIFY_COST).toBeGreaterThan(1);
    const hopeless: SpeculationContext = { costRatio: VERIFY_COST_PRIOR, costSource: "prior", engineRate: 0.1 };
    const r = simulate(400, () => false, hopeless);
    expect(r.drafts).toEqual([0]);
    expect(r.last).toMatchObject({ drafting: false, retired: true });
    // Unknown engine acceptance (no draft judged yet) still allows the trial.
    expect(simulate(21, () => false, { ...hopeless, engineRate: null }).drafts).toEqual([0, 17, 18, 19, 20]);
  });

  it("a retired sequence stays retired", () => {
    const r = simulate(2, () => false, { costRatio: 3, costSource: "fixed", engineRate: null }).last;
    expect(r.retired).toBe(true);
    expect(nextDraftingState(r, PLAIN, measured(1))).toBe(r);
  });
});

describe("the policy and the estimator in the engine's order", () => {
  it("a trial ends on a measured c: the engine times a step after its decisions, and not the probe's own step", () => {
    // A single greedy sequence whose drafts all land; a plain step costs 1 ms, a verify step 1.5 ms, so c = 1.5
    // and drafting pays. As Engine.step does: decide from the context, then time the step (unless it computed
    // owed MTP rows: the step where a probe starts).
    // One untimed step stands for the engine's warm-up, which covers the verify of the prefill's draft.
    const e = new VerifyCostEstimator({ warmupSteps: 1 });
    let s = initialDraftingState(); // the prefill made a draft
    const drafts: number[] = [];
    for (let step = 1; step <= 60; step++) {
      const verified = s.drafting; // a draft was made for this step
      if (verified) drafts.push(step);
      const ctx: SpeculationContext = { costRatio: e.ratio(1), costSource: e.measured(1) ? "measured" : "prior", engineRate: 1 };
      const next = nextDraftingState(s, verified ? ACCEPTED : PLAIN, ctx);
      const owedRows = !s.drafting && next.drafting; // a paused sequence resuming computes the MTP rows it owes
      if (!owedRows) e.observe(verified ? 0.0015 : 0.001, verified ? 0 : 1, verified ? 1 : 0);
      s = next;
    }
    expect(e.measured(1)).toBe(true);
    expect(e.ratio(1)).toBeCloseTo(1.5, 6);
    // the prefill's draft, 16 plain steps, the trial's 4 drafts, and from then on (c measured) a draft every step
    expect(drafts.slice(0, 7)).toEqual([1, 18, 19, 20, 21, 22, 23]);
    expect(drafts).toHaveLength(60 - 17 + 1);
    expect(s).toMatchObject({ drafting: true, retired: false });
  });
});

describe("VerifyCostEstimator", () => {
  it("answers the prior until it has seen both kinds of steps", () => {
    const e = new VerifyCostEstimator({ warmupSteps: 0 });
    expect([e.ratio(1), e.measured(1)]).toEqual([VERIFY_COST_PRIOR, false]);
    for (let i = 0; i < 10; i++) e.observe(0.01, 1, 0);
    expect([e.ratio(1), e.measured(1)]).toEqual([VERIFY_COST_PRIOR, false]);
    for (let i = 0; i < 3; i++) e.observe(0.015, 0, 1);
    expect(e.measured(1)).toBe(true);
    expect(e.ratio(1)).toBeCloseTo(1.5, 6);
  });

  it("splits mixed steps between plain and verifying sequences", () => {
    const e = new VerifyCostEstimator({ warmupSteps: 0 });
    // Per sequence: plain 1 ms, verify 1.4 ms; batches of 4-7 sequences in every mix.
    for (let i = 0; i < 2000; i++) {
      const n = 4 + (i % 4);
      const v = i % (n + 1);
      e.observe((n - v) * 0.001 + v * 0.0014, n - v, v);
    }
    expect(e.ratio(5)).toBeCloseTo(1.4, 2);
    expect(e.ratio(1)).toBe(VERIFY_COST_PRIOR); // another batch-size class
  });

  it("follows a change of cost", () => {
    const e = new VerifyCostEstimator({ warmupSteps: 0 });
    for (let i = 0; i < 50; i++) {
      e.observe(0.01, 1, 0);
      e.observe(0.012, 0, 1);
    }
    expect(e.ratio(1)).toBeCloseTo(1.2, 3);
    for (let i = 0; i < 100; i++) e.observe(0.025, 0, 1);
    expect(e.ratio(1)).toBeCloseTo(2.5, 1);
    for (let i = 0; i < 10; i++) e.observe(0.012, 0, 1);
    expect(e.ratio(1)).toBeCloseTo(1.2, 1); // down quickly
  });

  it("follows the fast side of noisy timings, and skips the engine's first steps", () => {
    const e = new VerifyCostEstimator();
    // The JIT's first steps: very slow verify steps, not timed at all.
    for (let i = 0; i < 32; i++) e.observe(0.1, 0, 1);
    // Then plain 1 ms and verify 1.5 ms (c = 1.5), one step in three slowed by 3 ms (GC, another process):
    // an even EWMA would say 2 and 2.5 ms (c = 1.25); following the fast side, about 1.23 and 1.73 ms.
    for (let i = 0; i < 400; i++) {
      const hiccup = i % 3 === 0 ? 0.003 : 0;
      if (i % 2 === 0) e.observe(0.001 + hiccup, 1, 0);
      else e.observe(0.0015 + hiccup, 0, 1);
    }
    expect(e.ratio(1)).toBeGreaterThan(1.3);
    expect(e.ratio(1)).toBeLessThan(1.7);
  });

  it("one long pause does not move the estimate for good", () => {
    // Plain 1 ms, verify 1.9 ms (c = 1.9), then a 10 ms plain step (a GC pause) and only verify steps after it, as
    // when every sequence drafts: nothing would bring an inflated plain estimate back down.
    const e = new VerifyCostEstimator({ warmupSteps: 0 });
    for (let i = 0; i < 20; i++) {
      e.observe(0.001, 1, 0);
      e.observe(0.0019, 0, 1);
    }
    expect(e.ratio(1)).toBeCloseTo(1.9, 6);
    e.observe(0.01, 1, 0);
    for (let i = 0; i < 20; i++) e.observe(0.0019, 0, 1);
    // Its excess counts up to a quarter of the 1 ms predicted, at the slow side's weight: 1.25% on the plain estimate.
    expect(e.ratio(1)).toBeCloseTo(1.9 / 1.0125, 6);
    // Unbounded it would have counted 9 ms: plain 1.45 ms and c 1.31, at which a sequence accepting half of its
    // drafts (1.5 tokens a verify step) would go on drafting at 0.79x the speed of plain steps.
    expect(e.ratio(1)).toBeGreaterThan(1.85);
  });

  it("ignores empty and unmeasurable steps", () => {
    const e = new VerifyCostEstimator({ warmupSteps: 0 });
    e.observe(0.01, 0, 0);
    e.observe(0, 1, 0);
    e.observe(Number.NaN, 0, 1);
    expect(e.ratio(1)).toBe(VERIFY_COST_PRIOR);
  });
});
