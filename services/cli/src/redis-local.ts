/**
 * Finding a Redis for the local cluster, in the order the README promises:
 *   1. --redis-url, else REDIS_URL, when it answers PING;
 *   2. else 127.0.0.1:6379 when it answers;
 *   3. else a private `redis-server` on a free loopback port, no persistence, stopped with the cluster;
 *   4. else a RedisMissingError that says what is missing and how to install it.
 * A given URL that does not answer is reported (onNote) and the search goes on, so a stale REDIS_URL
 * in a shell does not stop `npm start`.
 */
import { spawn, type ChildProcess } from "node:child_process";
import { accessSync, constants, createWriteStream, mkdirSync } from "node:fs";
import { createServer } from "node:net";
import { delimiter, join } from "node:path";
import { Redis } from "ioredis";
import { Code, MoelaError } from "@moela/core";

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
}

/** No Redis answers and none can be started here; the message says how to get one. */
export class RedisMissingError extends MoelaError {
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
      Code.FAILED_PRECONDITION,
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
    return { ok: false, error: `not a Redis URL (${(err as Error).message})` };
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
    const message = (err as Error).message || lastError || "no answer";
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
  /** Working directory for redis-server (nothing is persisted there). */
  readonly dir: string;
  /** File that receives redis-server's log. */
  readonly logFile: string;
  readonly startTimeoutMs?: number;
}

/** Start a redis-server on a free loopback port with persistence off; resolves once it answers PING. */
export async function startPrivateRedis(o: PrivateRedisOptions): Promise<RedisChoice> {
  const binary = o.binary ?? findExecutable("redis-server");
  if (binary === undefined) throw new RedisMissingError(["redis-server is not on PATH"]);
  mkdirSync(o.dir, { recursive: true });
  let lastError = "";
  // A port found free can be taken before redis binds it; a second port settles that race.
  for (let attempt = 0; attempt < 3; attempt++) {
    const port = await freePort();
    const url = `redis://127.0.0.1:${port}`;
    const log = createWriteStream(o.logFile, { flags: "a" });
    const child = spawn(
      binary,
      ["--bind", "127.0.0.1", "--port", String(port), "--save", "", "--appendonly", "no", "--daemonize", "no", "--dir", o.dir],
      { stdio: ["ignore", "pipe", "pipe"] },
    );
    child.stdout.pipe(log);
    child.stderr.pipe(log);
    const exited = new Promise<string>((resolve) => {
      child.once("error", (err) => resolve(err.message));
      child.once("exit", (code, signal) => resolve(`redis-server exited (${signal ?? `code ${code}`})`));
    });
    const deadline = Date.now() + (o.startTimeoutMs ?? 10_000);
    let early: string | undefined;
    void exited.then((why) => {
      early = why;
    });
    while (Date.now() < deadline && early === undefined) {
      const ping = await pingRedis(url, 500);
      if (ping.ok) {
        return { url, source: "private", pid: child.pid, stop: () => stopChild(child, 5_000) };
      }
      lastError = ping.error;
      await new Promise((r) => setTimeout(r, 100));
    }
    if (early === undefined) {
      await stopChild(child, 2_000);
      throw new MoelaError(`private redis-server on port ${port} did not answer PING (${lastError}); see ${o.logFile}`, Code.UNAVAILABLE);
    }
    lastError = early;
  }
  throw new MoelaError(`could not start a private redis-server (${lastError}); see ${o.logFile}`, Code.UNAVAILABLE);
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
}

export async function resolveRedis(o: ResolveRedisOptions): Promise<RedisChoice> {
  const note = o.onNote ?? (() => {});
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
