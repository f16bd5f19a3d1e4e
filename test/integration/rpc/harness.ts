/**
 * Real servers on 127.0.0.1:0 for the rpc tests: start one with the services a test needs, get a
 * dialable address back, and have every server still running closed after the test.
 */
import { afterEach } from "vitest";
import { createServer, drainAndClose, serve, type CreateServerOptions, type RpcServer } from "@moela/rpc";

const running: RpcServer[] = [];

afterEach(async () => {
  await Promise.all(running.splice(0).map((server) => drainAndClose(server, 0, { flushMs: 100 })));
});

export interface Started {
  readonly server: RpcServer;
  readonly address: string;
}

/** A server with `setup`'s services, bound to a free loopback port, closed after the test. */
export async function startServer(setup: (server: RpcServer) => void, options: CreateServerOptions & { serving?: boolean } = {}): Promise<Started> {
  const server = createServer(options);
  setup(server);
  running.push(server);
  const { address } = await serve(server, "127.0.0.1:0", { serving: options.serving ?? true });
  return { server, address };
}

/** A promise plus its resolve, for handing events out of handlers. */
export function deferred<T = void>(): { promise: Promise<T>; resolve: (value: T) => void } {
  let resolve!: (value: T) => void;
  const promise = new Promise<T>((r) => {
    resolve = r;
  });
  return { promise, resolve };
}

/** Resolve after `ms`, or reject with the signal's reason as soon as it aborts. */
export function sleep(ms: number, signal?: AbortSignal): Promise<void> {
  return new Promise((resolve, reject) => {
    if (signal?.aborted) {
      reject(signal.reason);
      return;
    }
    const onAbort = (): void => {
      clearTimeout(timer);
      reject(signal!.reason);
    };
    const timer = setTimeout(() => {
      signal?.removeEventListener("abort", onAbort);
      resolve();
    }, ms);
    signal?.addEventListener("abort", onAbort, { once: true });
  });
}
