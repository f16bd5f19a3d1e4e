/**
 * When drafting with the MTP head pays (SpeculationMode "auto").
 *
 * A step that verifies a draft runs the main model on two rows instead of one (plus the MTP block for the
 * next draft) and yields 1 + a tokens on average, `a` being the chance the draft is accepted. If such a
 * verify step costs `c` plain steps, drafting pays while 1 + a > c. `a` is tracked per sequence (an EWMA of
 * its drafts' outcomes: it depends on the text); `c` per engine (VerifyCostEstimator: it depends on the
 * hardware, the kernels and the batch). Measured with the native CPU kernels on tiny-v3 and the large-v3
 * preset, c is 1.6 to 1.9: drafting pays only above 60-90 % acceptance; where steps are memory-bound (large
 * models on GPUs) c is close to 1 and nearly any acceptance pays.
 *
 * A sequence whose drafts stop paying pauses (plain steps), and re-checks by probing: after
 * `firstProbeAfter` plain steps it drafts once more, starting its rate at the break-even so the probe's
 * own outcome decides; each failed probe doubles the wait, up to `maxProbeInterval`.
 * A probe is not free: the engine computes the MTP rows the sequence owes for its pause first, about an
 * MTP block's work per paused step (a quarter of a plain step on tiny-v3's 4 layers, under 2 % on
 * DeepSeek-V3's 61). So a paused sequence probes only where drafting can pay at all: c < 2 (the most a
 * verify step yields) and, when known, the engine's acceptance over all its recent drafts pays at c (a
 * sequence's slump may pass where drafts usually land; a model whose drafts never land is not re-checked).
 * While it cannot probe it waits; after `maxProbeInterval` steps (at once when c is a constant that cannot
 * pay) it retires: it never drafts again, and the engine stops keeping what a probe would need.
 *
 * Until an engine has timed both kinds of steps, c is only its prior (2, at which nothing pays): a sequence
 * deciding on the prior pauses after its first draft like any other, but its probes are trials of
 * `trialDrafts` drafts, which the prior always allows. The pauses time plain steps, the trials verify
 * steps; once c is a measurement the rules above apply. Trials wait for the first probe because an
 * engine's first steps are slow while the JIT compiles, and the estimator does not time them; it also
 * follows the fast side of its timings, since interference only ever adds time.
 *
 * nextDraftingState is pure: the same drafts and the same context give the same decisions.
 */

export type SpeculationMode = "auto" | "on" | "off";

export const SPECULATION_MODES: readonly SpeculationMode[] = ["auto", "on", "off"];

export function isSpeculationMode(v: unknown): v is SpeculationMode {
  return typeof v === "string" && (SPECULATION_MODES as readonly string[]).includes(v);
}

/** The most tokens one verify step can yield: one draft token plus the main model's own. */
export const MAX_TOKENS_PER_VERIFY = 2;

export interface SpeculationPolicyParams {
  /** Weight of the newest draft's outcome in a sequence's acceptance EWMA. */
  readonly rateWeight: number;
  /** A new sequence's acceptance rate before its first draft is judged. */
  readonly initialRate: number;
  /** Plain steps a paused sequence waits before its first probe. */
  readonly firstProbeAfter: number;
  /** The longest wait between probes; also how long a sequence waits for c to fall below 2 before it retires. */
  readonly maxProbeInterval: number;
  /** Drafts a trial makes before they are judged (on the engine's prior c, not yet measured). */
  readonly trialDrafts: number;
}

export const SPECULATION_POLICY: SpeculationPolicyParams = {
  // About the last 7 drafts (2 / w - 1): zero acceptance pauses a sequence after 2 to 6 drafts for c
  // between 1.7 and 1.2, and one unlucky rejection among accepted drafts does not.
  rateWeight: 0.25,
  // The benefit of the doubt: a sequence drafts until its own drafts show they do not pay, so one whose
  // drafts all land never pauses while c < 2.
  initialRate: 1,
  // A probe costs a verify step (besides the owed MTP rows, which any resumption costs): one in 17 steps
  // at most, and a sequence whose drafts recover resumes soon.
  firstProbeAfter: 16,
  // 16, 32, ..., 256: a sequence whose probes keep failing probes 5 times in its first 500 steps, then
  // every 256; a paused sequence keeps at most this many hidden rows for its next probe.
  maxProbeInterval: 256,
  // The estimator wants 3 steps of each kind, and the engine times a step after the step's decisions: the
  // k-th draft's decision sees k - 1 timed verify steps (the probe's own step, which computes the owed MTP
  // rows, is not timed), so with 3 drafts the trial's last decision was still on the prior and paused
  // whatever the timings said. With 4 it sees 3. A trial costs at most 3 verify steps more than pausing at once.
  trialDrafts: 4,
};

/**
 * The cost ratio c assumed before an engine has measured its own, and always for sampled sequences (whose
 * tokens depend on which steps verify a draft, so a measured, machine-dependent c would make a seeded
 * request sample differently from run to run and between the single process and the cluster). At 2 no
 * acceptance rate pays: a sampled sequence in "auto" verifies only the draft its prefill made, so "auto"
 * never makes it slower than "off"; "on" is there for hardware known to verify cheaply.
 */
export const VERIFY_COST_PRIOR = 2;

/**
 * The cheapest a verify step plausibly is, in plain steps: it runs two positions through the main model and one
 * through the MTP block (measured 1.6-1.9 on the CPU kernels). Before c is measured, a paused sequence probes
 * only if the engine's acceptance would pay even at this cost.
 */
export const MIN_VERIFY_COST = 1.2;

/** One sequence's drafting state (auto speculation). */
export interface DraftingState {
  /** Verify a draft at the next step (otherwise the next step is plain). */
  readonly drafting: boolean;
  /** EWMA of this sequence's draft outcomes (1 accepted, 0 rejected). */
  readonly rate: number;
  /** Drafts still to make before they are judged, while c is the engine's prior (a trial). */
  readonly trialLeft: number;
  /** Plain steps since drafting paused, or since the last probe. */
  readonly plainSteps: number;
  /** Plain steps before the next probe. */
  readonly probeAfter: number;
  /** The draft being verified is a probe's: its outcome decides whether drafting resumes. */
  readonly probing: boolean;
  /** Drafting stopped for good. */
  readonly retired: boolean;
}

/** What a sequence's last step did. */
export interface StepOutcome {
  /** It verified a draft. */
  readonly verified: boolean;
  /** The draft was accepted (false when none was verified). */
  readonly accepted: boolean;
}

/** What a sequence's decision knows beyond its own drafts. */
export interface SpeculationContext {
  /** c: what a verify step costs, in plain steps. */
  readonly costRatio: number;
  /**
   * Where c comes from: "fixed", a constant (when it cannot pay, a paused sequence retires at once);
   * "measured", the engine's timings; "prior", the engine's guess until it has timed both kinds of steps.
   */
  readonly costSource: "fixed" | "measured" | "prior";
  /** The engine's acceptance over all its recent drafts (null: none yet, or not to be used). */
  readonly engineRate: number | null;
}

export function initialDraftingState(p: SpeculationPolicyParams = SPECULATION_POLICY): DraftingState {
  return { drafting: true, rate: p.initialRate, trialLeft: 0, plainSteps: 0, probeAfter: p.firstProbeAfter, probing: false, retired: false };
}

/** Drafting pays when a verify step's expected yield beats its cost: 1 + rate > c. */
export function draftingPays(rate: number, costRatio: number): boolean {
  return 1 + rate > costRatio;
}

/** The state after a step with `step`'s outcome; its `drafting` says whether the next step verifies a draft. */
export function nextDraftingState(
  s: DraftingState,
  step: StepOutcome,
  ctx: SpeculationContext,
  p: SpeculationPolicyParams = SPECULATION_POLICY,
): DraftingState {
  if (s.retired) return s;
  const c = ctx.costRatio;
  const hopeless = c >= MAX_TOKENS_PER_VERIFY;
  const onPrior = ctx.costSource === "prior";
  if (step.verified) {
    const rate = s.rate + p.rateWeight * ((step.accepted ? 1 : 0) - s.rate);
    const trialLeft = Math.max(0, s.trialLeft - 1);
    if (onPrior && trialLeft > 0) return { ...s, drafting: true, rate, trialLeft }; // a trial goes on (a probe's stays one)
    if (draftingPays(rate, c)) {
      // A probe that paid resets the wait for the next pause.
      return { ...s, drafting: true, rate, trialLeft, plainSteps: 0, probing: false, probeAfter: s.probing ? p.firstProbeAfter : s.probeAfter };
    }
    if (hopeless && ctx.costSource === "fixed") return retired(s, rate);
    // A probe that did not pay doubles the wait for the next.
    const probeAfter = s.probing ? Math.min(2 * s.probeAfter, p.maxProbeInterval) : s.probeAfter;
    return { ...s, drafting: false, rate, trialLeft: 0, plainSteps: 0, probing: false, probeAfter };
  }
  if (s.drafting) return s; // had no draft to verify (none was made): nothing learnt
  const plainSteps = s.plainSteps + 1;
  // On the prior a probe is a trial, there to measure c; otherwise it must be able to pay.
  // On the prior a probe is a trial that measures c, worth it unless the engine's drafts so far could not pay
  // even at the cheapest verify (a model whose MTP head is never right never pays for the trial).
  const worthProbing = onPrior
    ? ctx.engineRate === null || draftingPays(ctx.engineRate, MIN_VERIFY_COST)
    : !hopeless && (ctx.engineRate === null || draftingPays(ctx.engineRate, c));
  if (!worthProbing) {
    // A probe could only cost; wait for c or the engine's acceptance to change.
    return (hopeless && ctx.costSource === "fixed") || plainSteps >= p.maxProbeInterval ? retired(s, s.rate) : { ...s, plainSteps };
  }
  if (plainSteps >= s.probeAfter) {
    // Start at the break-even: an accepted probe draft lifts the rate above it, a rejected one drops it below.
    const rate = Math.min(1, Math.max(0, c - 1));
    return { ...s, drafting: true, probing: true, plainSteps: 0, rate, trialLeft: onPrior ? p.trialDrafts : 0 };
  }
  return { ...s, plainSteps };
}

function retired(s: DraftingState, rate: number): DraftingState {
  return { ...s, drafting: false, rate, trialLeft: 0, probing: false, retired: true };
}

export interface VerifyCostEstimatorOptions {
  /** c until a batch-size class has been timed (default VERIFY_COST_PRIOR). */
  readonly prior?: number;
  /** Sequence-steps of each kind a class needs before its ratio counts (default 3). */
  readonly minEvidence?: number;
  /**
   * The engine's first steps, not timed: the JIT is still compiling (default 32). With 8, the plain steps timed
   * just after them were still warming up, so c came out up to a third low (1.15-1.25 on the bundled model in
   * one process, where a verify step costs about 1.8) and kept drifting while one kind of step was not run.
   */
  readonly warmupSteps?: number;
}

/**
 * The engine's cost ratio c: seconds of a verify step over a plain step, per sequence, from the engine's
 * own step timings. A step's seconds are split between its plain and verifying sequences by normalised LMS
 * (for a step of one kind, an EWMA of its seconds per sequence). The update is lopsided, quick down and
 * slow up, and a slow step's excess is bounded, so the estimates follow the fast side of the timings:
 * interference (GC, the JIT, other processes) only ever adds time. Kept per batch-size class (powers of
 * two), since c grows with the batch as the kernels turn compute-bound; until a class has seen both kinds
 * it answers the prior.
 */
export class VerifyCostEstimator {
  readonly prior: number;
  private readonly minEvidence: number;
  private warmupLeft: number;
  private readonly classes: { plain: number; verify: number; plainEvidence: number; verifyEvidence: number }[] = [];

  constructor(o: VerifyCostEstimatorOptions = {}) {
    this.prior = o.prior ?? VERIFY_COST_PRIOR;
    this.minEvidence = o.minEvidence ?? 3;
    this.warmupLeft = o.warmupSteps ?? 32;
  }

  /** One step: its seconds, how many sequences ran plain and how many verified a draft. */
  observe(seconds: number, plainSeqs: number, verifySeqs: number): void {
    const n = plainSeqs + verifySeqs;
    if (n === 0 || !(seconds > 0) || !Number.isFinite(seconds)) return;
    if (this.warmupLeft > 0) {
      this.warmupLeft--;
      return;
    }
    const k = sizeClass(n);
    let e = this.classes[k];
    if (e === undefined) {
      // Both unknown: seed them alike; the evidence counts below keep the ratio at the prior until each has been seen.
      e = { plain: seconds / n, verify: seconds / n, plainEvidence: 0, verifyEvidence: 0 };
      this.classes[k] = e;
    }
    if (e.plainEvidence === 0 && plainSeqs === n) e.plain = seconds / n;
    else if (e.verifyEvidence === 0 && verifySeqs === n) e.verify = seconds / n;
    else {
      // A step far slower than predicted was held up (a GC pause, another process), not given more work: its excess
      // counts up to SLOWER_EXCESS_LIMIT of the prediction. Unbounded, one 10 ms pause on a 1 ms plain step lifted
      // the plain estimate 45% and so cut c by a third; while sequences then draft, no plain step comes to undo it.
      const predicted = plainSeqs * e.plain + verifySeqs * e.verify;
      const err = Math.min(seconds - predicted, SLOWER_EXCESS_LIMIT * predicted);
      const w = (err < 0 ? WEIGHT_FASTER : WEIGHT_SLOWER) / (plainSeqs * plainSeqs + verifySeqs * verifySeqs);
      e.plain = Math.max(1e-9, e.plain + w * err * plainSeqs);
      e.verify = Math.max(1e-9, e.verify + w * err * verifySeqs);
    }
    e.plainEvidence += plainSeqs / n;
    e.verifyEvidence += verifySeqs / n;
  }

  /** c for a step of `batch` sequences (the prior until that batch-size class is measured). */
  ratio(batch: number): number {
    if (!this.measured(batch)) return this.prior;
    const e = this.classes[sizeClass(Math.max(1, batch))]!;
    return e.verify / e.plain;
  }

  /** Whether steps of `batch` sequences have been timed enough, of both kinds, for ratio() to be a measurement. */
  measured(batch: number): boolean {
    const e = this.classes[sizeClass(Math.max(1, batch))];
    return e !== undefined && e.plainEvidence >= this.minEvidence && e.verifyEvidence >= this.minEvidence;
  }
}

/** Update weights of VerifyCostEstimator: a step faster than predicted moves the estimate 30 %, a slower one 5 %. */
const WEIGHT_FASTER = 0.3;
const WEIGHT_SLOWER = 0.05;
/** The most a step's excess over its prediction counts, as a fraction of the prediction. */
const SLOWER_EXCESS_LIMIT = 0.25;

/** 1 -> 0, 2-3 -> 1, 4-7 -> 2, ... */
function sizeClass(n: number): number {
  return 31 - Math.clz32(n);
}
