/**
 * The scheduler's pure parts: the prefill job schema, failure encoding, Redis URLs, the decode-choice
 * policy, the decode pool's bookkeeping between polls, and admission.
 */
import { describe, expect, it } from "vitest";
import { Code, InvalidArgumentError, MoelaError, ResourceExhaustedError, UnavailableError } from "@moela/core";
import {
  AdmissionController,
  blocksNeeded,
  chooseDecode,
  DecodePool,
  jobFailureMessage,
  parseJobFailure,
  parsePrefillJob,
  PREFILL_JOB_VERSION,
  redisConnection,
  type DecodeCandidate,
  type DecodeLoad,
  type PrefillJob,
} from "@moela/scheduler";

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
    expect(redisConnection("redis://u:p%40ss@10.0.0.2:6380/3")).toEqual({ host: "10.0.0.2", port: 6380, db: 3, username: "u", password: "p@ss", maxRetriesPerRequest: null });
    expect(redisConnection("redis://127.0.0.1")).toEqual({ host: "127.0.0.1", port: 6379, db: 0, maxRetriesPerRequest: null });
  });
  it.each(["127.0.0.1:6379", "http://x:1", "redis://h/abc"])("refuses %s", (url) => {
    expect(() => redisConnection(url)).toThrow(InvalidArgumentError);
  });
});

const load = (over: Partial<DecodeLoad> = {}): DecodeLoad => ({
  freeKvBlocks: 100,
  totalKvBlocks: 100,
  blockSize: 16,
  runningSequences: 0,
  waitingSequences: 0,
  pendingTransfers: 0,
  accepting: true,
  ...over,
});
const cand = (address: string, l: DecodeLoad | undefined, over: Partial<DecodeCandidate> = {}): DecodeCandidate => ({
  address,
  load: l,
  healthy: l !== undefined,
  reservedBlocks: 0,
  reservedSequences: 0,
  ...over,
});
const need = { promptTokens: 20, maxTokens: 11 }; // 20 + 11 + 1 speculative row = 32 positions = 2 blocks of 16

describe("decode choice", () => {
  it("counts prompt + max_tokens + one speculative row in blocks", () => {
    expect(blocksNeeded(need, 16)).toBe(2);
    expect(blocksNeeded({ promptTokens: 20, maxTokens: 12 }, 16)).toBe(3);
  });

  it.each([
    { name: "most free blocks wins", cands: [cand("a", load({ freeKvBlocks: 10 })), cand("b", load({ freeKvBlocks: 50 }))], want: "b" },
    { name: "equal free blocks: least running wins", cands: [cand("a", load({ runningSequences: 3 })), cand("b", load({ runningSequences: 1 }))], want: "b" },
    { name: "waiting and pending count as load", cands: [cand("a", load({ waitingSequences: 2 })), cand("b", load({ pendingTransfers: 1 }))], want: "b" },
    { name: "full ties go to the configured order", cands: [cand("a", load()), cand("b", load())], want: "a" },
    { name: "unhealthy instances are skipped", cands: [cand("a", load({ freeKvBlocks: 99 }), { healthy: false, error: "down" }), cand("b", load({ freeKvBlocks: 5 }))], want: "b" },
    { name: "draining instances are skipped", cands: [cand("a", load({ accepting: false })), cand("b", load({ freeKvBlocks: 3 }))], want: "b" },
    { name: "reservations since the last report count against free blocks", cands: [cand("a", load(), { reservedBlocks: 60, reservedSequences: 20 }), cand("b", load({ freeKvBlocks: 50 }))], want: "b" },
    { name: "an instance with room now beats one without, whatever else", cands: [cand("a", load({ freeKvBlocks: 1, totalKvBlocks: 1000 })), cand("b", load({ freeKvBlocks: 2, runningSequences: 50 }))], want: "b" },
  ])("$name", ({ cands, want }) => {
    const choice = chooseDecode(cands, need);
    expect(choice.address).toBe(want);
    expect(choice.candidates).toHaveLength(cands.length);
  });

  it("explains rejected candidates", () => {
    const choice = chooseDecode([cand("a", undefined, { healthy: false, error: "connection refused" }), cand("b", load())], need);
    expect(choice.candidates[0]).toEqual({ address: "a", rejected: "healthy: unhealthy (connection refused)" });
    expect(choice.candidates[1]).toMatchObject({ address: "b", freeBlocks: 100, load: 0, roomNow: true });
  });

  it("no healthy instance: UNAVAILABLE naming each one", () => {
    const run = () => chooseDecode([cand("a", undefined, { healthy: false, error: "refused" }), cand("b", load({ accepting: false }))], need);
    expect(run).toThrow(UnavailableError);
    expect(run).toThrow(/a: healthy: unhealthy \(refused\); b: accepting: draining/);
  });

  it("a request bigger than every instance's whole cache: INVALID_ARGUMENT", () => {
    const run = () => chooseDecode([cand("a", load({ totalKvBlocks: 2 }))], { promptTokens: 100, maxTokens: 100 });
    expect(run).toThrow(InvalidArgumentError);
    expect(run).toThrow(/does not fit any decode instance's KV cache/);
  });

  it("no instance configured: UNAVAILABLE", () => {
    expect(() => chooseDecode([], need)).toThrow(/no decode instance is configured/);
  });
});

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
