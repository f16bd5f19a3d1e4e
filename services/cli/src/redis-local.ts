/**
 * Finding a Redis for the local cluster, in the order the README promises:
 *   1. --redis-url, else REDIS_URL, when it answers PING;
 *   2. else 127.0.0.1:6379 when it answers;
 *   3. else a private `redis-server` on a free loopback port, stopped with the cluster;
 *   4. else a RedisMissingError that says what is missing and how to install it.
 * A given URL that does not answer is reported (onNote) and the search goes on, so a stale REDIS_URL
 * in a shell does not stop `npm start`. `--private-redis` skips 1 and 2.
 *
 * The private redis-server persists as deployments run Redis (docker-compose.yml, the chart):
 * append-only file, fsync every second, noeviction, in <state-dir>/redis. A cluster starts it on an
 * empty folder (no request of an earlier run can still be waiting for its answer); restart() brings it
 * back on the same port over the same folder, so queued and active jobs survive it (all of them after
 * a clean stop, all but the last second of writes after a crash). On Linux it runs under
 * `setpriv --pdeathsig TERM`, so it shuts down (writing its AOF) when the launcher dies, kill -9 included.
 */
import { spawn, type ChildProcess } from "node:child_process";
import { accessSync, constants, createWriteStream, mkdirSync, rmSync } from "node:fs";
import { createServer } from "node:net";
import { delimiter, join } from "node:path";
import { Redis } from "ioredis";
import { errorMessage, FailedPreconditionError, UnavailableError } from "@moela/core";

export const LOCAL_REDIS_URL = "redis://127.0.0.1:6379";

/** Where the cluster's Redis came from. */
export type RedisSource = "flag" | "env" | "local" | "private";

export interface RedisChoice {
  readonly url: string;
  readonly source: RedisSource;
  /** pid of the private redis-server this launcher started; undefined when it uses someone else's. */
  readonly pid: number | undefined;
  /** Stops the private redis-server (no-op for a Redis the launcher did not start). */
  stop(): Promise<void>;
  /** The private redis-server, for supervision (absent for a Redis the launcher did not start). */
  readonly server?: PrivateRedisServer;
}

/** No Redis answers and none can be started here; the message says how to get one. */
export class RedisMissingError extends FailedPreconditionError {
  constructor(tried: readonly string[]) {
    super(
      [
        "moela cluster needs Redis (the prefill queue lives there) and found none:",
        ...tried.map((t) => `  - ${t}`),
        "Either point it at a running Redis:   npm start -- --redis-url redis://HOST:6379   (or REDIS_URL=...)",
        "or install redis-server so the launcher can start a private one:",
        "  Debian/Ubuntu: sudo apt-get install -y redis-server",
        "  macOS:         brew install redis",
        "  or run one:    docker run --rm -p 6379:6379 redis:7",
      ].join("\n"),
    );
  }
}

export type PingResult = { readonly ok: true } | { readonly ok: false; readonly error: string };

/** One PING to `url` within `timeoutMs`; never throws, never retries. */
export async function pingRedis(url: string, timeoutMs = 1_000): Promise<PingResult> {
  let client: Redis;
  try {
    client = new Redis(url, {
      lazyConnect: true,
      connectTimeout: timeoutMs,
      commandTimeout: timeoutMs,
      maxRetriesPerRequest: 0,
      enableOfflineQueue: false,
      retryStrategy: () => null,
    });
  } catch (err) {
    return { ok: false, error: `not a Redis URL (${errorMessage(err)})` };
  }
  let lastError = "";
  client.on("error", (err: Error) => {
    lastError = err.message;
  });
  try {
    await client.connect();
    const pong = await client.ping();
    return pong === "PONG" ? { ok: true } : { ok: false, error: `PING answered ${JSON.stringify(pong)}` };
  } catch (err) {
    const message = errorMessage(err) || lastError || "no answer";
    return { ok: false, error: message };
  } finally {
    client.disconnect();
  }
}

/** The first executable `name` on PATH, or undefined. */
export function findExecutable(name: string, path: string | undefined = process.env["PATH"]): string | undefined {
  for (const dir of (path ?? "").split(delimiter)) {
    if (dir === "") continue;
    const file = join(dir, name);
    try {
      accessSync(file, constants.X_OK);
      return file;
    } catch {
      // not here
    }
  }
  return undefined;
}

/** A TCP port on 127.0.0.1 that was free a moment ago (the kernel picks it). */
export function freePort(host = "127.0.0.1"): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = createServer();
    server.once("error", reject);
    server.listen(0, host, () => {
      const address = server.address();
      const port = typeof address === "object" && address !== null ? address.port : 0;
      server.close(() => resolve(port));
    });
  });
}

export interface PrivateRedisOptions {
  /** redis-server binary (default: found on PATH). */
  readonly binary?: string;
  /** Its data folder (the append-only file); emptied first. */
  readonly dir: string;
  /** File that receives redis-server's log. */
  readonly logFile: string;
  readonly startTimeoutMs?: number;
  /** Tests: run it without the setpriv parent-death wrapper even where setpriv exists. */
  readonly noParentDeathSignal?: boolean;
}

/** The private redis-server as a supervised process: one port and one folder, any number of incarnations. */
export interface PrivateRedisServer {
  readonly port: number;
  readonly dir: string;
  /** The current incarnation's pid. */
  pid(): number | undefined;
  /** Resolves when the current incarnation exits. */
  waitExit(): Promise<{ readonly code: number | null; readonly signal: NodeJS.Signals | null }>;
  /** Start it again on the same port over the same folder (after it exited); resolves once it answers PING. */
  restart(timeoutMs?: number): Promise<void>;
  /** SIGTERM (Redis writes its AOF), SIGKILL after graceMs. */
  stop(graceMs?: number): Promise<void>;
}

/** The redis-server flags: loopback, no RDB snapshots, append-only file fsynced every second, never evict jobs. */
export function privateRedisArgs(port: number, dir: string): string[] {
  return [
    "--bind",
    "127.0.0.1",
    "--port",
    String(port),
    "--dir",
    dir,
    "--save",
    "",
    "--appendonly",
    "yes",
    "--appendfsync",
    "everysec",
    "--maxmemory-policy",
    "noeviction",
    "--daemonize",
    "no",
  ];
}

async function waitForPing(url: string, exited: () => string | undefined, timeoutMs: number): Promise<string | undefined> {
  const deadline = Date.now() + timeoutMs;
  let lastError = "no answer";
  while (Date.now() < deadline) {
    const why = exited();
    if (why !== undefined) return why;
    const ping = await pingRedis(url, 500);
    if (ping.ok) return undefined;
    lastError = ping.error;
    await new Promise((r) => setTimeout(r, 100));
  }
  return exited() ?? `did not answer PING within ${timeoutMs} ms (${lastError})`;
}

/** Start a persistent redis-server on a free loopback port over an emptied `dir`; resolves once it answers PING. */
export async function startPrivateRedis(o: PrivateRedisOptions): Promise<RedisChoice> {
  const binary = o.binary ?? findExecutable("redis-server");
  if (binary === undefined) throw new RedisMissingError(["redis-server is not on PATH"]);
  rmSync(o.dir, { recursive: true, force: true });
  mkdirSync(o.dir, { recursive: true });
  const setpriv = process.platform === "linux" && o.noParentDeathSignal !== true ? findExecutable("setpriv") : undefined;
  const timeoutMs = o.startTimeoutMs ?? 10_000;
  const log = createWriteStream(o.logFile, { flags: "a" });
  let child: ChildProcess | undefined;
  let exit: Promise<{ code: number | null; signal: NodeJS.Signals | null }> = Promise.resolve({ code: null, signal: null });
  let exitedWhy: string | undefined;

  const launch = (port: number): void => {
    const args = privateRedisArgs(port, o.dir);
    // setpriv sets PR_SET_PDEATHSIG and execs redis-server (same pid): the kernel sends it SIGTERM when
    // the launcher's thread that spawned it dies.
    const [file, argv] = setpriv !== undefined ? [setpriv, ["--pdeathsig", "TERM", "--", binary, ...args]] : [binary, args];
    const c = spawn(file, argv, { stdio: ["ignore", "pipe", "pipe"] });
    child = c;
    exitedWhy = undefined;
    c.stdout.pipe(log, { end: false });
    c.stderr.pipe(log, { end: false });
    exit = new Promise((resolve) => {
      c.once("error", (err) => {
        exitedWhy = err.message;
        if (c.pid === undefined) resolve({ code: null, signal: null });
      });
      c.once("exit", (code, signal) => {
        exitedWhy ??= `redis-server exited (${signal ?? `code ${code}`})`;
        resolve({ code, signal });
      });
    });
  };

  let lastError = "";
  // A port found free can be taken before redis binds it; a second port settles that race.
  for (let attempt = 0; attempt < 3; attempt++) {
    const port = await freePort();
    const url = `redis://127.0.0.1:${port}`;
    launch(port);
    const failed = await waitForPing(url, () => exitedWhy, timeoutMs);
    if (failed === undefined) {
      const server: PrivateRedisServer = {
        port,
        dir: o.dir,
        pid: () => child?.pid,
        waitExit: () => exit,
        async restart(restartTimeoutMs = timeoutMs) {
          if (child !== undefined && child.exitCode === null && child.signalCode === null) {
            throw new FailedPreconditionError(`redis-server (pid ${child.pid}) is still running`);
          }
          launch(port);
          const why = await waitForPing(url, () => exitedWhy, restartTimeoutMs);
          if (why !== undefined) throw new UnavailableError(`private redis-server on port ${port}: ${why}; see ${o.logFile}`);
        },
        async stop(graceMs = 5_000) {
          if (child !== undefined) await stopChild(child, graceMs);
        },
      };
      let stopped: Promise<void> | undefined;
      return {
        url,
        source: "private",
        get pid() {
          return child?.pid;
        },
        server,
        stop: () => {
          stopped ??= server.stop().then(() => {
            log.end();
          });
          return stopped;
        },
      };
    }
    const timedOut = exitedWhy === undefined;
    if (child !== undefined) await stopChild(child, 2_000);
    lastError = failed;
    // A redis-server that runs but never answers will not on another port either.
    if (timedOut) break;
  }
  log.end();
  throw new UnavailableError(`could not start a private redis-server (${lastError}); see ${o.logFile}`);
}

/** SIGTERM, wait up to graceMs, then SIGKILL; resolves once the child is gone. */
export async function stopChild(child: ChildProcess, graceMs: number): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return;
  const gone = new Promise<void>((resolve) => child.once("exit", () => resolve()));
  child.kill("SIGTERM");
  let timer: NodeJS.Timeout | undefined;
  const late = await Promise.race([gone.then(() => false), new Promise<boolean>((r) => (timer = setTimeout(() => r(true), graceMs)))]);
  clearTimeout(timer);
  if (late) {
    child.kill("SIGKILL");
    await gone;
  }
}

export interface ResolveRedisOptions {
  /** --redis-url */
  readonly flagUrl?: string | undefined;
  /** REDIS_URL from the environment */
  readonly envUrl?: string | undefined;
  /** For a private redis-server: its working dir and log file. */
  readonly privateDir: string;
  readonly privateLogFile: string;
  /** Override the redis-server lookup (tests); null = behave as if none is installed. */
  readonly redisServerBinary?: string | null;
  /** Override the well-known local URL (tests). */
  readonly localUrl?: string;
  /** Told about each URL that did not answer, and about what was chosen. */
  readonly onNote?: (message: string) => void;
  /** --private-redis: start a private redis-server whatever answers elsewhere. */
  readonly forcePrivate?: boolean;
}

export async function resolveRedis(o: ResolveRedisOptions): Promise<RedisChoice> {
  const note = o.onNote ?? (() => {});
  if (o.forcePrivate === true) {
    const binary = o.redisServerBinary === null ? undefined : (o.redisServerBinary ?? findExecutable("redis-server"));
    if (binary === undefined) throw new RedisMissingError(["--private-redis: redis-server is not installed (not on PATH)"]);
    return startPrivateRedis({ binary, dir: o.privateDir, logFile: o.privateLogFile });
  }
  const tried: string[] = [];
  const given: Array<[string | undefined, RedisSource, string]> = [
    [o.flagUrl, "flag", "--redis-url"],
    [o.envUrl, "env", "REDIS_URL"],
  ];
  for (const [url, source, what] of given) {
    if (url === undefined || url === "") continue;
    const ping = await pingRedis(url);
    if (ping.ok) return { url, source, pid: undefined, stop: async () => {} };
    tried.push(`${what} ${url}: ${ping.error}`);
    note(`${what} ${url} does not answer (${ping.error}); looking further`);
  }
  const localUrl = o.localUrl ?? LOCAL_REDIS_URL;
  const local = await pingRedis(localUrl);
  if (local.ok) return { url: localUrl, source: "local", pid: undefined, stop: async () => {} };
  tried.push(`${localUrl}: ${local.error}`);
  const binary = o.redisServerBinary === null ? undefined : (o.redisServerBinary ?? findExecutable("redis-server"));
  if (binary === undefined) {
    tried.push("redis-server is not installed (not on PATH)");
    throw new RedisMissingError(tried);
  }
  note(`no Redis answers; starting a private redis-server (${binary})`);
  return startPrivateRedis({ binary, dir: o.privateDir, logFile: o.privateLogFile });
}
