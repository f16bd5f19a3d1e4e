/**
 * Turns the tokens a generation produces, in order, into what its caller is sent: each event's tokens (ids
 * and logprobs), the text they add (detokenized incrementally, held back while it may be the start of a
 * stop string or an unfinished character), whether a stop string ended it, and the time-to-first-token and
 * inter-token metrics. One assembler lives as long as the request: a migrated attempt (pipeline.ts) goes on
 * with the same decoder and stop-string matcher, so text is cut exactly as it would have been.
 *
 * min_tokens: stop strings are looked for only once the output is longer than min_tokens (vLLM's rule), so
 * text before then is never cut.
 */
import type { MetricsOf } from "@moela/metrics";
import type { GeneratedToken, SamplingRequest } from "@moela/openai-api";
import { IncrementalDecoder, StopStringMatcher, type Tokenizer } from "@moela/tokenizer";

/** The part of a generation's input the assembler reads. */
export interface AssemblerInput {
  readonly promptTokenIds: readonly number[];
  readonly sampling: Pick<SamplingRequest, "minTokens">;
  readonly stop: readonly string[];
  readonly skipSpecialTokens: boolean;
  /** performance.now() at the request's arrival (time to first token). */
  readonly arrivedAt: number;
}

/** The tokens and text of one event, as they are added. */
export interface TokenBatch {
  readonly tokens: GeneratedToken[];
  text: string;
  /** A stop string completed: the token that completed it is the batch's last. */
  stopped: boolean;
}

export class TokenAssembler {
  /** Tokens sent to the caller so far (the next completion index). */
  sent = 0;
  /** Their ids: a migrated attempt's prompt is the request's prompt plus these. */
  readonly ids: number[] = [];
  private readonly decoder: IncrementalDecoder | null;
  private readonly matcher: StopStringMatcher | null;
  private readonly minTokens: number;
  private lastTokenAt = 0;

  /** `tokenizer` null: no detokenization (text stays ""), as for a checkpoint without a tokenizer. */
  constructor(
    tokenizer: Tokenizer | null,
    private readonly input: AssemblerInput,
    private readonly metrics: MetricsOf<"router">,
    private readonly model: string,
  ) {
    this.decoder =
      tokenizer === null ? null : new IncrementalDecoder(tokenizer, { skipSpecialTokens: input.skipSpecialTokens, promptIds: input.promptTokenIds });
    this.matcher = input.stop.length > 0 ? new StopStringMatcher(input.stop) : null;
    this.minTokens = input.sampling.minTokens ?? 0;
  }

  /** An empty batch for the next event. */
  batch(): TokenBatch {
    return { tokens: [], text: "", stopped: false };
  }

  /** Adds the next token to `b`; false once it completed a stop string (the tokens after it are not sent). */
  add(b: TokenBatch, token: GeneratedToken): boolean {
    this.sent++;
    this.ids.push(token.id);
    b.tokens.push(token);
    const delta = this.decoder?.push(token.id) ?? "";
    // As vLLM: stop strings are looked for only once the output is longer than min_tokens.
    if (this.matcher === null || this.sent <= this.minTokens) {
      b.text += delta;
      return true;
    }
    const m = this.matcher.push(delta);
    b.text += m.text;
    if (m.stopped) b.stopped = true;
    return !m.stopped;
  }

  /** Records when `b`'s tokens arrived (time to first token, inter-token latency, generated tokens). */
  observe(b: TokenBatch): void {
    const n = b.tokens.length;
    if (n === 0) return;
    const { metrics, model } = this;
    const now = performance.now();
    if (this.lastTokenAt === 0) metrics.routerTimeToFirstToken.observe({ model }, (now - this.input.arrivedAt) / 1000);
    else for (let i = 0; i < n; i++) metrics.routerInterTokenLatency.observe({ model }, (now - this.lastTokenAt) / 1000 / n);
    this.lastTokenAt = now;
    metrics.routerGenerationTokens.inc({ model }, n);
  }

  /**
   * The generation ended without a stop string: adds to `b` what the decoder and the matcher held back for
   * a continuation that will not come.
   */
  flush(b: TokenBatch): void {
    let tail = this.decoder?.flush() ?? "";
    if (this.matcher !== null) {
      const m = this.matcher.push(tail);
      tail = m.text + (m.stopped ? "" : this.matcher.flush());
    }
    b.text += tail;
  }
}
