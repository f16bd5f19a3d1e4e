/**
 * Stop strings over a stream of text deltas, as the OpenAI API and vLLM apply them: generation ends at the first
 * stop string and the text before it is returned, the stop string itself excluded (unless includeStopString).
 * A delta can end with the start of a stop string ("Hello\n" with stop "\n\nUser:"), so the longest suffix that
 * could still grow into a stop string is held back until the next delta settles it.
 *
 * The first stop is the one that completes first (smallest end offset; on a tie, the one starting earliest), which
 * is what a character-by-character stream would find; so the result does not depend on how the text is cut into
 * deltas.
 */
import { InvalidArgumentError } from "@moela/core";

export interface StopMatch {
  /** Text that is now safe to emit (never contains any part of a matched stop string, unless included). */
  text: string;
  /** A stop string matched; the stream is over and later pushes return "". */
  stopped: boolean;
  /** The stop string that matched. */
  stop?: string;
}

export interface StopStringMatcherOptions {
  /** Keep the matched stop string at the end of the text (vLLM's include_stop_str_in_output). Default false. */
  includeStopString?: boolean;
}

export class StopStringMatcher {
  readonly stops: readonly string[];
  private readonly includeStopString: boolean;
  /** Text received but not yet emitted: a suffix that may be the start of a stop string. */
  private held = "";
  private done = false;

  constructor(stops: readonly string[], options: StopStringMatcherOptions = {}) {
    for (const [i, s] of stops.entries()) {
      if (typeof s !== "string" || s.length === 0) {
        throw new InvalidArgumentError(`stop[${i}] must be a non-empty string`);
      }
    }
    this.stops = [...new Set(stops)];
    this.includeStopString = options.includeStopString ?? false;
  }

  get stopped(): boolean {
    return this.done;
  }

  /** Feeds one delta; returns what may be emitted now and whether a stop string ended the stream. */
  push(delta: string): StopMatch {
    if (this.done) return { text: "", stopped: true };
    const buffer = this.held + delta;

    let bestStart = -1;
    let bestEnd = Infinity;
    let bestStop: string | undefined;
    for (const stop of this.stops) {
      // The first occurrence of a stop is also the one that ends first (all occurrences have the same length).
      const start = buffer.indexOf(stop);
      if (start < 0) continue;
      const end = start + stop.length;
      if (end < bestEnd || (end === bestEnd && start < bestStart)) {
        bestStart = start;
        bestEnd = end;
        bestStop = stop;
      }
    }
    if (bestStop !== undefined) {
      this.done = true;
      this.held = "";
      return { text: buffer.slice(0, this.includeStopString ? bestEnd : bestStart), stopped: true, stop: bestStop };
    }

    const keep = this.longestStopPrefixSuffix(buffer);
    this.held = buffer.slice(buffer.length - keep);
    return { text: buffer.slice(0, buffer.length - keep), stopped: false };
  }

  /** The stream ended without a stop (EOS, length): releases the held-back text. */
  flush(): string {
    if (this.done) return "";
    const rest = this.held;
    this.held = "";
    return rest;
  }

  /** Length of the longest suffix of `text` that is a proper prefix of some stop string. */
  private longestStopPrefixSuffix(text: string): number {
    let best = 0;
    for (const stop of this.stops) {
      for (let len = Math.min(stop.length - 1, text.length); len > best; len--) {
        if (text.endsWith(stop.slice(0, len))) {
          best = len;
          break;
        }
      }
    }
    return best;
  }
}
