/**
 * A prefill worker that dies (kill -9) while it holds a job: with the worker options prefill runs with
 * (PREFILL_WORKER_OPTIONS), BullMQ's stalled-job check on a live worker puts the job back within seconds
 * (lock duration + stalled interval) and the live worker runs it; the router's JobWatcher hears of it as
 * a `prefill_stalled` retry. Real Redis, a real child process for the worker that dies.
 */
import { spawn } from "node:child_process";
import { randomUUID } from "node:crypto";
import { createInterface } from "node:readline";
import { fileURLToPath } from "node:url";
import { afterAll, expect, it } from "vitest";
import {
  createPrefillQueue,
  enqueuePrefill,
  PREFILL_JOB_VERSION,
  PREFILL_QUEUE,
  PREFILL_WORKER_OPTIONS,
  redisConnection,
  type PrefillJob,
} from "@moela/scheduler";
import { QueueEvents, Worker } from "bullmq";
import { JobWatcher } from "../../../services/router/src/pipeline.js";

const REDIS = process.env.REDIS_URL ?? "redis://127.0.0.1:6379";
const HANGING = fileURLToPath(new URL("./fixtures/hanging-worker.ts", import.meta.url));
const prefix = `moela-stalled-${randomUUID().slice(0, 8)}`;
const queue = createPrefillQueue(REDIS, prefix);
const closers: Array<() => Promise<unknown>> = [];
afterAll(async () => {
  for (const c of closers.reverse()) await c().catch(() => undefined);
  await queue.obliterate({ force: true });
  await queue.close();
});

function job(requestId: string): PrefillJob {
  return {
    version: PREFILL_JOB_VERSION,
    requestId,
    promptTokenIds: [0, 5, 6],
    sampling: { temperature: 0, topP: 1, topK: -1, seed: 1, maxTokens: 4, stopTokenIds: [], ignoreEos: true, logprobs: null },
    decodeAddress: "127.0.0.1:1",
    deadlineUnixMs: Date.now() + 120_000,
    precision: "exact",
    enqueuedAtMs: Date.now(),
  };
}

it("a job whose worker was killed -9 runs again on another worker, and the router hears it stalled", async () => {
  const events = new QueueEvents(PREFILL_QUEUE, { connection: redisConnection(REDIS), prefix });
  closers.push(() => events.close());
  await events.waitUntilReady();
  const retries: string[] = [];
  const watcher = new JobWatcher(events);
  const requestId = `req-${randomUUID()}`;
  watcher.watch(requestId, { failed: () => {}, active: () => {}, retried: (reason) => retries.push(reason) });
  await enqueuePrefill(queue, job(requestId));

  const child = spawn(process.execPath, ["--import", "tsx", HANGING, REDIS, prefix], { stdio: ["ignore", "pipe", "inherit"] });
  const took = await new Promise<string>((resolve, reject) => {
    createInterface({ input: child.stdout! }).on("line", (l) => l.startsWith("took ") && resolve(l.slice(5)));
    child.once("exit", (code) => reject(new Error(`the hanging worker exited (${code}) before taking the job`)));
  });
  expect(took).toBe(requestId);
  child.kill("SIGKILL");
  await new Promise((r) => child.once("exit", r));

  // The survivor: it starts after the death, as a second prefill instance already running would be.
  const ran = new Promise<{ id: string; stalls: number }>((resolve) => {
    const w = new Worker(PREFILL_QUEUE, async (j) => resolve({ id: j.id!, stalls: j.stalledCounter }), {
      connection: redisConnection(REDIS),
      prefix,
      ...PREFILL_WORKER_OPTIONS,
    });
    closers.push(() => w.close());
  });
  const limit = PREFILL_WORKER_OPTIONS.lockDuration + 2 * PREFILL_WORKER_OPTIONS.stalledInterval + 20_000;
  const got = await Promise.race([ran, new Promise<never>((_, reject) => setTimeout(() => reject(new Error(`not rerun within ${limit} ms`)), limit))]);
  expect(got).toEqual({ id: requestId, stalls: 1 });
  await expect.poll(() => retries, { timeout: 10_000 }).toEqual(["prefill_stalled"]);
}, 60_000);
