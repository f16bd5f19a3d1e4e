/**
 * Stream<T>: a one-shot AsyncIterable over a running call. Breaking out of a `for await` loop (or
 * calling `abort()`, or aborting the AbortSignal it was given) cancels the call on the server; the
 * loop then ends (break) or throws CancelledError (abort while the consumer waits).
 */
import { CancelledError } from "@moela/core";

/** Produces the items; must stop and clean up when `signal` aborts or when it is returned early. */
export type StreamSource<T> = (signal: AbortSignal) => AsyncGenerator<T, void, undefined>;

export class Stream<T> implements AsyncIterable<T> {
  /** Aborting it cancels the call; `abort()` does the same. */
  readonly controller: AbortController;
  private readonly source: StreamSource<T>;
  private iterated = false;
  /** Stops forwarding the caller's signal (once the stream is over). */
  private unlink: () => void = () => {};

  constructor(source: StreamSource<T>, signal?: AbortSignal) {
    this.source = source;
    this.controller = new AbortController();
    if (signal !== undefined) {
      if (signal.aborted) this.controller.abort(signal.reason);
      else {
        const forward = () => this.controller.abort(signal.reason);
        signal.addEventListener("abort", forward, { once: true });
        // A long-lived signal must not keep every finished stream reachable.
        this.unlink = () => signal.removeEventListener("abort", forward);
      }
    }
  }

  /** Cancel the call. A consumer waiting for the next item gets CancelledError. */
  abort(reason: unknown = new CancelledError("stream aborted")): void {
    this.controller.abort(reason);
  }

  [Symbol.asyncIterator](): AsyncIterator<T> {
    if (this.iterated) throw new Error("a Stream can be iterated only once");
    this.iterated = true;
    const inner = this.source(this.controller.signal);
    const finish = () => this.unlink();
    return {
      next: async () => {
        try {
          const r = await inner.next();
          if (r.done) finish();
          return r;
        } catch (err) {
          finish();
          throw err;
        }
      },
      // `break`, `return` or a throw in the loop body: the generator's finally blocks cancel the call.
      return: async () => {
        await inner.return(undefined);
        finish();
        return { done: true, value: undefined };
      },
    };
  }
}
