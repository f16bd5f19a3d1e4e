/**
 * One clean-up stack for composition roots (what TC39's AsyncDisposableStack does; Node 20 lacks it).
 * Register each thing right after it exists: `defer(fn)` for a clean-up step, `use(x)` for anything
 * with a `close()`, `adopt(x, release)` for a value with a separate release. `disposeAll()` runs the
 * steps in reverse order of registration (the last thing made is the first undone), awaits each, runs
 * them all even when some fail, and then throws: the one error, or an AggregateError of several.
 *
 *   const stack = new DisposableStack();
 *   try {
 *     const server = stack.use(await startServer());
 *     stack.defer(() => lock.release());
 *     ...
 *     return { close: () => stack.disposeAll() };
 *   } catch (err) {
 *     await stack.disposeAll();
 *     throw err;
 *   }
 */
import { errorMessage } from "./errors.js";

/** Something that can be closed (a server, a client, a lock); the result may be a promise. */
export interface Closable {
  close(): unknown;
}

export class DisposableStack {
  private steps: Array<() => unknown> = [];
  private disposing: Promise<void> | undefined;

  /** Whether disposeAll() was called (nothing may be added after it). */
  get disposed(): boolean {
    return this.disposing !== undefined;
  }

  /** How many clean-up steps are registered. */
  get size(): number {
    return this.steps.length;
  }

  /** Registers a clean-up step. */
  defer(fn: () => unknown): void {
    if (this.disposing !== undefined) throw new Error("DisposableStack: defer() after disposeAll()");
    this.steps.push(fn);
  }

  /** Registers `resource.close()` and returns the resource; null and undefined are passed through. */
  use<T extends Closable | null | undefined>(resource: T): T {
    if (resource !== null && resource !== undefined) this.defer(() => resource.close());
    return resource;
  }

  /** Registers `release(value)` and returns the value. */
  adopt<T>(value: T, release: (value: T) => unknown): T {
    this.defer(() => release(value));
    return value;
  }

  /**
   * Hands every step to a new stack and leaves this one empty (a later disposeAll() here does nothing):
   * a start-up that succeeded passes its clean-up to what it returns.
   */
  move(): DisposableStack {
    if (this.disposing !== undefined) throw new Error("DisposableStack: move() after disposeAll()");
    const next = new DisposableStack();
    next.steps = this.steps;
    this.steps = [];
    return next;
  }

  /**
   * Runs every step, last registered first, each awaited, all of them even when some fail; then throws
   * the failure (an AggregateError when more than one failed). Idempotent: a second call gets the first's promise.
   */
  disposeAll(): Promise<void> {
    this.disposing ??= (async () => {
      const steps = this.steps.reverse();
      this.steps = [];
      const errors: unknown[] = [];
      for (const step of steps) {
        try {
          await step();
        } catch (err) {
          errors.push(err);
        }
      }
      if (errors.length === 1) throw errors[0];
      if (errors.length > 1) {
        const why = errors.map((e) => errorMessage(e)).join("; ");
        throw new AggregateError(errors, `${errors.length} clean-up steps failed: ${why}`);
      }
    })();
    return this.disposing;
  }
}
