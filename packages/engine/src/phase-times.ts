/**
 * Where a forward pass spends its time, summed over calls: the first half of the cluster's time
 * breakdown (the dispatcher and the expert-hosts add theirs; scripts/bench/cluster.ts puts them side
 * by side). Phases are wall-clock time between the model's own awaits, so when two micro-batches
 * interleave, one's `routed_wait` contains work the other did meanwhile: that is the overlap.
 */
export const FORWARD_PHASES = [
  /** Input norm, MLA (projections, RoPE, latent write, attention, output projection), residual add. */
  "attention",
  /** Router logits, scores, group-limited top-k. */
  "gate",
  /** The shared expert, run while routed work is in flight on other processes (in one process: in routed_experts). */
  "shared_expert",
  /** Routed experts computed in this process, with the shared expert in the same group of products. */
  "routed_experts",
  /** Waiting for routed experts on other processes after everything local was done (dispatch, wire, remote compute, combine). */
  "routed_wait",
  /** The dense MLP of the first layers. */
  "dense_mlp",
  /** Final norm and the output head (main or MTP). */
  "lm_head",
] as const;

export type ForwardPhase = (typeof FORWARD_PHASES)[number];

export class PhaseTimes {
  /** Seconds per phase since construction or the last drain(). */
  private readonly ms = new Float64Array(FORWARD_PHASES.length);
  private readonly index = new Map<ForwardPhase, number>(FORWARD_PHASES.map((p, i) => [p, i]));

  /** Add the time since `since` (a performance.now() reading) to `phase`; returns now. */
  since(phase: ForwardPhase, since: number): number {
    const now = performance.now();
    this.ms[this.index.get(phase)!]! += now - since;
    return now;
  }

  /** Add the seconds per phase so far to a counter labelled by phase (a service's metric), and start again from zero. */
  drainInto(counter: { inc(labels: { phase: string }, value: number): void }): void {
    for (const [phase, seconds] of Object.entries(this.drain())) if (seconds > 0) counter.inc({ phase }, seconds);
  }

  /** Seconds per phase so far, and start again from zero. */
  drain(): Record<ForwardPhase, number> {
    const out = {} as Record<ForwardPhase, number>;
    FORWARD_PHASES.forEach((p, i) => {
      out[p] = this.ms[i]! / 1000;
      this.ms[i] = 0;
    });
    return out;
  }
}
