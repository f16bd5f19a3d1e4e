/**
 * Redis AUTH and TLS through the Redis URL alone (docs/SECURITY.md, "What an operator must still do"),
 * against real redis-servers started by the test: one that requires a password and has an ACL user, one
 * that speaks only TLS (certificates made by openssl). The registry client (createRedisClient) and a BullMQ
 * queue and worker (redisConnection) get through with the credentials in the URL and are refused without.
 * TLS with a private CA needs the CA in NODE_EXTRA_CA_CERTS (no moela flag for it), so that client runs in
 * a child process with it set.
 */
import { execFile, spawn, type ChildProcess } from "node:child_process";
import { randomUUID } from "node:crypto";
import { promisify } from "node:util";
import { afterAll, describe, expect, it } from "vitest";
import { Queue, Worker } from "bullmq";
import { createRedisClient, redisConnection } from "@moela/scheduler";
import { findExecutable, freePort, stopChild } from "../../../services/cli/src/redis-local.js";
import { hasOpenssl, makeTestCa, makeTestLeaf, removeTestCerts } from "../../helpers/tls.js";

const execFileAsync = promisify(execFile);
const REPO_ROOT = new URL("../../../", import.meta.url).pathname;
const PASSWORD = `pw-${randomUUID()}`;
const servers: ChildProcess[] = [];

afterAll(async () => {
  await Promise.all(servers.map((s) => stopChild(s, 5_000)));
  removeTestCerts();
});

/** A redis-server with `args`, answering on `port` (plain or TLS) once it logs that it is ready. */
async function startRedis(args: readonly string[]): Promise<void> {
  const binary = findExecutable("redis-server");
  if (binary === undefined) throw new Error("redis-server is not on PATH");
  const child = spawn(binary, ["--save", "", "--appendonly", "no", ...args], { stdio: ["ignore", "pipe", "pipe"] });
  servers.push(child);
  let out = "";
  await new Promise<void>((resolve, reject) => {
    const onData = (b: Buffer): void => {
      out += b.toString();
      if (out.includes("Ready to accept connections")) resolve();
    };
    child.stdout!.on("data", onData);
    child.stderr!.on("data", onData);
    child.once("exit", (code) => reject(new Error(`redis-server exited (${code}):\n${out}`)));
  });
}

/** The error of `p`, or null when it resolved. */
async function failure(p: Promise<unknown>): Promise<Error | null> {
  try {
    await p;
    return null;
  } catch (err) {
    return err as Error;
  }
}

describe.runIf(findExecutable("redis-server") !== undefined)("Redis AUTH through the URL", () => {
  it("password and ACL user in the URL get the registry client and a BullMQ queue and worker through; without them Redis refuses", async () => {
    const port = await freePort();
    await startRedis([
      "--port",
      String(port),
      "--bind",
      "127.0.0.1",
      "--requirepass",
      PASSWORD,
      "--user",
      "moela",
      "on",
      `>${PASSWORD}-moela`,
      "~*",
      "&*",
      "+@all",
    ]);
    const withPassword = `redis://:${encodeURIComponent(PASSWORD)}@127.0.0.1:${port}/0`;
    const withUser = `redis://moela:${encodeURIComponent(`${PASSWORD}-moela`)}@127.0.0.1:${port}/0`;

    for (const url of [withPassword, withUser]) {
      const c = createRedisClient(url);
      try {
        expect(await c.ping()).toBe("PONG");
      } finally {
        c.disconnect();
      }
    }
    const anonymous = createRedisClient(`redis://127.0.0.1:${port}/0`);
    anonymous.on("error", () => {});
    const wrong = createRedisClient(`redis://moela:nope@127.0.0.1:${port}/0`);
    wrong.on("error", () => {});
    const wrongDefault = createRedisClient(`redis://:nope@127.0.0.1:${port}/0`);
    wrongDefault.on("error", () => {});
    try {
      expect((await failure(anonymous.ping()))?.message).toMatch(/NOAUTH/);
      // Redis 7 answers AUTH with a wrong password WRONGPASS, with a username or without; ioredis fails the
      // commands queued behind that AUTH with its error (NOAUTH is only for a connection that never sent AUTH).
      expect((await failure(wrong.ping()))?.message).toMatch(/^WRONGPASS /);
      expect((await failure(wrongDefault.ping()))?.message).toMatch(/^WRONGPASS /);
    } finally {
      anonymous.disconnect();
      wrong.disconnect();
      wrongDefault.disconnect();
    }

    // BullMQ, as the router and prefill use it: the URL's credentials on every connection.
    const prefix = `auth-${randomUUID().slice(0, 8)}`;
    const queue = new Queue("auth-test", { connection: redisConnection(withUser), prefix });
    const worker = new Worker("auth-test", async (job) => (job.data as { n: number }).n * 2, { connection: redisConnection(withUser), prefix });
    try {
      const done = new Promise<unknown>((resolve) => worker.once("completed", (_job, result) => resolve(result)));
      await queue.add("double", { n: 21 });
      expect(await done).toBe(42);
    } finally {
      await worker.close();
      await queue.obliterate({ force: true });
      await queue.close();
    }
  }, 60_000);
});

describe.runIf(findExecutable("redis-server") !== undefined && hasOpenssl())("Redis TLS through a rediss:// URL", () => {
  it("a rediss:// URL with the password connects over TLS when the CA is trusted (NODE_EXTRA_CA_CERTS); a redis:// URL to the TLS port does not", async () => {
    const ca = makeTestCa("redis-test-ca");
    const leaf = makeTestLeaf(ca, "redis");
    const port = await freePort();
    await startRedis([
      "--port",
      "0",
      "--tls-port",
      String(port),
      "--bind",
      "127.0.0.1",
      "--tls-cert-file",
      leaf.cert,
      "--tls-key-file",
      leaf.key,
      "--tls-ca-cert-file",
      ca.caCert,
      "--tls-auth-clients",
      "no",
      "--requirepass",
      PASSWORD,
    ]);
    const ping = async (url: string, env: NodeJS.ProcessEnv): Promise<string> => {
      const script = `import { createRedisClient } from "@moela/scheduler";
const c = createRedisClient(process.argv[1]);
c.on("error", () => {});
try { console.log(await c.ping()); } catch (err) { console.log("ERR " + err.message); } finally { c.disconnect(); }`;
      const { stdout } = await execFileAsync(process.execPath, ["--import", "tsx", "--input-type=module", "-e", script, url], {
        cwd: REPO_ROOT,
        env,
        timeout: 30_000,
      });
      return stdout.trim();
    };
    const env = { ...process.env, NODE_EXTRA_CA_CERTS: ca.caCert };
    expect(await ping(`rediss://:${encodeURIComponent(PASSWORD)}@127.0.0.1:${port}/0`, env)).toBe("PONG");
    expect(await ping(`redis://:${encodeURIComponent(PASSWORD)}@127.0.0.1:${port}/0`, env)).toMatch(/^ERR /);
    // Without the CA the server's certificate is not trusted.
    const untrusted = { ...process.env };
    delete untrusted["NODE_EXTRA_CA_CERTS"];
    expect(await ping(`rediss://:${encodeURIComponent(PASSWORD)}@127.0.0.1:${port}/0`, untrusted)).toMatch(/^ERR /);
  }, 90_000);
});
