/**
 * The prefix-affinity scorer over hand-built candidates: which instance holds the longest cached prefix
 * of the prompt (keys from @moela/core's prefixBlockHashes, as prefill's cache names its blocks), how
 * extra load discounts a match, and the default prefill policy's choices.
 */
import { describe, expect, it } from "vitest";
import { prefixBlockHashes } from "@moela/core";
import {
  cachedPrefixTokens,
  DEFAULT_PREFILL_POLICY,
  PREFIX_AFFINITY,
  Policy,
  SCORERS,
  type Candidate,
  type InstanceLoad,
  type SchedulingRequest,
} from "@moela/scheduler";

const BS = 16;
const SYSTEM = Array.from({ length: 200 }, (_, i) => (i * 31 + 7) % 1000);
const QUESTION = Array.from({ length: 40 }, (_, i) => (i * 17 + 3) % 1000);
const PROMPT = [...SYSTEM, ...QUESTION]; // 240 tokens

const load = (running = 0, waiting = 0): InstanceLoad => ({
  freeKvBlocks: 0,
  totalKvBlocks: 0,
  blockSize: BS,
  runningSequences: running,
  waitingSequences: waiting,
  pendingTransfers: 0,
  accepting: true,
});

/** An instance holding the prefix keys of `held` (block size `bs`), with `running` jobs. */
const cand = (id: string, held: number[] | null, running = 0, bs = BS): Candidate => ({
  id,
  address: `${id}:1`,
  healthy: true,
  load: { ...load(running), blockSize: bs },
  reservedBlocks: 0,
  reservedSequences: 0,
  ...(held === null ? {} : { attributes: { [PREFIX_AFFINITY]: { blockSize: bs, keys: new Set(prefixBlockHashes(held, bs)) } } }),
});

const req: SchedulingRequest = { requestId: "req-p", promptTokens: PROMPT.length, maxTokens: 16, promptTokenIds: PROMPT, precision: "exact" };
const scorer = (parameters?: unknown) => SCORERS[PREFIX_AFFINITY]!.create(parameters, PREFIX_AFFINITY, "test");

describe("prefix-affinity scorer", () => {
  it.each([
    // SYSTEM (200 tokens) cached: keys cover whole blocks plus the token after each, so 12 blocks = 192
    // tokens (the 13th block's next token is QUESTION[0], not cached anywhere but with the question).
    { name: "the system prompt cached", held: SYSTEM, cached: 192 },
    { name: "the whole prompt cached: all but the block of the last position", held: [...PROMPT, 5], cached: 224 },
    { name: "another prompt", held: QUESTION, cached: 0 },
    { name: "the first 40 tokens of the system prompt", held: SYSTEM.slice(0, 40), cached: 32 },
    { name: "nothing published", held: null, cached: 0 },
  ])("$name: $cached cached tokens", ({ held, cached }) => {
    expect(cachedPrefixTokens(PROMPT, [cand("a", held)])).toEqual([cached]);
    expect(scorer().score(req, [cand("a", held)])[0]).toBeCloseTo(cached / PROMPT.length, 12);
  });

  it("salted requests match only prefixes cached under their own salt (cache_salt)", () => {
    const salted: Candidate = {
      ...cand("a", null),
      attributes: { [PREFIX_AFFINITY]: { blockSize: BS, keys: new Set(prefixBlockHashes(SYSTEM, BS, Infinity, "tenant-a")) } },
    };
    expect(cachedPrefixTokens(PROMPT, [salted], "tenant-a")).toEqual([192]);
    expect(cachedPrefixTokens(PROMPT, [salted], "tenant-b")).toEqual([0]);
    expect(cachedPrefixTokens(PROMPT, [salted])).toEqual([0]);
    expect(cachedPrefixTokens(PROMPT, [cand("b", SYSTEM)], "tenant-a")).toEqual([0]);
    expect(scorer().score({ ...req, cacheSalt: "tenant-a" }, [salted, cand("b", SYSTEM)])[0]).toBeGreaterThan(0);
  });

  it("finds the prefix under each instance's own block size", () => {
    expect(cachedPrefixTokens(PROMPT, [cand("a", SYSTEM, 0, 16), cand("b", SYSTEM, 0, 64), cand("c", SYSTEM, 0, 7)])).toEqual([192, 192, 196]);
  });

  it.each([
    { name: "equal load: the match counts whole", running: [0, 0], want: [192 / 240, 0] },
    { name: "tolerance (4) jobs busier than the idlest: half", running: [4, 0], want: [96 / 240, 0] },
    { name: "12 jobs busier: a quarter", running: [12, 0], want: [48 / 240, 0] },
    { name: "everyone equally busy: whole", running: [9, 9], want: [192 / 240, 0] },
  ])("discounts by extra load: $name", ({ running, want }) => {
    const got = scorer().score(req, [cand("a", SYSTEM, running[0]), cand("b", null, running[1])]);
    got.forEach((g, i) => expect(g).toBeCloseTo(want[i]!, 12));
  });

  it("scores 0 for every candidate of a request without prompt token ids", () => {
    const { promptTokenIds: _, ...bare } = req;
    expect(scorer().score(bare, [cand("a", SYSTEM), cand("b", PROMPT)])).toEqual([0, 0]);
  });

  it("refuses a non-positive tolerance", () => {
    expect(() => scorer({ tolerance: 0 })).toThrow(/tolerance/);
  });
});

describe("the default prefill policy", () => {
  const policy = new Policy(DEFAULT_PREFILL_POLICY);
  const choose = (cands: Candidate[]) => policy.decide("prefill", req, cands);

  it("sends the prompt where its prefix is cached", () => {
    const d = choose([cand("a", null), cand("b", SYSTEM), cand("c", SYSTEM.slice(0, 64))]);
    expect(d.chosen?.id).toBe("b");
    expect(d.decision.candidates.map((c) => c.scores?.[PREFIX_AFFINITY])).toEqual([0, 0.8, 48 / 240]);
  });

  it("goes elsewhere when the holder is much busier", () => {
    expect(choose([cand("a", SYSTEM, 20), cand("b", null, 0)]).chosen?.id).toBe("b");
    expect(choose([cand("a", SYSTEM, 2), cand("b", null, 0)]).chosen?.id).toBe("a");
    expect(choose([cand("a", SYSTEM, 3), cand("b", null, 0)]).chosen?.id).toBe("b");
  });

  it("splits equal matches by load", () => {
    const busy = { ...cand("a", SYSTEM), load: load(0, 3) };
    expect(choose([busy, cand("b", SYSTEM)]).chosen?.id).toBe("b");
  });
});
