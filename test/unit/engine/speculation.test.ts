/**
 * The engine's speculation modes: "auto" drafts only while it pays, yet every greedy token and logprob is
 * the plain decoder's, whenever drafting pauses and resumes; the MTP rows a paused sequence owes are
 * computed when it resumes, bit for bit the rows (and drafts) of a sequence that drafted all along.
 */
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { DeepseekModel, Engine, type DraftingState, type EmittedToken, type EngineOptions, type GenerationParams, type Sequence } from "@moela/engine";
import { makeCheckpoint, removeCheckpoints } from "../../helpers/checkpoints.js";

const PROMPT = [0, 399, 332, 17, 256, 901, 44, 12, 730, 5, 66, 120, 7];
const GREEDY: GenerationParams = { temperature: 0, topP: 1, topK: -1, maxTokens: 64, ignoreEos: true, topLogprobs: 3 };
const SEEDED: GenerationParams = { temperature: 0.8, topP: 0.95, topK: 50, seed: 7, maxTokens: 40, ignoreEos: true, topLogprobs: 2 };
const BASE: EngineOptions = { blockSize: 4, numBlocks: 128 };

interface Run {
  readonly out: EmittedToken[];
  readonly seq: Sequence;
  /**
   * Per step: the sequence's main length after it, the draft it made for the next step (null: none) and the tokens
   * max_tokens left it then.
   */
  readonly drafts: { mainLen: number; draft: number | null; left: number }[];
  /** [mtpLen, latentDim] the MTP block's cache rows at the end. */
  readonly mtpRows: Float32Array;
  readonly engine: Engine;
}

/** Prefill and step one sequence to its end, recording its drafts and, before release, its MTP rows. */
async function run(engine: Engine, params: GenerationParams, prompt = PROMPT): Promise<Run> {
  const seq = engine.newSequence("s", prompt, params);
  await engine.prefill([seq]);
  const drafts: Run["drafts"] = [];
  while (!seq.finished) {
    await engine.step([seq]);
    drafts.push({ mainLen: seq.mainLen, draft: seq.draft?.token ?? null, left: params.maxTokens - seq.output.length });
  }
  const mtpRows = readMtpRows(engine, seq);
  engine.release(seq);
  return { out: [...seq.output], seq, drafts, mtpRows, engine };
}

function readMtpRows(engine: Engine, seq: Sequence): Float32Array {
  const n = Math.max(0, seq.mtpLen);
  const rows = new Float32Array(n * engine.cache.latentDim);
  if (n > 0) engine.cache.read(engine.model.cacheLayers - 1, seq.blockTable, 0, n, rows);
  return rows;
}

function expectSameTokens(got: EmittedToken[], want: EmittedToken[]): void {
  expect(got.map((t) => t.id)).toEqual(want.map((t) => t.id));
  expect(got.map((t) => t.logprob)).toEqual(want.map((t) => t.logprob));
  expect(got.map((t) => t.top)).toEqual(want.map((t) => t.top));
}

/** A drafting policy that drafts at step k iff `script(k)`, whatever the drafts do (one sequence per engine). */
function scripted(script: (step: number) => boolean): EngineOptions["draftingPolicy"] {
  let step = 0;
  return (state: DraftingState) => ({ ...state, drafting: script(++step) });
}

describe("speculation modes", () => {
  let model: DeepseekModel;
  let plain: Run;
  let on: Run;
  beforeAll(async () => {
    model = DeepseekModel.load(makeCheckpoint({ preset: "tiny-v3" }));
    plain = await run(new Engine(model, { ...BASE, speculation: "off" }), GREEDY);
    on = await run(new Engine(model, { ...BASE, speculation: "on" }), GREEDY);
  });
  afterAll(removeCheckpoints);

  it("defaults to auto; the old boolean still means on / off; an unknown mode is refused", () => {
    expect(new Engine(model, BASE)).toMatchObject({ speculation: "auto", speculative: true });
    expect(new Engine(model, { ...BASE, speculative: true })).toMatchObject({ speculation: "on", speculative: true });
    expect(new Engine(model, { ...BASE, speculative: false })).toMatchObject({ speculation: "off", speculative: false });
    expect(new Engine(model, { ...BASE, speculative: false, speculation: "auto" }).speculation).toBe("auto");
    expect(() => new Engine(model, { ...BASE, speculation: "maybe" as never })).toThrow(/speculation must be auto, on or off, got maybe/);
    expect(() => new Engine(model, { ...BASE, verifyCost: 0 })).toThrow(/verifyCost must be a positive number/);
  });

  it("a model without an MTP block never speculates", () => {
    const v2 = DeepseekModel.load(makeCheckpoint({ preset: "tiny-v2-lite" }));
    expect(new Engine(v2, { ...BASE, speculation: "on" })).toMatchObject({ speculation: "off", speculative: false });
  });

  it("on drafts at every step and off never does (the reference runs)", () => {
    expectSameTokens(on.out, plain.out);
    // A draft after every step that leaves room for it and the token after it; the prefill's draft came first.
    expect(on.drafts.every((d) => (d.draft !== null) === d.left >= 2)).toBe(true);
    expect(on.drafts.some((d) => d.left === 1)).toBe(true);
    expect(on.seq.drafted).toBe(1 + on.drafts.filter((d) => d.draft !== null).length);
    expect(on.seq.draftsSkipped).toBe(0);
    expect(plain.seq.drafted).toBe(0);
    expect(plain.seq.draftsSkipped).toBe(0);
  });

  it("a draft vocabulary: drafts come from its ids alone, as the argmax of the full MTP logits there; outputs stay the plain ones", async () => {
    const K = 96;
    const restricted = await run(new Engine(model, { ...BASE, speculation: "on", draftVocab: K }), GREEDY);
    expectSameTokens(restricted.out, plain.out);
    const drafts = restricted.drafts.flatMap((d) => (d.draft === null ? [] : [d.draft]));
    expect(drafts.length).toBe(restricted.drafts.filter((d) => d.left >= 2).length); // a draft wherever one fits
    expect(drafts.every((d) => d < K)).toBe(true);
    expect(on.drafts.some((d) => d.draft !== null && d.draft >= K)).toBe(true); // the whole vocabulary would have drafted others
    // The prefill's draft: restricted head rows (no kept logits) against the whole head's logits cut to K (kept).
    const engine = new Engine(model, { ...BASE, speculation: "on", draftVocab: K });
    const kept = engine.newSequence("kept", PROMPT, GREEDY);
    const cut = engine.newSequence("cut", PROMPT, GREEDY);
    await engine.prefill([kept], { keepLogits: true });
    await engine.prefill([cut]);
    const full = kept.promptMtpLogits!;
    expect(full.length).toBe(model.config.vocabSize);
    expect(full.subarray(K).some((v) => Number.isFinite(v))).toBe(true);
    let best = 0;
    for (let i = 1; i < K; i++) if (full[i]! > full[best]!) best = i;
    expect(kept.draft?.token).toBe(best);
    expect(cut.draft?.token).toBe(best);
    expect(() => new Engine(model, { ...BASE, draftVocab: 0 })).toThrow(/draftVocab must be an integer from 1 to the vocabulary size/);
    expect(() => new Engine(model, { ...BASE, draftVocab: model.config.vocabSize + 1 })).toThrow(/draftVocab must be an integer/);
  });

  it("a draft vocabulary keeps seeded sampling reproducible", async () => {
    const a = await run(new Engine(model, { ...BASE, speculation: "on", draftVocab: 96 }), SEEDED);
    const b = await run(new Engine(model, { ...BASE, speculation: "on", draftVocab: 96 }), SEEDED);
    expectSameTokens(a.out, b.out);
    expect(a.drafts.every((d) => d.draft === null || d.draft < 96)).toBe(true);
  });

  it.each([
    ["the engine's measured cost ratio", {}],
    ["c = 1.2: pauses after 6 drafts", { verifyCost: 1.2 }],
    ["c = 1.05: drafts longer before pausing", { verifyCost: 1.05 }],
    ["c = 3: pauses after the prefill's draft and retires", { verifyCost: 3 }],
  ])("auto greedy output equals plain greedy output, logprobs included (%s)", async (_name, extra) => {
    const auto = await run(new Engine(model, { ...BASE, ...extra }), GREEDY);
    expectSameTokens(auto.out, plain.out);
    expect(auto.seq.drafted).toBeGreaterThan(0); // the prefill's draft is always verified
    // tiny-v3's random weights: its drafts are (almost) never accepted, so "auto" pauses early.
    expect(auto.seq.drafted).toBeLessThan(on.seq.drafted);
    expect(auto.seq.draftsSkipped).toBeGreaterThan(0);
    // Every step drafted or skipped a draft, but the one that max_tokens left a single token (no room for a draft).
    expect(auto.seq.drafted + auto.seq.draftsSkipped).toBe(auto.drafts.filter((d) => d.left !== 1).length);
    expect(auto.engine.draftsSkipped).toBe(auto.seq.draftsSkipped);
  });

  it("auto does not probe where the engine's drafts never land: with c = 1.2 it pauses after 6 drafts and retires", async () => {
    const params = { ...GREEDY, maxTokens: 300 };
    const auto = await run(new Engine(model, { ...BASE, verifyCost: 1.2 }), params);
    expect(on.seq.accepted).toBe(0); // tiny-v3's drafts: never accepted
    const drafted = auto.drafts.flatMap((d, i) => (d.draft !== null ? [i] : [])); // steps after which a draft was made
    expect(drafted).toEqual([0, 1, 2, 3, 4]); // with the prefill's, 6 drafts: 0.75^6 < 0.2
    expect(auto.seq.drafting).toMatchObject({ drafting: false, retired: true });
    expect(auto.seq.mtpLen).toBe(-1);
    expect(auto.seq.draftsSkipped).toBe(params.maxTokens - 1 - 6 - 1); // nor is the last step's, with no room for one
    expectSameTokens(auto.out, (await run(new Engine(model, { ...BASE, speculation: "off" }), params)).out);
  });

  it.each([
    ["off for 9 steps, back on for 4, off for 5, then on", (k: number) => k < 3 || (k >= 12 && k < 16) || k >= 21],
    ["off and on at alternate steps", (k: number) => k % 2 === 0],
    ["off for one step at a time", (k: number) => k % 5 !== 0],
    ["off from the first step, back on near the end", (k: number) => k >= 50],
  ])("switching drafting off and probing it back on mid-generation keeps greedy output, MTP rows and drafts exact (%s)", async (_name, script) => {
    const auto = await run(new Engine(model, { ...BASE, draftingPolicy: scripted(script) }), GREEDY);
    expectSameTokens(auto.out, plain.out);
    expect(auto.seq.draftsSkipped).toBeGreaterThan(0);
    // The MTP rows owed while paused were computed on resuming: the very rows of the run that drafted at every step.
    const n = Math.min(auto.seq.mtpLen, on.seq.mtpLen);
    expect(n).toBeGreaterThan(PROMPT.length + 40);
    const D = model.config.latentDim;
    expect(Buffer.from(auto.mtpRows.buffer, 0, n * D * 4).equals(Buffer.from(on.mtpRows.buffer, 0, n * D * 4))).toBe(true);
    // And so the very drafts, wherever both runs drafted at the same position.
    const onDraftAt = new Map(on.drafts.map((d) => [d.mainLen, d.draft]));
    const both = auto.drafts.filter((d) => d.draft !== null && onDraftAt.has(d.mainLen));
    expect(both.length).toBeGreaterThan(10);
    for (const d of both) expect(d.draft, `draft at ${d.mainLen}`).toBe(onDraftAt.get(d.mainLen));
  });

  it("a batch whose sequences draft, pause and probe at different steps gives each one its plain greedy output", async () => {
    const prompts = [PROMPT, PROMPT.slice(0, 7), [...PROMPT, 3, 14, 15, 92]];
    const want: EmittedToken[][] = [];
    for (const p of prompts) want.push((await run(new Engine(model, { ...BASE, speculation: "off" }), GREEDY, p)).out);
    const engine = new Engine(model, { ...BASE, numBlocks: 256, verifyCost: 1.2 });
    const seqs = prompts.map((p, i) => engine.newSequence(`s${i}`, p, GREEDY));
    // Sequence i joins the batch at step 7 i, so drafting and paused sequences share steps.
    const live: Sequence[] = [];
    for (let step = 0; live.length < seqs.length || live.some((s) => !s.finished); step++) {
      const joining = seqs[step / 7];
      if (step % 7 === 0 && joining !== undefined) {
        await engine.prefill([joining]);
        live.push(joining);
      }
      const running = live.filter((s) => !s.finished);
      if (running.length > 0) await engine.step(running);
    }
    seqs.forEach((s, i) => expectSameTokens(s.output, want[i]!));
    expect(seqs.every((s) => s.draftsSkipped > 0 && s.drafted > 0)).toBe(true);
    for (const s of seqs) engine.release(s);
    expect(engine.cache.usedBlocks).toBe(0);
  });

  it("seeded sampling under auto is reproducible, engine history and batch company notwithstanding", async () => {
    const fresh = await run(new Engine(model, BASE), SEEDED);
    const busy = new Engine(model, BASE);
    await run(busy, GREEDY); // the engine has measured its own step costs by now
    const other = busy.newSequence("other", PROMPT.slice(0, 5), GREEDY);
    const seq = busy.newSequence("s", PROMPT, SEEDED);
    await busy.prefill([other, seq]);
    while (!seq.finished) await busy.step([other, seq].filter((s) => !s.finished));
    expect(seq.output.map((t) => t.id)).toEqual(fresh.out.map((t) => t.id));
    expect([seq.drafted, seq.draftsSkipped]).toEqual([fresh.seq.drafted, fresh.seq.draftsSkipped]);
    // At the fixed c of sampled sequences (2) no rate pays: the prefill's draft is the only one, then it retires.
    expect(fresh.seq.drafted).toBe(1);
    expect(fresh.seq.mtpLen).toBe(-1);
  });

  it("seeded sampling with a scripted pause and resume is reproducible and a valid continuation", async () => {
    const script = (k: number) => k < 4 || k >= 20;
    const a = await run(new Engine(model, { ...BASE, draftingPolicy: scripted(script) }), SEEDED);
    const b = await run(new Engine(model, { ...BASE, draftingPolicy: scripted(script) }), SEEDED);
    expect(a.out.map((t) => t.id)).toEqual(b.out.map((t) => t.id));
    expect(a.out).toHaveLength(SEEDED.maxTokens);
    expect(a.seq.draftsSkipped).toBe(16); // decisions 4 to 19 (after steps 4 to 19) made steps 5 to 20 plain
  });

  it("tracks the engine's acceptance and cost ratio", async () => {
    const auto = await run(new Engine(model, BASE), GREEDY);
    expect(auto.engine.acceptanceRate).not.toBeNull();
    expect(auto.engine.acceptanceRate!).toBeLessThan(0.5);
    // Both kinds of steps were timed: c is a measurement now, not the prior.
    const c = auto.engine.verifyCostEstimate.ratio(1);
    expect(c).toBeGreaterThan(0);
    expect(Number.isFinite(c)).toBe(true);
  });
});
