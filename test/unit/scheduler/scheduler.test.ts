/**
 * The scheduler's pure parts: the prefill job schema, failure encoding, Redis URLs, the decode pool's
 * membership and bookkeeping between polls, and admission. The policy plugins: policy.test.ts.
 */
import { describe, expect, it } from "vitest";
import { Code, InvalidArgumentError, MoelaError, ResourceExhaustedError, UnavailableError } from "@moela/core";
import {
  AdmissionController,
  DecodePool,
  jobFailureMessage,
  parseJobFailure,
  parsePrefillJob,
  PREFILL_JOB_VERSION,
  redisConnection,
  type Decision,
  type PrefillJob,
} from "@moela/scheduler";
import { instanceLoad } from "../../helpers/scheduler.js";

const goodJob: PrefillJob = {
  version: PREFILL_JOB_VERSION,
  requestId: "req-1234",
  promptTokenIds: [0, 5, 9],
  sampling: { temperature: 0, topP: 1, topK: -1, seed: 7, maxTokens: 16, stopTokenIds: [], ignoreEos: false, logprobs: null },
  decodeAddress: "127.0.0.1:7001",
  deadlineUnixMs: 1_900_000_000_000,
  precision: "exact",
  enqueuedAtMs: 1_800_000_000_000,
};

describe("prefill job schema", () => {
  it("accepts a well-formed job unchanged", () => {
    expect(parsePrefillJob(structuredClone(goodJob))).toEqual(goodJob);
  });

  it("carries the penalties, logit_bias, min_p, min_tokens and a migration's prior output unchanged", () => {
    const job: PrefillJob = {
      ...goodJob,
      sampling: {
        ...goodJob.sampling,
        presencePenalty: -2,
        frequencyPenalty: 0.5,
        repetitionPenalty: 1.2,
        logitBias: [
          [3, -100],
          [9, 1.5],
        ],
        minP: 0.1,
        minTokens: 4,
        priorOutputTokens: 2,
      },
    };
    expect(parsePrefillJob(structuredClone(job))).toEqual(job);
  });

  it.each([
    { name: "another schema version", patch: { version: 2 }, field: "version" },
    { name: "an empty prompt", patch: { promptTokenIds: [] }, field: "promptTokenIds" },
    { name: "a negative token id", patch: { promptTokenIds: [1, -2] }, field: "promptTokenIds.1" },
    { name: "a request id with a colon", patch: { requestId: "a:b" }, field: "requestId" },
    { name: "a decode address without a port", patch: { decodeAddress: "decode-0" }, field: "decodeAddress" },
    { name: "an unknown precision", patch: { precision: "fp4" }, field: "precision" },
    { name: "an extra field", patch: { surprise: 1 }, field: "job" },
    { name: "top_p 0", patch: { sampling: { ...goodJob.sampling, topP: 0 } }, field: "sampling.topP" },
    { name: "max_tokens 0", patch: { sampling: { ...goodJob.sampling, maxTokens: 0 } }, field: "sampling.maxTokens" },
    { name: "logprobs 21", patch: { sampling: { ...goodJob.sampling, logprobs: 21 } }, field: "sampling.logprobs" },
    { name: "no seed", patch: { sampling: { ...goodJob.sampling, seed: undefined } }, field: "sampling.seed" },
    { name: "a presence penalty of 3", patch: { sampling: { ...goodJob.sampling, presencePenalty: 3 } }, field: "sampling.presencePenalty" },
    { name: "a repetition penalty of 0", patch: { sampling: { ...goodJob.sampling, repetitionPenalty: 0 } }, field: "sampling.repetitionPenalty" },
    { name: "a logit bias of 101", patch: { sampling: { ...goodJob.sampling, logitBias: [[3, 101]] } }, field: "sampling.logitBias.0.1" },
    { name: "min_p above 1", patch: { sampling: { ...goodJob.sampling, minP: 1.5 } }, field: "sampling.minP" },
    { name: "fractional min_tokens", patch: { sampling: { ...goodJob.sampling, minTokens: 0.5 } }, field: "sampling.minTokens" },
  ])("refuses $name, naming $field", ({ patch, field }) => {
    const bad = { ...structuredClone(goodJob), ...patch };
    expect(() => parsePrefillJob(bad)).toThrow(InvalidArgumentError);
    expect(() => parsePrefillJob(bad)).toThrow(new RegExp(`bad prefill job: ${field.replace(".", "\\.")}`));
  });
});

describe("job failures carry their gRPC code through BullMQ's failedReason", () => {
  it.each([
    new UnavailableError("decode 127.0.0.1:7001 unreachable"),
    new InvalidArgumentError("bad prefill job: x"),
    new MoelaError("too late", Code.DEADLINE_EXCEEDED),
    new MoelaError("multi\nline", Code.RESOURCE_EXHAUSTED),
  ])("round-trips $message", (err) => {
    expect(parseJobFailure(jobFailureMessage(err))).toEqual({ code: err.code, message: err.message });
  });

  it("reads anything else as INTERNAL", () => {
    expect(parseJobFailure("job stalled more than allowable limit")).toEqual({ code: Code.INTERNAL, message: "job stalled more than allowable limit" });
  });
});

describe("redisConnection", () => {
  it("parses host, port, db and credentials; BullMQ workers need maxRetriesPerRequest null", () => {
    expect(redisConnection("redis://u:p%40ss@10.0.0.2:6380/3")).toEqual({
      host: "10.0.0.2",
      port: 6380,
      db: 3,
      username: "u",
      password: "p@ss",
      maxRetriesPerRequest: null,
    });
    expect(redisConnection("redis://127.0.0.1")).toEqual({ host: "127.0.0.1", port: 6379, db: 0, maxRetriesPerRequest: null });
  });
  it.each(["127.0.0.1:6379", "http://x:1", "redis://h/abc"])("refuses %s", (url) => {
    expect(() => redisConnection(url)).toThrow(InvalidArgumentError);
  });
});

const load = instanceLoad;
const need = { promptTokens: 20, maxTokens: 11 }; // 20 + 11 + 1 speculative row = 32 positions = 2 blocks of 16

describe("DecodePool", () => {
  it("spreads a burst between polls, then forgets reservations the next report covers", async () => {
    const reports = new Map([
      ["a", load({ freeKvBlocks: 10 })],
      ["b", load({ freeKvBlocks: 10 })],
    ]);
    const pool = new DecodePool({ addresses: ["a", "b"], fetchStatus: async (address) => reports.get(address)! });
    await pool.pollOnce();
    const picks = Array.from({ length: 4 }, () => pool.choose({ promptTokens: 10, maxTokens: 5 }).address);
    expect(picks).toEqual(["a", "b", "a", "b"]);
    expect(pool.candidates().map((c) => c.reservedBlocks)).toEqual([2, 2]);
    await new Promise((r) => setTimeout(r, 5));
    await pool.pollOnce();
    expect(pool.candidates().map((c) => c.reservedBlocks)).toEqual([0, 0]);
    await pool.close();
  });

  it("a failed poll or a reported failure makes an instance unhealthy until the next good poll", async () => {
    let up = false;
    const pool = new DecodePool({
      addresses: ["a", "b"],
      fetchStatus: async (address) => {
        if (address === "a" && !up) throw new UnavailableError("connection refused");
        return load();
      },
    });
    await pool.pollOnce();
    expect(pool.candidates().map((c) => [c.address, c.healthy, c.error])).toEqual([
      ["a", false, "connection refused"],
      ["b", true, undefined],
    ]);
    expect(pool.choose(need).address).toBe("b");
    pool.markUnavailable("b", "stream failed: UNAVAILABLE");
    expect(() => pool.choose(need)).toThrow(UnavailableError);
    up = true;
    await pool.pollOnce();
    expect(pool.candidates().every((c) => c.healthy)).toBe(true);
    await pool.close();
  });

  it("a report older than staleAfterMs makes an instance unhealthy", async () => {
    const pool = new DecodePool({ addresses: ["a"], fetchStatus: async () => load(), staleAfterMs: 1_000 });
    await pool.pollOnce();
    expect(pool.candidates(Date.now())[0]!.healthy).toBe(true);
    expect(pool.candidates(Date.now() + 5_000)[0]!.healthy).toBe(false);
    await pool.close();
  });

  it("takes members from the registry next to the static seeds, and drops them when they leave it", async () => {
    let found = [{ id: "decode-x", address: "x:1", precision: "exact" }];
    const pool = new DecodePool({ addresses: ["a:1"], discover: () => found, fetchStatus: async () => load() });
    await pool.pollOnce();
    expect(pool.candidates().map((c) => [c.id, c.address, c.source, c.precision])).toEqual([
      ["a:1", "a:1", "static", undefined],
      ["decode-x", "x:1", "registry", "exact"],
    ]);
    found = [];
    await pool.pollOnce();
    // The static seed stays whatever the registry says.
    expect(pool.candidates().map((c) => c.address)).toEqual(["a:1"]);
    await pool.close();
  });

  it("reports every decision, the failed ones with the error the request gets", async () => {
    const decisions: Decision[] = [];
    const pool = new DecodePool({
      addresses: ["a", "b"],
      fetchStatus: async (address) => (address === "a" ? load({ freeKvBlocks: 10 }) : load({ freeKvBlocks: 40 })),
      onDecision: (d) => decisions.push(d),
      precision: "exact",
    });
    await pool.pollOnce();
    const choice = pool.choose({ requestId: "req-1", ...need });
    expect(choice).toMatchObject({ address: "b", id: "b", blocks: 2 });
    expect(decisions[0]).toMatchObject({ requestId: "req-1", role: "decode", chosen: { id: "b", address: "b" } });
    expect(decisions[0]!.candidates.map((c) => c.scores?.["free-kv"])).toEqual([0.25, 1]);
    expect(() => pool.choose({ requestId: "req-2", promptTokens: 5000, maxTokens: 10 })).toThrow(InvalidArgumentError);
    expect(decisions[1]).toMatchObject({ requestId: "req-2", error: expect.stringMatching(/fits no decode instance/) });
    expect(decisions[1]!.chosen).toBeUndefined();
    await pool.close();
  });
});

describe("AdmissionController", () => {
  it("refuses past its bound with RESOURCE_EXHAUSTED and frees slots once", () => {
    const a = new AdmissionController(3);
    const r1 = a.admit(2);
    expect(() => a.admit(2)).toThrow(ResourceExhaustedError);
    const r2 = a.admit(1);
    expect(a.inFlight).toBe(3);
    r1();
    r1();
    expect(a.inFlight).toBe(1);
    r2();
    expect(a.inFlight).toBe(0);
  });
});
