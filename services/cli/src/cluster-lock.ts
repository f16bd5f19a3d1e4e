/**
 * One local cluster per state dir, per router port and per queue prefix: a second `moela cluster`
 * that would share any of them refuses before it starts anything, and changes nothing of the first.
 *
 *   state dir     <state-dir>/launcher.lock, created exclusively (link(2) of a fully written file, so
 *                 a reader never sees half of it): the launcher's pid and its process start time (so a
 *                 reused pid is not taken for the launcher), the port, the queue prefix and, once
 *                 started, the private redis-server's pid. A lock whose launcher is gone (kill -9) is
 *                 stale and taken over; a private redis-server it left is stopped then.
 *   router port   a bind probe on --host:--port (skipped for port 0).
 *   queue prefix  Redis key `<prefix>:launcher`, SET NX with a 15 s expiry that a heartbeat renews every
 *                 5 s; its value names the holder (host, pid, state dir). A holder on this host whose
 *                 pid is gone is stale and taken over at once; one elsewhere, once its heartbeat stops.
 *
 * Each is the local stand-in for what Kubernetes gives a StatefulSet for free: one pod per name.
 */
import { hostname } from "node:os";
import { linkSync, readFileSync, renameSync, unlinkSync, writeFileSync } from "node:fs";
import { createServer } from "node:net";
import { join } from "node:path";
import { Redis } from "ioredis";
import { errorMessage, FailedPreconditionError, MoelaError, UnavailableError } from "@moela/core";

/** Another cluster holds the state dir, the port or the queue prefix. */
export class ClusterInUseError extends FailedPreconditionError {
  constructor(message: string) {
    super(message);
  }
}

/** Who holds a lock. */
export interface LockHolder {
  readonly pid: number;
  /** /proc/<pid>/stat start time (clock ticks since boot), where the system has one. */
  readonly pid_start?: string;
  readonly hostname: string;
  readonly started_at: string;
  readonly state_dir: string;
  readonly port: number;
  readonly queue_prefix: string;
  /** The private redis-server this launcher started, and its start time. */
  readonly redis_pid?: number;
  readonly redis_pid_start?: string;
}

/** A process's start time from /proc (Linux), to tell a pid from a later process that reuses it. */
export function processStartTime(pid: number): string | undefined {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
    // Field 22; the command name (field 2) may hold spaces and parentheses, so count after the last ')'.
    return stat.slice(stat.lastIndexOf(")") + 2).split(" ")[19];
  } catch {
    return undefined;
  }
}

/** Whether `pid` runs and, when its start time was recorded, is still that same process. */
export function isSameProcessAlive(pid: number, startTime: string | undefined): boolean {
  try {
    process.kill(pid, 0);
  } catch (err) {
    // EPERM: it exists, owned by someone else.
    if ((err as NodeJS.ErrnoException).code !== "EPERM") return false;
  }
  if (startTime === undefined) return true;
  const now = processStartTime(pid);
  return now === undefined || now === startTime;
}

export function describeHolder(h: LockHolder): string {
  return `moela cluster pid ${h.pid} on ${h.hostname} (started ${h.started_at}, state dir ${h.state_dir}, port ${h.port}, queue prefix "${h.queue_prefix}")`;
}

export function newHolder(o: { stateDir: string; port: number; queuePrefix: string }): LockHolder {
  const start = processStartTime(process.pid);
  return {
    pid: process.pid,
    ...(start !== undefined ? { pid_start: start } : {}),
    hostname: hostname(),
    started_at: new Date().toISOString(),
    state_dir: o.stateDir,
    port: o.port,
    queue_prefix: o.queuePrefix,
  };
}

// ---- the state dir -----------------------------------------------------------------------------

export interface StateDirLock {
  readonly path: string;
  /** Record the private redis-server in the lock, so a launcher that takes over a stale lock stops it. */
  setRedisPid(pid: number | undefined): void;
  /** Remove the lock if it is still ours. Idempotent. */
  release(): void;
}

function readHolder(path: string): LockHolder | undefined {
  try {
    const v = JSON.parse(readFileSync(path, "utf8")) as Partial<LockHolder>;
    return typeof v.pid === "number" ? (v as LockHolder) : undefined;
  } catch {
    return undefined;
  }
}

/** Write `holder` to `path` only if no file is there (ENOENT-safe, never half-written). */
function createExclusive(path: string, holder: LockHolder): boolean {
  const tmp = `${path}.${process.pid}.${Math.random().toString(36).slice(2)}.tmp`;
  writeFileSync(tmp, `${JSON.stringify(holder, null, 2)}\n`);
  try {
    linkSync(tmp, path);
    return true;
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === "EEXIST") return false;
    throw err;
  } finally {
    unlinkSync(tmp);
  }
}

export interface StateDirLockOptions {
  /** Told about a stale lock that was taken over (and a redis-server it left that was stopped). */
  readonly onNote?: (message: string) => void;
}

/** Take <stateDir>/launcher.lock or throw ClusterInUseError naming the live holder. */
export function acquireStateDirLock(stateDir: string, holder: LockHolder, o: StateDirLockOptions = {}): StateDirLock {
  const path = join(stateDir, "launcher.lock");
  let mine: LockHolder = holder;
  for (let attempt = 0; ; attempt++) {
    if (createExclusive(path, mine)) break;
    const other = readHolder(path);
    if (other !== undefined && isSameProcessAlive(other.pid, other.pid_start)) {
      throw new ClusterInUseError(
        `${stateDir} is in use by ${describeHolder(other)}. Stop that cluster first (Ctrl-C in its terminal, or kill ${other.pid}), or give this one another --state-dir.`,
      );
    }
    if (attempt >= 3) throw new ClusterInUseError(`could not take ${path}: it keeps changing (another launcher starting right now?)`);
    // Stale (or unreadable): move it aside, and make sure what was moved is the stale one, not a lock a
    // concurrent launcher took meanwhile.
    const aside = `${path}.stale.${process.pid}`;
    try {
      renameSync(path, aside);
    } catch {
      continue;
    }
    const moved = readHolder(aside);
    if (moved !== undefined && other !== undefined && moved.pid !== other.pid) {
      try {
        linkSync(aside, path);
      } catch {
        // the path was taken again; the next round reads who holds it
      }
      unlinkSync(aside);
      continue;
    }
    unlinkSync(aside);
    if (other !== undefined) {
      o.onNote?.(`took over ${path}: launcher pid ${other.pid} (started ${other.started_at}) is gone`);
      if (other.redis_pid !== undefined && other.redis_pid_start !== undefined && isSameProcessAlive(other.redis_pid, other.redis_pid_start)) {
        try {
          process.kill(other.redis_pid, "SIGTERM");
          o.onNote?.(`stopped redis-server pid ${other.redis_pid} that the gone launcher left running`);
        } catch {
          // gone meanwhile
        }
      }
    }
  }
  let released = false;
  return {
    path,
    setRedisPid(pid) {
      if (released) return;
      const start = pid === undefined ? undefined : processStartTime(pid);
      const { redis_pid: _p, redis_pid_start: _s, ...rest } = mine;
      mine = { ...rest, ...(pid !== undefined ? { redis_pid: pid } : {}), ...(start !== undefined ? { redis_pid_start: start } : {}) };
      const tmp = `${path}.${process.pid}.tmp`;
      writeFileSync(tmp, `${JSON.stringify(mine, null, 2)}\n`);
      renameSync(tmp, path);
    },
    release() {
      if (released) return;
      released = true;
      const now = readHolder(path);
      if (now !== undefined && now.pid === mine.pid && now.started_at === mine.started_at) {
        try {
          unlinkSync(path);
        } catch {
          // already gone
        }
      }
    },
  };
}

// ---- the router port ---------------------------------------------------------------------------

/** Resolves when host:port can be bound right now; throws ClusterInUseError when something listens there. */
export async function probePort(host: string, port: number): Promise<void> {
  if (port === 0) return;
  await new Promise<void>((resolve, reject) => {
    const server = createServer();
    server.once("error", (err: NodeJS.ErrnoException) => {
      if (err.code === "EADDRINUSE") {
        reject(
          new ClusterInUseError(
            `${host}:${port} is in use (another moela cluster, or another server). Stop it, or give this cluster another --port (0 = any free one).`,
          ),
        );
      } else reject(new FailedPreconditionError(`cannot listen on ${host}:${port}: ${err.message}`));
    });
    server.listen({ host, port, exclusive: true }, () => server.close(() => resolve()));
  });
}

// ---- the queue prefix --------------------------------------------------------------------------

export const QUEUE_LOCK_TTL_MS = 15_000;
export const QUEUE_LOCK_HEARTBEAT_MS = 5_000;

/** The key that says which launcher runs the services of a queue prefix. */
export function queueLockKey(prefix: string): string {
  return `${prefix}:launcher`;
}

export interface QueuePrefixLock {
  readonly key: string;
  /** Stop the heartbeat and delete the key if it is still ours. Idempotent. */
  release(): Promise<void>;
}

// KEYS[1] key; ARGV[1] expected value, ARGV[2] new value, ARGV[3] ttl ms. Replace only what we read.
const SWAP = `if redis.call("GET", KEYS[1]) == ARGV[1] then return redis.call("SET", KEYS[1], ARGV[2], "PX", ARGV[3]) else return false end`;
// Renew ours; put it back should it be gone (a Redis restarted without persistence); never take another's.
const RENEW = `local v = redis.call("GET", KEYS[1])
if v == ARGV[1] then return redis.call("PEXPIRE", KEYS[1], ARGV[2]) end
if not v then return redis.call("SET", KEYS[1], ARGV[1], "PX", ARGV[2]) end
return 0`;
const DELETE_IF_MINE = `if redis.call("GET", KEYS[1]) == ARGV[1] then return redis.call("DEL", KEYS[1]) else return 0 end`;

export interface QueuePrefixLockOptions {
  readonly ttlMs?: number;
  readonly heartbeatMs?: number;
  readonly onNote?: (message: string) => void;
}

/** Take `<prefix>:launcher` in the cluster's Redis or throw ClusterInUseError naming the holder. */
export async function acquireQueuePrefixLock(redisUrl: string, holder: LockHolder, o: QueuePrefixLockOptions = {}): Promise<QueuePrefixLock> {
  const ttl = o.ttlMs ?? QUEUE_LOCK_TTL_MS;
  const key = queueLockKey(holder.queue_prefix);
  const value = JSON.stringify(holder);
  const client = new Redis(redisUrl, { maxRetriesPerRequest: 1, connectTimeout: 5_000, lazyConnect: true });
  // Errors surface through the commands below; while the cluster runs, a Redis restart is not ours to report.
  client.on("error", () => {});
  try {
    await client.connect();
    for (let attempt = 0; ; attempt++) {
      if ((await client.set(key, value, "PX", ttl, "NX")) === "OK") break;
      const raw = await client.get(key);
      if (raw === null) continue;
      let other: LockHolder | undefined;
      try {
        other = JSON.parse(raw) as LockHolder;
      } catch {
        other = undefined;
      }
      const staleHere = other !== undefined && other.hostname === hostname() && !isSameProcessAlive(other.pid, other.pid_start);
      if (!staleHere || attempt >= 3) {
        const left = await client.pttl(key);
        const who = other !== undefined ? describeHolder(other) : `an unknown holder (${raw.slice(0, 200)})`;
        throw new ClusterInUseError(
          `queue prefix "${holder.queue_prefix}" in ${redisUrl} is in use by ${who}; its claim expires in ${Math.max(0, Math.ceil(left / 1000))} s unless renewed. Stop that cluster first, or give this one another --queue-prefix.`,
        );
      }
      if ((await client.eval(SWAP, 1, key, raw, value, String(ttl))) === "OK") {
        o.onNote?.(`took over queue prefix "${holder.queue_prefix}": launcher pid ${other!.pid} on this host is gone`);
        break;
      }
    }
  } catch (err) {
    client.disconnect();
    if (err instanceof MoelaError) throw err;
    throw new UnavailableError(`could not claim queue prefix "${holder.queue_prefix}" in ${redisUrl}: ${errorMessage(err)}`);
  }
  const timer = setInterval(() => {
    client.eval(RENEW, 1, key, value, String(ttl)).catch(() => {});
  }, o.heartbeatMs ?? QUEUE_LOCK_HEARTBEAT_MS);
  timer.unref();
  let released: Promise<void> | undefined;
  return {
    key,
    release() {
      released ??= (async () => {
        clearInterval(timer);
        try {
          await client.eval(DELETE_IF_MINE, 1, key, value);
        } catch {
          // Redis gone: the claim expires by itself
        } finally {
          client.disconnect();
        }
      })();
      return released;
    },
  };
}
