/**
 * The policy plugins one by one (tables over small candidate sets), the Policy that chains them (the
 * default decode policy's choices, the error when nobody is left), and the configuration's errors.
 */
import { describe, expect, it } from "vitest";
import { ConfigError, InvalidArgumentError, ResourceExhaustedError, UnavailableError } from "@moela/core";
import {
  DEFAULT_POLICY,
  FILTERS,
  parsePolicyJson,
  PICKERS,
  Policy,
  SCORERS,
  type Candidate,
  type InstanceLoad,
  type ScoredCandidate,
  type SchedulingRequest,
} from "@moela/scheduler";
import { instanceLoad } from "../../helpers/scheduler.js";

const load = instanceLoad;
/** A candidate; `none` = it never reported. */
const cand = (id: string, l: InstanceLoad | "none" = load(), over: Partial<Candidate> = {}): Candidate => ({
  id,
  address: `${id}:1`,
  load: l === "none" ? undefined : l,
  healthy: l !== "none",
  reservedBlocks: 0,
  reservedSequences: 0,
  ...over,
});
// 20 + 11 + 1 speculative row = 32 positions = 2 blocks of 16
const req: SchedulingRequest = { requestId: "req-1", promptTokens: 20, maxTokens: 11, precision: "exact" };

const filter = (type: string, parameters?: unknown) => FILTERS[type]!.create(parameters, type, "test");
const scorer = (type: string, parameters?: unknown) => SCORERS[type]!.create(parameters, type, "test");
const picker = (type: string, parameters?: unknown) => PICKERS[type]!.create(parameters, type, "test");
/** Each verdict as "kept" or "<kind>: <reason>". */
const verdicts = (type: string, cands: Candidate[], parameters?: unknown, r: SchedulingRequest = req) =>
  filter(type, parameters)
    .filter(r, cands)
    .verdicts.map((v) => (v === undefined ? "kept" : `${v.kind}: ${v.reason}`));

describe("filters", () => {
  it.each([
    { name: "healthy keeps a reachable accepting instance", type: "healthy", cands: [cand("a")], want: ["kept"] },
    {
      name: "healthy drops an unreachable one with its error",
      type: "healthy",
      cands: [cand("a", load(), { healthy: false, error: "refused" })],
      want: ["unavailable: unhealthy (refused)"],
    },
    { name: "healthy drops one that never reported", type: "healthy", cands: [cand("a", "none")], want: ["unavailable: unhealthy (no report yet)"] },
    { name: "healthy drops a draining one", type: "healthy", cands: [cand("a", load({ accepting: false }))], want: ["unavailable: draining"] },
    {
      name: "same-precision keeps the request's profile, drops another",
      type: "same-precision",
      cands: [cand("a", load(), { precision: "exact" }), cand("b", load(), { precision: "paper" })],
      want: ["kept", "unavailable: runs paper, the request needs exact"],
    },
    { name: "same-precision keeps an unknown profile by default", type: "same-precision", cands: [cand("a")], want: ["kept"] },
    {
      name: "same-precision drops an unknown profile when asked",
      type: "same-precision",
      params: { unknown: "drop" },
      cands: [cand("a")],
      want: ["unavailable: precision unknown"],
    },
    {
      name: "has-free-kv keeps those with room now, drops the others as busy",
      type: "has-free-kv",
      cands: [cand("a", load({ freeKvBlocks: 1 })), cand("b", load({ freeKvBlocks: 2 }))],
      want: ["busy: needs 2 KV blocks, 1 free now", "kept"],
    },
    {
      name: "has-free-kv counts reservations against free blocks",
      type: "has-free-kv",
      cands: [cand("a", load({ freeKvBlocks: 3 }), { reservedBlocks: 2 }), cand("b", load({ freeKvBlocks: 2 }))],
      want: ["busy: needs 2 KV blocks, 1 free now", "kept"],
    },
    {
      name: "has-free-kv: nobody has room now, waitForRoom keeps all that could ever hold it",
      type: "has-free-kv",
      cands: [cand("a", load({ freeKvBlocks: 1 })), cand("b", load({ freeKvBlocks: 0, totalKvBlocks: 1 }))],
      want: ["kept", "unfit: needs 2 KV blocks, holds 1 in all"],
    },
    {
      name: "has-free-kv without waitForRoom drops them as busy",
      type: "has-free-kv",
      params: { waitForRoom: false },
      cands: [cand("a", load({ freeKvBlocks: 1 }))],
      want: ["busy: needs 2 KV blocks, 1 free now"],
    },
  ])("$name", ({ type, params, cands, want }) => {
    expect(verdicts(type, cands, params)).toEqual(want);
  });

  it("has-free-kv notes when it keeps instances without room", () => {
    const r = filter("has-free-kv").filter(req, [cand("a", load({ freeKvBlocks: 0 }))]);
    expect(r.note).toMatch(/no instance has room now; kept the 1/);
  });

  it("same-precision keeps everyone for a request without a precision", () => {
    expect(verdicts("same-precision", [cand("a", load(), { precision: "paper" })], undefined, { ...req, precision: undefined })).toEqual(["kept"]);
  });
});

describe("scorers", () => {
  it.each([
    {
      name: "free-kv: free / the most free",
      type: "free-kv",
      cands: [cand("a", load({ freeKvBlocks: 25 })), cand("b", load({ freeKvBlocks: 100 }))],
      want: [0.25, 1],
    },
    { name: "free-kv: reservations count", type: "free-kv", cands: [cand("a", load(), { reservedBlocks: 50 }), cand("b")], want: [0.5, 1] },
    { name: "free-kv: nobody has any", type: "free-kv", cands: [cand("a", load({ freeKvBlocks: 0 }))], want: [0] },
    {
      name: "free-kv capacity: 1 - utilisation",
      type: "free-kv",
      params: { normalize: "capacity" },
      cands: [cand("a", load({ freeKvBlocks: 30, totalKvBlocks: 40 })), cand("b", load({ freeKvBlocks: 50, totalKvBlocks: 200 }))],
      want: [0.75, 0.25],
    },
    {
      name: "load: 1 - load / the busiest (running + waiting + pending + reserved)",
      type: "load",
      cands: [cand("a", load({ runningSequences: 2, waitingSequences: 1, pendingTransfers: 1 })), cand("b", load(), { reservedSequences: 1 }), cand("c")],
      want: [0, 0.75, 1],
    },
    { name: "load: everyone idle", type: "load", cands: [cand("a"), cand("b")], want: [1, 1] },
    {
      name: "load with saturation: absolute",
      type: "load",
      params: { saturation: 8 },
      cands: [cand("a", load({ runningSequences: 2 })), cand("b", load({ runningSequences: 9 }))],
      want: [0.75, 0],
    },
    {
      name: "queue-depth ignores what runs",
      type: "queue-depth",
      cands: [cand("a", load({ runningSequences: 30 })), cand("b", load({ waitingSequences: 3, pendingTransfers: 1 }))],
      want: [1, 0],
    },
  ])("$name", ({ type, params, cands, want }) => {
    expect(scorer(type, params).score(req, cands)).toEqual(want);
  });
});

const scored = (totals: number[]): ScoredCandidate[] => totals.map((total, order) => ({ candidate: cand(`c${order}`), order, scores: {}, total }));

describe("pickers", () => {
  it.each([
    { name: "the highest total", totals: [0.5, 2, 1], want: "c1", reason: /highest score 2.000 of 3 \(next: c2 at 1.000\)/ },
    { name: "ties go to the earlier candidate", totals: [1, 2, 2], want: "c1", reason: /tied at 2.000 with c2/ },
    { name: "float noise is a tie", totals: [0.1 + 0.2, 0.3], want: "c0", reason: /tied/ },
    { name: "one candidate", totals: [0], want: "c0", reason: /only candidate left/ },
  ])("max-score: $name", ({ totals, want, reason }) => {
    const r = picker("max-score").pick(req, scored(totals));
    expect(r.chosen.candidate.id).toBe(want);
    expect(r.reason).toMatch(reason);
  });

  it("weighted-random: the same request always draws the same candidate; another seed may not", () => {
    const set = scored([1, 1, 1, 1, 1, 1, 1, 1]);
    const draw = (seed: number, id: string) => picker("weighted-random", { seed }).pick({ ...req, requestId: id }, set).chosen.candidate.id;
    for (const id of ["a", "b", "c"]) expect(draw(7, id)).toBe(draw(7, id));
    const ids = Array.from({ length: 40 }, (_, i) => `req-${i}`);
    expect(ids.map((id) => draw(7, id))).not.toEqual(ids.map((id) => draw(8, id)));
  });

  it("weighted-random: draws in proportion to the totals, never a zero when others are not", () => {
    const set = scored([3, 1, 0]);
    const counts = [0, 0, 0];
    for (let i = 0; i < 4000; i++) counts[picker("weighted-random").pick({ ...req, requestId: `r${i}` }, set).chosen.order]!++;
    expect(counts[2]).toBe(0);
    // Expected 3000 : 1000; 6 sigma of a binomial(4000, 0.25) is about 165.
    expect(Math.abs(counts[1]! - 1000)).toBeLessThan(165);
  });

  it("weighted-random: all totals 0 draws uniformly", () => {
    const counts = [0, 0];
    for (let i = 0; i < 2000; i++) counts[picker("weighted-random").pick({ ...req, requestId: `r${i}` }, scored([0, 0])).chosen.order]!++;
    expect(Math.abs(counts[0]! - 1000)).toBeLessThan(135);
  });
});

describe("the default decode policy", () => {
  const policy = new Policy();

  it.each([
    { name: "most free blocks wins", cands: [cand("a", load({ freeKvBlocks: 10 })), cand("b", load({ freeKvBlocks: 50 }))], want: "b" },
    { name: "equal free blocks: least load wins", cands: [cand("a", load({ runningSequences: 3 })), cand("b", load({ runningSequences: 1 }))], want: "b" },
    { name: "waiting and pending count as load", cands: [cand("a", load({ waitingSequences: 2 })), cand("b", load({ pendingTransfers: 1 }))], want: "b" },
    { name: "full ties go to the given order", cands: [cand("a"), cand("b")], want: "a" },
    {
      name: "unhealthy instances are skipped",
      cands: [cand("a", load({ freeKvBlocks: 99 }), { healthy: false, error: "down" }), cand("b", load({ freeKvBlocks: 5 }))],
      want: "b",
    },
    { name: "draining instances are skipped", cands: [cand("a", load({ accepting: false })), cand("b", load({ freeKvBlocks: 3 }))], want: "b" },
    {
      name: "reservations count against free blocks",
      cands: [cand("a", load(), { reservedBlocks: 60, reservedSequences: 20 }), cand("b", load({ freeKvBlocks: 50 }))],
      want: "b",
    },
    {
      name: "room now beats no room, whatever the load",
      cands: [cand("a", load({ freeKvBlocks: 1, totalKvBlocks: 1000 })), cand("b", load({ freeKvBlocks: 2, runningSequences: 50 }))],
      want: "b",
    },
    { name: "nobody has room now: still placed where it fits", cands: [cand("a", load({ freeKvBlocks: 0 })), cand("b", load({ freeKvBlocks: 1 }))], want: "b" },
  ])("$name", ({ cands, want }) => {
    const { decision, chosen } = policy.decide("decode", req, cands);
    expect(chosen?.id).toBe(want);
    expect(decision.chosen?.id).toBe(want);
    expect(decision.candidates).toHaveLength(cands.length);
  });

  it("explains every candidate: the filter that dropped it, or its scores and total", () => {
    const { decision } = policy.decide("decode", req, [
      cand("a", "none", { healthy: false, error: "connection refused" }),
      cand("b", load({ freeKvBlocks: 50, runningSequences: 1 })),
      cand("c"),
    ]);
    expect(decision).toMatchObject({
      requestId: "req-1",
      role: "decode",
      policy: "filters: healthy, has-free-kv; scorers: free-kv x2, load x1; picker: max-score",
      chosen: { id: "c", address: "c:1" },
      reason: expect.stringMatching(/^max-score: highest score 3.000 of 2 \(next: b at 1.000\)$/),
    });
    expect(decision.candidates).toEqual([
      { id: "a", address: "a:1", rejected: "healthy: unhealthy (connection refused)" },
      { id: "b", address: "b:1", freeKvBlocks: 50, load: 1, scores: { "free-kv": 0.5, load: 0 }, total: 1 },
      { id: "c", address: "c:1", freeKvBlocks: 100, load: 0, scores: { "free-kv": 1, load: 1 }, total: 3 },
    ]);
  });

  it.each([
    { name: "no instance at all: UNAVAILABLE", cands: [], error: UnavailableError, message: /no decode instance is known/ },
    {
      name: "every instance down or draining: UNAVAILABLE naming each",
      cands: [cand("a", "none", { healthy: false, error: "refused" }), cand("b", load({ accepting: false }))],
      error: UnavailableError,
      message: /a: healthy: unhealthy \(refused\); b: healthy: draining/,
    },
    {
      name: "bigger than every cache: INVALID_ARGUMENT",
      cands: [cand("a", load({ totalKvBlocks: 1 }))],
      error: InvalidArgumentError,
      message: /fits no decode instance \(a: has-free-kv: needs 2 KV blocks, holds 1 in all\)/,
    },
    {
      name: "too big for the live one, another is down: UNAVAILABLE (it may fit when back)",
      cands: [cand("a", load({ totalKvBlocks: 1 })), cand("b", "none", { healthy: false, error: "refused" })],
      error: UnavailableError,
      message: /no decode instance is available/,
    },
  ])("$name", ({ cands, error, message }) => {
    const out = policy.decide("decode", req, cands);
    expect(out.chosen).toBeUndefined();
    expect(out.error).toBeInstanceOf(error);
    expect(out.error!.message).toMatch(message);
    expect(out.decision.error).toBe(out.error!.message);
  });

  it("without waitForRoom, nobody with room now: RESOURCE_EXHAUSTED (429, retry later)", () => {
    const strict = new Policy(parsePolicyJson('{"filters":[{"type":"healthy"},{"type":"has-free-kv","parameters":{"waitForRoom":false}}]}'));
    const out = strict.decide("decode", req, [cand("a", load({ freeKvBlocks: 1 }))]);
    expect(out.error).toBeInstanceOf(ResourceExhaustedError);
    expect(out.error!.message).toMatch(/no decode instance has room for the request now/);
  });
});

describe("policy configuration", () => {
  it("omitted sections take the default's; names and weights are kept", () => {
    const c = parsePolicyJson('{"scorers":[{"type":"queue-depth","name":"q","weight":0.5}],"picker":{"type":"weighted-random","parameters":{"seed":3}}}');
    expect(c.filters).toEqual(DEFAULT_POLICY.filters);
    expect(new Policy(c).summary).toBe("filters: healthy, has-free-kv; scorers: q x0.5; picker: weighted-random");
  });

  it("a weighted scorer changes the choice", () => {
    const cands = [cand("a", load({ freeKvBlocks: 100, runningSequences: 1 })), cand("b", load({ freeKvBlocks: 40 }))];
    expect(new Policy().decide("decode", req, cands).chosen?.id).toBe("a");
    expect(new Policy(parsePolicyJson('{"scorers":[{"type":"free-kv","weight":1},{"type":"load","weight":3}]}')).decide("decode", req, cands).chosen?.id).toBe(
      "b",
    );
  });

  it.each([
    { name: "not JSON", text: "{filters", message: /^--policy: not valid JSON/ },
    { name: "an unknown section", text: '{"filter":[]}', message: /^--policy: Unrecognized key/ },
    { name: "a negative weight", text: '{"scorers":[{"type":"load","weight":-1}]}', message: /^--policy: scorers\[0\]\.weight: must be >= 0/ },
    { name: "a plugin without a type", text: '{"picker":{}}', message: /^--policy: picker\.type/ },
  ])("refuses $name, naming where", ({ text, message }) => {
    expect(() => parsePolicyJson(text, "--policy")).toThrow(ConfigError);
    expect(() => parsePolicyJson(text, "--policy")).toThrow(message);
  });

  it.each([
    {
      name: "an unknown filter",
      text: '{"filters":[{"type":"fastest"}]}',
      message: /--policy: filters\[0\]: unknown filter "fastest" \(known: healthy, same-precision, has-free-kv\)/,
    },
    {
      name: "a bad prefix-affinity tolerance",
      text: '{"scorers":[{"type":"prefix-affinity","parameters":{"tolerance":0}}]}',
      message: /scorers\[0\]\.parameters\.tolerance/,
    },
    { name: "two scorers with one name", text: '{"scorers":[{"type":"load"},{"type":"load"}]}', message: /scorers\[1\]: a second scorer named "load"/ },
    {
      name: "a bad parameter",
      text: '{"scorers":[{"type":"load","parameters":{"saturation":0}}]}',
      message: /--policy: scorers\[0\]\.parameters\.saturation: /,
    },
    { name: "an unknown parameter", text: '{"picker":{"type":"max-score","parameters":{"x":1}}}', message: /--policy: picker\.parameters: Unrecognized key/ },
  ])("refuses $name when the policy is built", ({ text, message }) => {
    expect(() => new Policy(parsePolicyJson(text, "--policy"), "--policy")).toThrow(message);
  });
});
