/**
 * Admission basics: a bound on requests in flight through one router. Over the bound a request is refused
 * at once with RESOURCE_EXHAUSTED (HTTP 429) rather than queued without limit; the caller may retry.
 */
import { ResourceExhaustedError } from "@moela/core";

export class AdmissionController {
  readonly maxInFlight: number;
  private active = 0;

  constructor(maxInFlight: number) {
    if (!(Number.isInteger(maxInFlight) && maxInFlight >= 1)) {
      throw new RangeError(`maxInFlight must be a positive integer, got ${maxInFlight}`);
    }
    this.maxInFlight = maxInFlight;
  }

  get inFlight(): number {
    return this.active;
  }

  /**
   * Take `count` slots (one per generation; a batched request takes one per prompt); returns their
   * (idempotent) release. Throws ResourceExhaustedError when they do not all fit.
   */
  admit(count = 1): () => void {
    if (this.active + count > this.maxInFlight) {
      throw new ResourceExhaustedError(
        `the router is at its limit of ${this.maxInFlight} generations in flight (${this.active} running, ${count} asked); retry later`,
      );
    }
    this.active += count;
    let released = false;
    return () => {
      if (released) return;
      released = true;
      this.active -= count;
    };
  }
}
