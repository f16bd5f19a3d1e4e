/**
 * The prefill work queue: its Redis key names, the job's schema, and the options both ends agree on.
 *
 * Keys. BullMQ keeps a queue under `<prefix>:<name>:*`; with the default prefix "moela" the prefill queue
 * is "moela:prefill". Give every deployment (and every test) its own prefix to keep them apart.
 *
 * The job (PrefillJob): everything a prefill worker needs, and nothing it could look up itself. The router
 * has already validated the request against the model (vocabulary, context length) and picked the decode
 * instance; the worker re-validates the shape here and treats any mismatch as a bad job (no retry).
 * Field names are camelCase JSON; `version` lets a worker refuse jobs written by an incompatible router.
 *
 * Failures. A worker fails a job with an Error whose message is `<GRPC_CODE>: <text>` (jobFailureMessage),
 * so the router, which only sees BullMQ's failedReason string, can answer its client with the right status
 * (parseJobFailure).
 */
import { Code, InvalidArgumentError, type MoelaError } from "@moela/core";
import { Queue, type ConnectionOptions, type DefaultJobOptions } from "bullmq";
import { z } from "zod";

/** Redis key prefix of every moela queue unless configured otherwise. */
export const DEFAULT_QUEUE_PREFIX = "moela";
/** BullMQ queue name of prefill work (keys `<prefix>:prefill:*`). */
export const PREFILL_QUEUE = "prefill";
/** BullMQ job name of a prefill job (one kind today; the name shows in tooling). */
export const PREFILL_JOB_NAME = "prefill";
/** Bumped on any incompatible change to PrefillJob. */
export const PREFILL_JOB_VERSION = 1;
/** Most top logprobs a request may ask for (vLLM's default max_logprobs, OpenAI's limit). */
export const MAX_LOGPROBS = 20;

/** The precision profiles a job may name: @moela/moe-dispatch PRECISION_NAMES (this package cannot import it). */
export const PRECISIONS = ["exact", "paper", "paper-logfmt8"] as const;
export type PrecisionProfile = (typeof PRECISIONS)[number];

const tokenId = z.number().int().min(0).max(0xffff_ffff);

/** Sampling as the engine takes it; every default already resolved by the router. */
export const prefillSamplingSchema = z.strictObject({
  /** 0 = greedy. */
  temperature: z.number().min(0).max(100),
  /** (0, 1]; 1 = off. */
  topP: z.number().gt(0).lte(1),
  /** -1 or 0 = off. */
  topK: z.number().int().min(-1),
  /** Always set: the router picks one when the client did not, so prefill and decode share one stream. */
  seed: z.number().int().min(0).max(Number.MAX_SAFE_INTEGER),
  /** Most tokens to generate, the first (sampled by prefill) included. */
  maxTokens: z.number().int().min(1),
  stopTokenIds: z.array(tokenId),
  ignoreEos: z.boolean(),
  /** null = no logprobs; N = the sampled token's logprob plus the N best alternatives. */
  logprobs: z.number().int().min(0).max(MAX_LOGPROBS).nullable(),
  // Penalties and filters (vLLM's), present only when they change sampling, so a job without them is
  // exactly what older workers take. The engine checks them again (validatePenaltyParams).
  presencePenalty: z.number().min(-2).max(2).optional(),
  frequencyPenalty: z.number().min(-2).max(2).optional(),
  repetitionPenalty: z.number().gt(0).lte(2).optional(),
  /** [token id, bias] pairs, ascending ids. */
  logitBias: z
    .array(z.tuple([tokenId, z.number().min(-100).max(100)]))
    .max(1024)
    .optional(),
  minP: z.number().min(0).max(1).optional(),
  minTokens: z.number().int().min(0).optional(),
  /** A migrated attempt: the last N prompt tokens are the request's earlier output. */
  priorOutputTokens: z.number().int().min(0).optional(),
  /** Constrained decoding: a grammar spec's JSON text (GenerationParams.grammar; the engine's MAX_GRAMMAR_CHARS bounds it too, and checks it). */
  grammar: z
    .string()
    .min(1)
    .max(256 * 1024)
    .optional(),
});

export const prefillJobSchema = z.strictObject({
  version: z.literal(PREFILL_JOB_VERSION),
  /** `req-<uuid>`; also the BullMQ job id, so a request is queued at most once. */
  requestId: z
    .string()
    .min(1)
    .max(256)
    .regex(/^[^:\s]+$/, "must not contain ':' or whitespace"),
  /** The prompt exactly as the model sees it (BOS, chat template already applied). */
  promptTokenIds: z.array(tokenId).min(1),
  sampling: prefillSamplingSchema,
  /** gRPC host:port of the decode instance the router opened Decode.Stream on. */
  decodeAddress: z.string().regex(/^.+:\d{1,5}$/, "must be host:port"),
  /** Ms since the epoch after which the work is useless (the client's request has timed out). */
  deadlineUnixMs: z.number().int().positive(),
  /** The deployment's precision profile; a worker running another profile refuses the job. */
  precision: z.enum(PRECISIONS),
  /** When the router enqueued it (ms since the epoch), for queue-wait accounting. */
  enqueuedAtMs: z.number().int().nonnegative(),
  /**
   * The client's cache_salt (vLLM's), absent when none: prefill must mix it into this prompt's prefix-cache
   * keys (prefixBlockHashes' salt), so only requests with the same salt share cached blocks.
   */
  cacheSalt: z.string().min(1).max(256).optional(),
});

export type PrefillSampling = z.infer<typeof prefillSamplingSchema>;
export type PrefillJob = z.infer<typeof prefillJobSchema>;

/** `data` as a PrefillJob, or InvalidArgumentError naming the first bad field. */
export function parsePrefillJob(data: unknown): PrefillJob {
  const r = prefillJobSchema.safeParse(data);
  if (r.success) return r.data;
  const issue = r.error.issues[0]!;
  const path = issue.path.length === 0 ? "job" : issue.path.join(".");
  throw new InvalidArgumentError(`bad prefill job: ${path}: ${issue.message}`);
}

/**
 * Retries for transient failures (a decode or expert-host briefly unavailable, a full decode cache):
 * three attempts, 250 ms then 500 ms apart. Bad jobs skip these (the worker throws UnrecoverableError).
 * Finished jobs are kept a few minutes for inspection, then removed.
 */
export const PREFILL_JOB_OPTIONS: Readonly<DefaultJobOptions> = Object.freeze({
  attempts: 3,
  backoff: { type: "exponential", delay: 250 },
  removeOnComplete: { age: 300, count: 10_000 },
  removeOnFail: { age: 3_600, count: 10_000 },
});

/**
 * How prefill workers hold their jobs, so that a worker that dies (kill -9, OOM, node lost) gives its jobs
 * back within seconds: an active job's lock lasts `lockDuration` and the worker renews it every half of
 * that; every `stalledInterval` each worker looks for active jobs whose lock expired (their worker is
 * gone) and puts them back in the queue, at most `maxStalledCount` times per job before failing it. So a
 * dead worker's jobs run again elsewhere after lockDuration + stalledInterval at the latest.
 * The lock is renewed by a timer on the worker's event loop: lockDuration must stay well above the
 * longest time one prefill batch keeps that loop busy, or live jobs are taken for stalled and run twice
 * (harmless, since decode takes a request's KV once and answers a duplicate with ALREADY_EXISTS, which
 * prefill counts as done, but wasted work).
 */
export const PREFILL_WORKER_OPTIONS = Object.freeze({
  lockDuration: 10_000,
  stalledInterval: 2_500,
  maxStalledCount: 2,
});

/**
 * BullMQ connection options for a redis:// or rediss:// URL. maxRetriesPerRequest null is what BullMQ
 * requires for Worker and QueueEvents (blocking) connections; producers get it too so a Redis blip
 * delays an enqueue rather than failing it.
 */
export function redisConnection(url: string): ConnectionOptions {
  let u: URL;
  try {
    u = new URL(url);
  } catch {
    throw new InvalidArgumentError(`Redis URL "${url}" is not a URL (expected redis://host:port[/db])`);
  }
  if (u.protocol !== "redis:" && u.protocol !== "rediss:") {
    throw new InvalidArgumentError(`Redis URL "${url}" must start with redis:// or rediss://`);
  }
  const db = u.pathname.length > 1 ? Number(u.pathname.slice(1)) : 0;
  if (!Number.isInteger(db) || db < 0) throw new InvalidArgumentError(`Redis URL "${url}": database "${u.pathname.slice(1)}" is not a number`);
  return {
    host: u.hostname.replace(/^\[(.*)\]$/, "$1") || "127.0.0.1",
    port: u.port === "" ? 6379 : Number(u.port),
    db,
    ...(u.username ? { username: decodeURIComponent(u.username) } : {}),
    ...(u.password ? { password: decodeURIComponent(u.password) } : {}),
    ...(u.protocol === "rediss:" ? { tls: {} } : {}),
    maxRetriesPerRequest: null,
  };
}

/** A queue prefix must be a plain Redis key segment. */
export function validateQueuePrefix(prefix: string): string {
  if (!/^[A-Za-z0-9_.{}-]+$/.test(prefix)) {
    throw new InvalidArgumentError(`queue prefix "${prefix}" may only hold letters, digits and _ . - { }`);
  }
  return prefix;
}

const CODE_NAMES = new Map<number, string>(Object.entries(Code).map(([name, code]) => [code, name]));

/** The Error message a worker fails a job with: `<CODE>: <message>`. */
export function jobFailureMessage(err: MoelaError): string {
  return `${CODE_NAMES.get(err.code) ?? "INTERNAL"}: ${err.message}`;
}

/** The code and message of a BullMQ failedReason written by jobFailureMessage (else INTERNAL). */
export function parseJobFailure(failedReason: string): { code: Code; message: string } {
  const m = /^([A-Z_]+): ([\s\S]*)$/.exec(failedReason);
  const code = m === null ? undefined : (Code as Record<string, Code>)[m[1]!];
  if (m === null || code === undefined) return { code: Code.INTERNAL, message: failedReason };
  return { code, message: m[2]! };
}

/** The prefill queue as a producer (the router) opens it: PREFILL_JOB_OPTIONS are every job's defaults. */
export function createPrefillQueue(redisUrl: string, prefix: string = DEFAULT_QUEUE_PREFIX): Queue {
  return new Queue(PREFILL_QUEUE, {
    connection: redisConnection(redisUrl),
    prefix: validateQueuePrefix(prefix),
    defaultJobOptions: { ...PREFILL_JOB_OPTIONS },
  });
}

/** BullMQ's largest priority (2^21). */
export const MAX_PRIORITY = 2 ** 21;

/**
 * Enqueue a prefill job under its request id (a request is queued at most once). `priority` is BullMQ's:
 * lower runs first, and 0 (none) runs before any explicit priority.
 */
export async function enqueuePrefill(queue: Queue, job: PrefillJob, priority = 0): Promise<void> {
  if (!(Number.isInteger(priority) && priority >= 0 && priority <= MAX_PRIORITY)) {
    throw new InvalidArgumentError(`priority must be an integer in [0, ${MAX_PRIORITY}], got ${priority}`);
  }
  await queue.add(PREFILL_JOB_NAME, job, { jobId: job.requestId, ...(priority > 0 ? { priority } : {}) });
}
