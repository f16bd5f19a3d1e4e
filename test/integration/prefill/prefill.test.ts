/**
 * The prefill service against real neighbours: a real BullMQ queue on the local Redis (a unique prefix per
 * test, obliterated afterwards) and a decode-side KvInbox behind a real KvTransfer gRPC server on
 * 127.0.0.1:0. A job goes in, the worker prefills it and pushes its latent KV over gRPC; the admitted
 * sequence, stepped to the end by the decode-side engine, must give the same greedy tokens (and logprobs)
 * as the single-process engine. Also: batched prefill, bad jobs not retried, transient failures retried.
 */
import { randomUUID } from "node:crypto";
import { afterEach, beforeAll, describe, expect, it } from "vitest";
import { Code, createLogger } from "@moela/core";
import { DeepseekModel, Engine, type EmittedToken, type GenerationParams, type Sequence } from "@moela/engine";
import { grpcKvConnector, KvLedger, KvSender, kvTransferMeta } from "@moela/kv-transfer";
import { createServiceMetrics } from "@moela/metrics";
import { checkpointModelId, createInProcessExperts } from "@moela/moe-dispatch";
import { createPrefillQueue, enqueuePrefill, parseJobFailure, PREFILL_QUEUE, redisConnection, type PrefillJob } from "@moela/scheduler";
import { Job, QueueEvents, type Queue } from "bullmq";
import { startPrefill, type StartedPrefill } from "../../../services/prefill/src/main.js";
import { PrefillBatcher } from "../../../services/prefill/src/worker.js";
import { parseMetrics } from "../../helpers/cluster.js";
import { referenceRun } from "../../helpers/kv.js";
import { DecodeSide, prefillConfig, prefillJob, REDIS_URL as REDIS, singleProcessEngine, TINY_MODEL as MODEL } from "../../helpers/prefill.js";

const silent = createLogger("prefill-test", "silent");

const GREEDY: GenerationParams = { temperature: 0, topP: 1, topK: -1, seed: 1, maxTokens: 10, ignoreEos: true, topLogprobs: 2 };

const PROMPTS: number[][] = [[0, 17, 300, 42, 9, 511, 77, 3, 250, 128, 64, 900, 12], [0, 5, 6], Array.from({ length: 40 }, (_, i) => (i * 37 + 11) % 1024)];

function job(requestId: string, prompt: number[], decodeAddress: string, over: Partial<PrefillJob> = {}): PrefillJob {
  return prefillJob(requestId, prompt, decodeAddress, { maxTokens: GREEDY.maxTokens, deadlineMs: 60_000 }, over);
}

let refEngine: Engine;
const references = new Map<number, EmittedToken[]>();

beforeAll(async () => {
  refEngine = singleProcessEngine();
  for (const [i, p] of PROMPTS.entries()) references.set(i, await referenceRun(refEngine, p, GREEDY));
});

describe("prefill worker over a real queue and a real KV transfer", () => {
  let prefix: string;
  let queue: Queue;
  let events: QueueEvents;
  let decode: DecodeSide;
  let prefill: StartedPrefill | undefined;

  const start = async (): Promise<void> => {
    prefix = `moela-test-${randomUUID()}`;
    decode = await new DecodeSide().start();
    queue = createPrefillQueue(REDIS, prefix);
    events = new QueueEvents(PREFILL_QUEUE, { connection: redisConnection(REDIS), prefix });
    await events.waitUntilReady();
    // Small chunks: every prompt but the shortest is prefilled (and streamed) in several chunks.
    prefill = await startPrefill(prefillConfig(prefix, { prefillChunk: 8, concurrency: 4 }), { logger: silent });
  };

  afterEach(async () => {
    await prefill?.close();
    prefill = undefined;
    await events?.close();
    await queue?.obliterate({ force: true });
    await queue?.close();
    await decode?.close();
  });

  it("prefills queued prompts and the decode side continues them to the single-process engine's greedy tokens", async () => {
    await start();
    const ids = PROMPTS.map(() => `req-${randomUUID()}`);
    await Promise.all(PROMPTS.map((p, i) => enqueuePrefill(queue, job(ids[i]!, p, decode.address))));
    for (const [i, id] of ids.entries()) {
      const { seq } = await decode.admittedOf(id);
      const got = await decode.decodeToEnd(seq);
      const want = references.get(i)!;
      expect(got.map((t) => t.id)).toEqual(want.map((t) => t.id));
      got.forEach((t, k) => expect(Math.abs(t.logprob - want[k]!.logprob)).toBeLessThan(1e-4));
      // The first token's alternatives crossed the wire (proto floats): same ids, logprobs within 1e-4.
      expect(got[0]!.top!.map(([tid]) => tid)).toEqual(want[0]!.top!.map(([tid]) => tid));
      got[0]!.top!.forEach(([, lp], k) => expect(Math.abs(lp - want[0]!.top![k]![1])).toBeLessThan(1e-4));
      const done = await Job.fromId(queue, id);
      expect(await done!.waitUntilFinished(events)).toMatchObject({ firstTokenId: want[0]!.id });
    }
    expect(decode.failed).toEqual([]);
    // Every KV block the decode side reserved came back once the sequences finished.
    expect(decode.engine.cache.freeBlocks).toBe(decode.engine.cache.numBlocks);
    // Exactly one copy of the latent crossed: layers (4 + MTP) x prompt tokens x (64 + 16) f32 values.
    const body = await (await fetch(prefill!.metricsUrl)).text();
    const bytes = Number(/^moela_prefill_kv_transfer_bytes_total (\S+)$/m.exec(body)![1]);
    expect(bytes).toBe(PROMPTS.reduce((n, p) => n + 5 * p.length * 80 * 4, 0));
    expect(/^moela_prefill_jobs_total\{outcome="ok"\} 3$/m.test(body)).toBe(true);
    // Each job's time splits into its wait in the batcher and its transfer (KvBegin to the last acknowledgement).
    const samples = parseMetrics(body);
    expect(samples.get("moela_prefill_batch_wait_seconds_count")).toBe(3);
    expect(samples.get("moela_prefill_kv_transfer_seconds_count")).toBe(3);
    expect(samples.get("moela_prefill_kv_transfer_seconds_sum")).toBeGreaterThan(0);
  });

  it("a job that breaks the schema fails at once without retries (INVALID_ARGUMENT)", async () => {
    await start();
    const id = `req-${randomUUID()}`;
    const bad = { ...job(id, [1, 2, 3], decode.address), promptTokenIds: [] };
    await queue.add("prefill", bad, { jobId: id });
    const j = (await Job.fromId(queue, id))!;
    await expect(j.waitUntilFinished(events)).rejects.toThrow(/^INVALID_ARGUMENT: bad prefill job: promptTokenIds/);
    const failed = (await Job.fromId(queue, id))!;
    expect(failed.attemptsMade).toBe(1);
    expect(parseJobFailure(failed.failedReason).code).toBe(Code.INVALID_ARGUMENT);
  });

  it.each([
    { name: "another precision profile", over: { precision: "paper" as const }, code: Code.FAILED_PRECONDITION },
    { name: "a token id past the vocabulary", over: { promptTokenIds: [1, 5000] }, code: Code.INVALID_ARGUMENT },
    { name: "a deadline already passed", over: { deadlineUnixMs: Date.now() - 1 }, code: Code.DEADLINE_EXCEEDED },
    { name: "a prompt longer than --max-batch-tokens", over: { promptTokenIds: Array.from({ length: 300 }, () => 7) }, code: Code.INVALID_ARGUMENT },
  ])("a job with $name is not retried", async ({ over, code }) => {
    await start();
    const id = `req-${randomUUID()}`;
    await enqueuePrefill(queue, job(id, [1, 2, 3], decode.address, over));
    await expect((await Job.fromId(queue, id))!.waitUntilFinished(events)).rejects.toThrow();
    const failed = (await Job.fromId(queue, id))!;
    expect(failed.attemptsMade).toBe(1);
    expect(parseJobFailure(failed.failedReason).code).toBe(code);
    expect(decode.admitted.size).toBe(0);
  });

  it("an unreachable decode instance is retried with backoff, then fails UNAVAILABLE", async () => {
    await start();
    const id = `req-${randomUUID()}`;
    // Port 1 on loopback: nothing listens, the connection is refused.
    await enqueuePrefill(queue, job(id, PROMPTS[1]!, "127.0.0.1:1"));
    await expect((await Job.fromId(queue, id))!.waitUntilFinished(events)).rejects.toThrow(/^UNAVAILABLE: /);
    const failed = (await Job.fromId(queue, id))!;
    expect(failed.attemptsMade).toBe(3);
  });
});

/** A prefill engine without routed experts (chunks of 8), each prompt's sequence and its own KvSender towards `decode`. */
function batcherRig(decode: DecodeSide) {
  const model = DeepseekModel.load(MODEL, { routedExperts: () => false });
  model.setExpertExecutor(createInProcessExperts(MODEL, 1, "exact").executor);
  const engine = new Engine(model, { blockSize: 16, numBlocks: 64, prefillChunk: 8 });
  const { registry, m } = createServiceMetrics("prefill", { defaultMetrics: false });
  const connector = grpcKvConnector(decode.address);
  const ids = PROMPTS.map(() => `req-${randomUUID()}`);
  const seqs = PROMPTS.map((p, i) => engine.newSequence(ids[i]!, p, GREEDY));
  const senders = seqs.map(() => new KvSender(connector));
  const ledger = new KvLedger();
  /** Opens prompt `i`'s KV transfer. */
  const begin = (i: number) =>
    senders[i]!.begin(kvTransferMeta(engine, seqs[i]!, { transferId: `${ids[i]}.0`, requestId: ids[i]!, modelId: checkpointModelId(MODEL), logprobs: true }));
  /** A ledger hold on `s`'s prefill blocks, given back to the engine when freed. */
  const hold = (s: Sequence) =>
    ledger.hold(
      s.id,
      "prefill",
      () => {
        const n = s.blockTable.length;
        engine.release(s);
        return n;
      },
      () => s.blockTable.length,
    );
  return { engine, registry, m, connector, ids, seqs, senders, ledger, begin, hold };
}

describe("PrefillBatcher", () => {
  it("opens a sequence's KV transfer only when its batch is taken, not while it waits behind others", async () => {
    const decode = await new DecodeSide().start();
    try {
      const { engine, m, connector, seqs, senders, begin, hold } = batcherRig(decode);
      // A budget of the longest prompt per batch: the long third prompt waits for the engine.
      const batcher = new PrefillBatcher(engine, Math.max(...PROMPTS.map((p) => p.length)), m, silent);
      const events: string[] = [];
      // Record each engine.prefill call: what it computes, and when it has finished.
      const prefill = engine.prefill.bind(engine);
      engine.prefill = async (batch, opts) => {
        events.push(`compute ${batch.map((b) => seqs.indexOf(b)).join(",")}`);
        const r = await prefill(batch, opts);
        events.push("computed");
        return r;
      };
      const runs = seqs.map((s, i) =>
        batcher.submit(s, senders[i]!, hold(s), () => {
          events.push(`begin ${i}`);
          return begin(i);
        }),
      );
      await Promise.all(runs);
      // Prompts 0 and 1 fit the budget together; prompt 2 waits, and its transfer opens only when its turn comes.
      expect(events).toEqual(["begin 0", "begin 1", "compute 0,1", "computed", "begin 2", "compute 2", "computed"]);
      const outcomes = await Promise.all(seqs.map((s, i) => senders[i]!.end(s.snapshot())));
      expect(outcomes.every((o) => o.ok)).toBe(true);
      connector.close();
    } finally {
      await decode.close();
    }
  });

  it("runs sequences submitted together as one engine.prefill call, each to its own sender", async () => {
    const decode = await new DecodeSide().start();
    try {
      const { engine, registry, m, connector, ids, seqs, senders, ledger, begin, hold } = batcherRig(decode);
      const batcher = new PrefillBatcher(engine, 1024, m, silent);
      const holds = seqs.map(hold);
      const firsts = await Promise.all(seqs.map((s, i) => batcher.submit(s, senders[i]!, holds[i]!, () => begin(i))));
      // The batcher gives the blocks back through the ledger as soon as the rows are encoded.
      expect(holds.map((h) => h.releaseReason)).toEqual(seqs.map(() => "finished"));
      expect(ledger.heldBlocks).toBe(0);
      const outcomes = await Promise.all(seqs.map((s, i) => senders[i]!.end(s.snapshot())));
      expect(outcomes.every((o) => o.ok)).toBe(true);
      connector.close();
      expect(engine.cache.freeBlocks).toBe(engine.cache.numBlocks);
      const batches = (await registry.getSingleMetric("moela_prefill_batch_size")!.get()).values as { metricName?: string; value: number }[];
      expect(batches.find((v) => v.metricName === "moela_prefill_batch_size_count")!.value).toBe(1);
      expect(batches.find((v) => v.metricName === "moela_prefill_batch_size_sum")!.value).toBe(3);
      for (const [i, id] of ids.entries()) {
        expect(firsts[i]!.tokens[0]!.id).toBe(references.get(i)![0]!.id);
        const got = await decode.decodeToEnd((await decode.admittedOf(id)).seq);
        expect(got.map((t) => t.id)).toEqual(references.get(i)!.map((t) => t.id));
      }
    } finally {
      await decode.close();
    }
  });
});
