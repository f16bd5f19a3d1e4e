/**
 * "Every parameter that prefill or decode would refuse is refused by the router first, with a 400 naming the
 * field" (issue 10), checked against the downstream's own code rather than a copy of its numbers:
 *
 * - downstream(job) runs a prefill job the way the cluster does: the job schema (parsePrefillJob, prefill's
 *   first check), prefill's engine (newSequence with the job's parameters, mapped by the worker's own
 *   generationParams, services/prefill/src/worker.ts), then a whole KV transfer through the real protobuf wire
 *   (frameToWire -> PushRequest bytes -> frameFromWire) into a real decode-side KvInbox on an engine of the
 *   same model: KvBegin's checks (decode's engine.newSequence on what the wire delivered) and KvEnd's.
 * - Probe values come from the job schema's bounds (zod's minValue / maxValue / isInt of every numeric
 *   sampling field, the logit_bias tuple, cache_salt's lengths): each bound and the nearest value past it,
 *   plus float32 edges (the wire carries temperature, top_p, the penalties and logit_bias as float32),
 *   wrong JSON types, 1e400 (Infinity), and the engine's own limits (vocabulary, context).
 * - For each probe: the router (real, in-process, real Redis, a stand-in prefill worker that keeps the jobs,
 *   a scripted decode) either answers 400 naming the field, or accepts, and then every job it enqueued passes
 *   downstream() and decode continues with exactly the sampling values prefill used. A probe downstream
 *   refuses as such must be a 400, unless the router normalised it to a value downstream takes. Every
 *   sampling field of the job schema is probed (a new one without probes fails the test), and each has at
 *   least one value downstream refuses that the router refuses first.
 */
import { randomUUID } from "node:crypto";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { z } from "zod";
import { Code, createLogger, type MoelaError } from "@moela/core";
import { DeepseekModel, Engine, type GenerationParams } from "@moela/engine";
import { frameFromWire, frameToWire, KvInbox, KvSender, kvTransferMeta, type KvConnector, type KvTransferMeta } from "@moela/kv-transfer";
import { createInProcessExperts, precisionProfile } from "@moela/moe-dispatch";
import { MAX_BATCH_PROMPTS, MAX_CHOICES, MAX_STOP_STRINGS } from "@moela/openai-api";
import { GenerateClient, PushRequest, type GenerateRequest, type GenerateResponse } from "@moela/proto-gen";
import { connect, serverStreamCall } from "@moela/rpc";
import { createPrefillQueue, parsePrefillJob, prefillJobSchema, prefillSamplingSchema, type PrefillJob } from "@moela/scheduler";
import type { Queue, Worker } from "bullmq";
import { generationParams } from "../../../services/prefill/src/worker.js";
import { startRouter, type StartedRouter } from "../../../services/router/src/main.js";
import {
  closeRouterRig,
  lengthStream,
  REDIS_URL as REDIS,
  ScriptedDecode,
  standInPrefill,
  testRouterConfig,
  TINY_MODEL_DIR as MODEL,
  type DecodeScript,
} from "../../helpers/router-rig.js";

const silent = createLogger("downstream-bounds-test", process.env.TEST_LOG ?? "silent");
const PROMPT = [5, 6, 7];

type Json = null | boolean | number | string | Json[] | { [k: string]: Json };
type Verdict = { ok: true; sent: GenerationParams; received: GenerationParams } | { ok: false; where: string; reason: string };

// ---- the downstream: job schema, prefill's engine, the wire, decode's receiver --------------------------------

let model: DeepseekModel;
let prefillEngine: Engine;
let decodeEngine: Engine;
let inbox: KvInbox;
const admitted = new Map<string, KvTransferMeta>();
let transfers = 0;

/** A connector whose every frame crosses the real protobuf encoding into `inbox`. */
const wire: KvConnector = {
  open() {
    const receiver = inbox.open();
    return {
      outcome: receiver.done,
      send: async (f) => {
        receiver.receive(frameFromWire(PushRequest.decode(PushRequest.encode(frameToWire(f)).finish())));
      },
      end: () => receiver.close(),
      cancel: (reason) => receiver.abort({ code: Code.CANCELLED, reason }),
    };
  },
};

const messageOf = (err: unknown): string => (err instanceof Error ? err.message : String(err));

/** Whether the cluster's prefill and decode take `data` as a job, and what decode continued with. */
async function downstream(data: unknown): Promise<Verdict> {
  let job: PrefillJob;
  try {
    job = parsePrefillJob(data);
  } catch (err) {
    return { ok: false, where: "job schema", reason: messageOf(err) };
  }
  const params = generationParams(job);
  let seq;
  try {
    seq = prefillEngine.newSequence(job.requestId, job.promptTokenIds, params);
  } catch (err) {
    return { ok: false, where: "prefill", reason: messageOf(err) };
  }
  const transferId = `t-${++transfers}`;
  const sender = new KvSender(wire);
  try {
    try {
      await sender.begin(
        kvTransferMeta(prefillEngine, seq, { transferId, requestId: job.requestId, modelId: "tiny-v3", logprobs: job.sampling.logprobs !== null }),
      );
    } catch (err) {
      // The wire cannot carry it (a uint32 field past 2^32): prefill's KvBegin fails.
      return { ok: false, where: "prefill's KvBegin", reason: messageOf(err) };
    }
    try {
      await prefillEngine.prefill([seq], { kvSink: sender });
    } catch (err) {
      sender.abort(messageOf(err));
      return { ok: false, where: "prefill's forward pass", reason: messageOf(err) };
    }
    const outcome = await sender.end(seq.snapshot());
    if (!outcome.ok) return { ok: false, where: "decode", reason: outcome.failure.reason };
  } finally {
    prefillEngine.release(seq);
  }
  return { ok: true, sent: params, received: admitted.get(transferId)!.params };
}

// ---- the router, its Redis queue, a stand-in prefill and a scripted decode ---------------------------------

/** Streams max_tokens of the job's prompt tokens for each request, once its job arrived. */
const promptTokens: DecodeScript = async function* (job) {
  yield* lengthStream(job, (k) => job.promptTokenIds[k % job.promptTokenIds.length]!);
};

let decode: ScriptedDecode;
let router: StartedRouter;
let queue: Queue;
let worker: Worker;
const prefix = `moela-test-downstream-bounds-${randomUUID()}`;
/** Every job the router enqueued, by its request id. */
const jobs = new Map<string, PrefillJob>();

beforeAll(async () => {
  model = DeepseekModel.load(MODEL, { kvDtype: precisionProfile("exact").kvDtype });
  model.setExpertExecutor(createInProcessExperts(model, 1, "exact").executor);
  prefillEngine = new Engine(model, { blockSize: 16, numBlocks: 256 });
  decodeEngine = new Engine(model, { blockSize: 16, numBlocks: 256 });
  inbox = new KvInbox({
    engine: decodeEngine,
    modelId: "tiny-v3",
    onAdmit: (_seq, meta, _stats, hold) => {
      admitted.set(meta.transferId, meta);
      hold.release("finished");
    },
  });
  decode = await new ScriptedDecode(promptTokens).start(silent);
  router = await startRouter(testRouterConfig(prefix, [decode.address]), { logger: silent, shutdownGraceMs: 500, statusIntervalMs: 100 });
  queue = createPrefillQueue(REDIS, prefix);
  // Records the job as the router wrote it (raw data: the test runs the schema itself) and lets decode stream.
  worker = standInPrefill(
    prefix,
    (data) => {
      const raw = data as PrefillJob;
      jobs.set(raw.requestId, raw);
      decode.job(raw.requestId).resolve(raw);
    },
    16,
  );
  await worker.waitUntilReady();
});

afterAll(async () => {
  await closeRouterRig({ router, worker, queue, decode: [decode?.server] });
});

interface Answer {
  readonly status: number;
  readonly param: string | null;
  readonly message: string;
  /** The jobs the router enqueued for it (accepted requests). */
  readonly jobs: PrefillJob[];
}

async function send(path: "/v1/completions" | "/v1/chat/completions", body: string): Promise<Answer> {
  const res = await fetch(`${router.httpUrl}${path}`, { method: "POST", headers: { "content-type": "application/json" }, body });
  const text = await res.text();
  if (res.status !== 200) {
    const e = (JSON.parse(text) as { error: { param: string | null; message: string } }).error;
    return { status: res.status, param: e.param, message: e.message, jobs: [] };
  }
  const id = res.headers.get("x-moela-request-id")!;
  const mine = [...jobs.values()].filter((j) => j.requestId === id || j.requestId.startsWith(`${id}.`));
  return { status: 200, param: null, message: "", jobs: mine };
}

// ---- probes ----------------------------------------------------------------------------------------------

/** A numeric zod schema under optional/nullable wrappers. */
function numberSchema(s: z.ZodType): z.ZodNumber {
  let t: z.ZodType = s;
  while (t instanceof z.ZodOptional || t instanceof z.ZodNullable) t = t.unwrap() as z.ZodType;
  if (!(t instanceof z.ZodNumber)) throw new Error(`not a number schema: ${t.constructor.name}`);
  return t;
}

/** The adjacent double below / above x (x itself when not finite). */
function nextDouble(x: number, dir: 1 | -1): number {
  if (x === 0) return dir * Number.MIN_VALUE;
  const b = new Float64Array([x]);
  const u = new BigInt64Array(b.buffer);
  u[0] = u[0]! + BigInt((x > 0 ? 1 : -1) * dir);
  return b[0]!;
}

/** Each bound of a numeric schema and the nearest value past it (integers: +-1 and a fraction). */
function boundaryValues(s: z.ZodNumber): number[] {
  const out: number[] = [];
  const int = s.isInt === true;
  for (const [bound, dir] of [
    [s.minValue, -1],
    [s.maxValue, 1],
  ] as const) {
    if (bound === null || !Number.isFinite(bound)) continue;
    out.push(bound, int ? bound + dir : nextDouble(bound, dir));
  }
  if (int) out.push((s.minValue ?? 0) + 0.5);
  return out;
}

/** Values just past float32's resolution at the edges the cluster cares about (what the wire does to them). */
const FLOAT32_EDGES = [1e-46, 1e-45, 2 ** -149, 1e-5, 1.00000001e-5, 0.7, 0.95, 1.9999999999, -1.9999999999, 99.99999999];

interface Probe {
  /** The HTTP field (the param a 400 must name). */
  readonly field: string;
  /** The JSON text of the field's value. */
  readonly json: string;
  /** The body's other fields. */
  readonly base?: Record<string, Json>;
  readonly path?: "/v1/completions" | "/v1/chat/completions";
  /** The job the router would write if it passed the value through unchanged. */
  readonly raw: (job: PrefillJob) => unknown;
}

const withSampling = (job: PrefillJob, over: Record<string, unknown>): unknown => ({ ...job, sampling: { ...job.sampling, ...over } });
/** JSON text of a number as a client would write it (1e400 stays 1e400: JSON.parse makes it Infinity). */
const num = (v: number): string => (Number.isFinite(v) ? JSON.stringify(v) : v > 0 ? "1e400" : "-1e400");

const WRONG_TYPES = ['"1"', "true", "[1]", '{"a": 1}', "1e400"];
const VOCAB = 1024;
const CONTEXT = 2048;

/** The HTTP field of each sampling field of the job, and how its value lands in the job. */
const SAMPLING_FIELDS: Record<string, { http: string; toJob: (v: unknown) => Record<string, unknown> } | "internal" | "derived"> = {
  temperature: { http: "temperature", toJob: (v) => ({ temperature: v }) },
  topP: { http: "top_p", toJob: (v) => ({ topP: v }) },
  topK: { http: "top_k", toJob: (v) => ({ topK: v }) },
  seed: { http: "seed", toJob: (v) => ({ seed: v }) },
  maxTokens: { http: "max_tokens", toJob: (v) => ({ maxTokens: v }) },
  stopTokenIds: { http: "stop_token_ids", toJob: (v) => ({ stopTokenIds: v }) },
  ignoreEos: { http: "ignore_eos", toJob: (v) => ({ ignoreEos: v }) },
  logprobs: { http: "logprobs", toJob: (v) => ({ logprobs: v }) },
  presencePenalty: { http: "presence_penalty", toJob: (v) => ({ presencePenalty: v }) },
  frequencyPenalty: { http: "frequency_penalty", toJob: (v) => ({ frequencyPenalty: v }) },
  repetitionPenalty: { http: "repetition_penalty", toJob: (v) => ({ repetitionPenalty: v }) },
  logitBias: { http: "logit_bias", toJob: (v) => ({ logitBias: Object.entries(v as Record<string, unknown>).map(([id, b]) => [Number(id), b]) }) },
  minP: { http: "min_p", toJob: (v) => ({ minP: v }) },
  minTokens: { http: "min_tokens", toJob: (v) => ({ minTokens: v }) },
  // Migrations only; the router never takes it from a client (gRPC refuses it: handlers.ts).
  priorOutputTokens: "internal",
  // Built by the router from response_format / tools, never taken from a client as such: the router's refusals of
  // those are tested in test/unit/openai-api/structured.test.ts, and test/e2e/structured-output.test.ts runs what
  // it builds through prefill and decode.
  grammar: "derived",
};

/**
 * The probes' max_tokens: 3 leaves room, after prefill's token, for a draft and the token after it, so prefill's
 * transfer carries a draft (and its probabilities, where it samples) for decode to check.
 */
const PROBE_MAX_TOKENS = 3;

function probes(): Probe[] {
  const out: Probe[] = [];
  const shape = prefillSamplingSchema.shape;
  const BASE: Record<string, Json> = { prompt: PROMPT, max_tokens: PROBE_MAX_TOKENS };
  for (const [name, spec] of Object.entries(SAMPLING_FIELDS)) {
    if (spec === "internal" || spec === "derived") continue;
    const schema = shape[name as keyof typeof shape] as z.ZodType;
    const scalar = (values: readonly number[], extra: readonly string[] = []): void => {
      for (const v of values) {
        const base = name === "minTokens" ? { ...BASE, max_tokens: 100 } : BASE;
        out.push({ field: spec.http, json: num(v), base, raw: (job) => withSampling(job, spec.toJob(Number.isFinite(v) ? v : Number.POSITIVE_INFINITY)) });
      }
      for (const json of extra) {
        const value: unknown = json === "1e400" ? Number.POSITIVE_INFINITY : JSON.parse(json);
        out.push({ field: spec.http, json, base: BASE, raw: (job) => withSampling(job, spec.toJob(value)) });
      }
    };
    switch (name) {
      case "stopTokenIds": {
        const id = numberSchema((schema as z.ZodArray<z.ZodNumber>).element);
        for (const v of [...boundaryValues(id), VOCAB - 1, VOCAB]) {
          out.push({ field: spec.http, json: `[${num(v)}]`, base: BASE, raw: (job) => withSampling(job, { stopTokenIds: [v] }) });
        }
        out.push({ field: spec.http, json: '["1"]', base: BASE, raw: (job) => withSampling(job, { stopTokenIds: ["1"] }) });
        break;
      }
      case "ignoreEos":
        for (const json of ['"yes"', "1"]) out.push({ field: spec.http, json, base: BASE, raw: (job) => withSampling(job, { ignoreEos: JSON.parse(json) }) });
        break;
      case "logitBias": {
        const [idSchema, biasSchema] = ((schema as z.ZodOptional<z.ZodArray<z.ZodTuple>>).unwrap().element.def.items as z.ZodType[]).map(numberSchema);
        for (const b of [...boundaryValues(biasSchema!), ...FLOAT32_EDGES]) {
          out.push({ field: spec.http, json: `{"5": ${num(b)}}`, base: BASE, raw: (job) => withSampling(job, { logitBias: [[5, b]] }) });
        }
        for (const id of [...boundaryValues(idSchema!).filter((v) => Number.isInteger(v) && v >= 0), VOCAB - 1, VOCAB]) {
          out.push({ field: spec.http, json: `{"${id}": 1}`, base: BASE, raw: (job) => withSampling(job, { logitBias: [[id, 1]] }) });
        }
        out.push({ field: spec.http, json: '{"5": "1"}', base: BASE, raw: (job) => withSampling(job, { logitBias: [[5, "1"]] }) });
        break;
      }
      case "logprobs": {
        const n = numberSchema(schema);
        scalar(boundaryValues(n), ['"1"', "1e400"]);
        // Chat says it as top_logprobs (with logprobs true).
        for (const v of boundaryValues(n)) {
          out.push({
            field: "top_logprobs",
            json: num(v),
            path: "/v1/chat/completions",
            base: { messages: [{ role: "user", content: "hi" }], max_tokens: PROBE_MAX_TOKENS, logprobs: true },
            raw: (job) => withSampling(job, { logprobs: v }),
          });
        }
        break;
      }
      case "maxTokens":
        scalar([...boundaryValues(numberSchema(schema)), CONTEXT - PROMPT.length, CONTEXT - PROMPT.length + 1, 2 ** 32], WRONG_TYPES);
        // Chat's newer name for it.
        for (const v of [...boundaryValues(numberSchema(schema)), CONTEXT]) {
          out.push({
            field: "max_completion_tokens",
            json: num(v),
            path: "/v1/chat/completions",
            base: { messages: [{ role: "user", content: "hi" }] },
            raw: (job) => withSampling(job, { maxTokens: v }),
          });
        }
        break;
      case "temperature":
      case "topP":
      case "presencePenalty":
      case "frequencyPenalty":
      case "repetitionPenalty":
        scalar([...boundaryValues(numberSchema(schema)), ...FLOAT32_EDGES], WRONG_TYPES);
        break;
      case "topK":
        scalar([...boundaryValues(numberSchema(schema)), VOCAB - 1, VOCAB, 2 ** 32], WRONG_TYPES);
        break;
      default:
        scalar(boundaryValues(numberSchema(schema)), WRONG_TYPES);
    }
  }
  // The job's other client-given field.
  const salt = (prefillJobSchema.shape.cacheSalt as z.ZodOptional<z.ZodString>).unwrap();
  for (const len of [salt.minLength!, salt.minLength! - 1, salt.maxLength!, salt.maxLength! + 1]) {
    const s = "s".repeat(len);
    out.push({
      field: "cache_salt",
      json: JSON.stringify(s),
      base: { prompt: PROMPT, max_tokens: PROBE_MAX_TOKENS },
      raw: (job) => ({ ...job, cacheSalt: s }),
    });
  }
  // Prompt ids: the vocabulary (the schema takes any uint32; the engines do not).
  for (const id of [VOCAB - 1, VOCAB, 2 ** 32]) {
    out.push({ field: "prompt", json: `[5, ${id}]`, base: { max_tokens: PROBE_MAX_TOKENS }, raw: (job) => ({ ...job, promptTokenIds: [5, id] }) });
  }
  return out;
}

/** The sampling values decode must continue with exactly as prefill used them (float32 on the wire). */
const WIRE_FLOATS = ["temperature", "topP", "presencePenalty", "frequencyPenalty", "repetitionPenalty", "logitBias", "minP"] as const;
const floatsOf = (p: GenerationParams): Partial<GenerationParams> => Object.fromEntries(WIRE_FLOATS.filter((k) => p[k] !== undefined).map((k) => [k, p[k]]));

describe("the router refuses first what prefill or decode would refuse", () => {
  let baseline: PrefillJob;

  beforeAll(async () => {
    const a = await send("/v1/completions", JSON.stringify({ prompt: PROMPT, max_tokens: PROBE_MAX_TOKENS }));
    expect(a.status).toBe(200);
    baseline = a.jobs[0]!;
    expect((await downstream(baseline)).ok).toBe(true);
  });

  it("probes every sampling field of the job schema", () => {
    const inSchema = Object.keys(prefillSamplingSchema.shape);
    // A field added to the job needs its HTTP field and probes in SAMPLING_FIELDS.
    expect(inSchema.filter((k) => !(k in SAMPLING_FIELDS))).toEqual([]);
    expect(Object.keys(SAMPLING_FIELDS).filter((k) => !inSchema.includes(k))).toEqual([]);
  });

  it("downstream() itself refuses what the cluster refuses (schema, prefill's engine, decode's receiver)", async () => {
    expect(await downstream(withSampling(baseline, { topP: 0 }))).toMatchObject({ ok: false, where: "job schema" });
    expect(await downstream({ ...baseline, promptTokenIds: [5, VOCAB] })).toMatchObject({
      ok: false,
      where: "prefill",
      reason: expect.stringMatching(/outside the vocabulary/),
    });
    // top_p 1e-46 is positive as a double, 0 as the float32 KvBegin carries: decode refuses it.
    expect(await downstream(withSampling(baseline, { topP: 1e-46, temperature: 1 }))).toMatchObject({
      ok: false,
      where: "decode",
      reason: expect.stringMatching(/top_p must be in \(0, 1\]/),
    });
  });

  it("answers every probe with a 400 naming the field, or with jobs the downstream takes exactly", { timeout: 300_000 }, async () => {
    const all = probes();
    const refusedFirst = new Map<string, number>();
    const normalised: string[] = [];
    const problems: string[] = [];
    for (const p of all) {
      const what = `${p.field}=${p.json.length > 40 ? `${p.json.slice(0, 40)}...` : p.json}`;
      const raw = await downstream(p.raw(baseline));
      const body = `{${Object.entries(p.base ?? {})
        .map(([k, v]) => `${JSON.stringify(k)}: ${JSON.stringify(v)}, `)
        .join("")}${JSON.stringify(p.field)}: ${p.json}}`;
      const answer = await send(p.path ?? "/v1/completions", body);
      if (answer.status === 200) {
        if (answer.jobs.length === 0) problems.push(`${what}: accepted but no job was enqueued`);
        for (const job of answer.jobs) {
          const d = await downstream(job);
          if (!d.ok) problems.push(`${what}: the router accepted it and ${d.where} refuses its job: ${d.reason}`);
          else if (JSON.stringify(floatsOf(d.received)) !== JSON.stringify(floatsOf(d.sent))) {
            problems.push(`${what}: decode continues with ${JSON.stringify(floatsOf(d.received))}, prefill used ${JSON.stringify(floatsOf(d.sent))}`);
          }
        }
        if (!raw.ok) normalised.push(`${what} (${raw.where}: ${raw.reason})`);
      } else {
        if (answer.status !== 400 || answer.param !== p.field)
          problems.push(`${what}: ${answer.status} naming ${answer.param} (${answer.message}), expected 400 naming ${p.field}`);
        if (!raw.ok) refusedFirst.set(p.field, (refusedFirst.get(p.field) ?? 0) + 1);
      }
    }
    expect(problems).toEqual([]);
    // Every field has a value downstream refuses that the router refused first.
    const fields = new Set(all.map((p) => p.field));
    expect([...fields].filter((f) => !refusedFirst.has(f))).toEqual([]);
    // What the router takes although the raw value would fail downstream, because it rounds it to float32 first
    // (prefill and decode then both use that value).
    // What the router takes although the value as given would fail downstream, because it normalises it: a
    // temperature at the greedy threshold is rounded to float32 once (prefill and decode then both run it
    // greedy: unrounded, prefill samples and decode refuses the transfer), a top_k past the vocabulary is off.
    expect(normalised.map((n) => n.slice(0, n.indexOf(" (")))).toEqual([
      "temperature=0.00001",
      "temperature=0.0000100000001",
      "top_k=9007199254740991",
      "top_k=4294967296",
    ]);
  });

  it("n, best_of and a seed at 2^53 - 1: every choice's job passes the downstream (seed + k wraps)", async () => {
    const a = await send("/v1/completions", JSON.stringify({ prompt: PROMPT, max_tokens: 2, n: 3, seed: Number.MAX_SAFE_INTEGER, temperature: 0.5 }));
    expect(a.status).toBe(200);
    expect(a.jobs).toHaveLength(3);
    for (const job of a.jobs) expect(await downstream(job)).toMatchObject({ ok: true });
    expect(new Set(a.jobs.map((j) => j.sampling.seed)).size).toBe(3);
  });

  it.each([
    { name: "repetition_penalty 1e-7 (overflows a logit)", sampling: { repetitionPenalty: 1e-7 }, message: /repetition_penalty must be in \[0\.000001, 2\]/ },
    { name: "temperature 3", sampling: { temperature: 3 }, message: /temperature must be in \[0, 2\]/ },
    { name: "logprobs 21", sampling: { logprobs: 21 }, message: /logprobs must be in \[0, 20\]/ },
    { name: "max_tokens past the context", sampling: { maxTokens: CONTEXT }, message: /maximum context length is 2048 tokens/ },
  ])("gRPC Generate shares the bounds: $name -> INVALID_ARGUMENT naming the field", async ({ sampling, message }) => {
    const client = connect(GenerateClient, router.grpcAddress);
    try {
      const req: GenerateRequest = {
        model: "",
        requestId: "",
        priority: 0,
        cacheSalt: "",
        prompt: { $case: "tokenIds", value: { ids: PROMPT } },
        sampling: { topK: 0, maxTokens: 2, stop: [], stopTokenIds: [], ignoreEos: false, ...sampling },
      };
      const got = await (async () => {
        for await (const _ of serverStreamCall<GenerateResponse>((md, o) => client.generate(req, md, o))) {
          // drained
        }
        return null;
      })().catch((err: unknown) => err as MoelaError);
      expect(got?.code).toBe(Code.INVALID_ARGUMENT);
      expect(got?.message).toMatch(message);
    } finally {
      client.close();
    }
  });

  it.each([
    { field: "n", body: { prompt: PROMPT, n: 0 } },
    { field: "n", body: { prompt: PROMPT, n: MAX_CHOICES + 1 } },
    { field: "best_of", body: { prompt: PROMPT, n: 2, best_of: 1 } },
    { field: "best_of", body: { prompt: PROMPT, best_of: MAX_CHOICES + 1 } },
    { field: "stop", body: { prompt: PROMPT, stop: Array.from({ length: MAX_STOP_STRINGS + 1 }, (_, i) => `s${i}`) } },
    { field: "stop", body: { prompt: PROMPT, stop: [""] } },
    { field: "prompt", body: { prompt: Array.from({ length: MAX_BATCH_PROMPTS + 1 }, () => [5]) } },
  ])("the router's own bounds: $field -> 400 naming it", async ({ field, body }) => {
    const a = await send("/v1/completions", JSON.stringify(body));
    expect(a.status).toBe(400);
    expect(a.param).toBe(field);
  });
});
