/**
 * What the services' composition roots share around start and shutdown: a start-up step bounded in time,
 * a shutdown that logs a failing step and goes on (over one DisposableStack: ServiceLifecycle), and the
 * check that a module is the process's entry point.
 */
import { realpathSync } from "node:fs";
import { pathToFileURL } from "node:url";
import { DisposableStack } from "./disposables.js";
import { UnavailableError } from "./errors.js";
import type { Logger } from "./log.js";

/** `p`, or UNAVAILABLE "<what> did not answer within <ms> ms" once `ms` have passed. */
export function withTimeout<T>(p: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const t = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new UnavailableError(`${what} did not answer within ${ms} ms`)), ms);
  });
  return Promise.race([p, t]).finally(() => clearTimeout(timer));
}

/**
 * A `defer` for `stack` whose steps never throw: a failing step is logged as "error while closing" and the
 * others still run, so a shutdown (or the clean-up of a failed start) always runs to its end. A step named
 * by `what` carries it on that line, and logs "closed" at debug when it is done.
 */
export function loggedDefer(stack: DisposableStack, logger: Logger): (step: () => unknown, what?: string) => void {
  return (step, what) =>
    stack.defer(async () => {
      try {
        await step();
      } catch (err) {
        logger.warn(what === undefined ? { err } : { err, what }, "error while closing");
      }
      if (what !== undefined) logger.debug({ what }, "closed");
    });
}

/**
 * A service's start and shutdown over one DisposableStack: `start(build)` runs the composition, whose steps
 * register their clean-up with `defer` as they make things; when it throws, what was registered so far is
 * closed (last first) and the error goes on. `close()` marks the service draining and closes it all, once.
 */
export class ServiceLifecycle {
  private readonly stack = new DisposableStack();
  private closing = false;
  /** Registers a clean-up step; a failing one is logged and the rest still run (loggedDefer). */
  readonly defer: (step: () => unknown, what?: string) => void;

  constructor(logger: Logger) {
    this.defer = loggedDefer(this.stack, logger);
  }

  /** True once close() was called (health answers 503, the registry record says not accepting). */
  readonly draining = (): boolean => this.closing;

  /** Stop taking requests and close everything, last made first; a second call gets the first's promise. */
  readonly close = (): Promise<void> => {
    this.closing = true;
    return this.stack.disposeAll();
  };

  /** `build()`, or when it throws: everything registered so far closed, then the error rethrown. */
  async start<T>(build: () => Promise<T>): Promise<T> {
    try {
      return await build();
    } catch (err) {
      await this.stack.disposeAll();
      throw err;
    }
  }
}

/** Whether the module at `moduleUrl` (its import.meta.url) is the script this process was started with. */
export function isEntryPoint(moduleUrl: string): boolean {
  const script = process.argv[1];
  if (script === undefined) return false;
  try {
    return moduleUrl === pathToFileURL(realpathSync(script)).href;
  } catch {
    return false;
  }
}
