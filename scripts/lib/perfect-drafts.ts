/**
 * An Engine whose drafts always land, for measuring what verifying costs (scripts/bench/speculation.ts
 * --perfect-drafts): it drafts as the engine does (the MTP layer, the head, the argmax), then proposes the token that
 * a plain greedy run emitted at that position instead of its own. Verifying keeps greedy decoding's tokens, so the
 * output is the plain run's, and every draft is accepted while the sequence follows that run.
 */
import { Engine, type DeepseekModel, type Draft, type EngineOptions, type Sequence } from "@moela/engine";

export class PerfectDraftEngine extends Engine {
  constructor(
    model: DeepseekModel,
    options: EngineOptions,
    /** Each sequence's plain greedy output (token ids), by sequence id. */
    private readonly plain: ReadonlyMap<string, readonly number[]>,
  ) {
    super(model, options);
  }

  protected override draftFrom(s: Sequence, mtpLogits: Float32Array, position: number): Draft | null {
    super.draftFrom(s, mtpLogits, position);
    // s.output ends with the pending token; the draft at `position` is the token `position + 1` after it.
    const token = this.plain.get(s.id)?.[s.output.length + position];
    return token === undefined ? null : { token, probs: null };
  }
}
