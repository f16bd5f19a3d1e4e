/**
 * The sequence-dependent logits processors (sampler-penalties.ts) and min_p: the processed row is bit for bit
 * a dense, step-by-step float32 reference of vLLM's order; each processor changes exactly the logits it
 * should; logit_bias -100 bans a token, min_tokens holds EOS back; and in the engine, penalised generation
 * is the same with and without speculation, alone and in a batch (penalties see only the sequence's own
 * tokens).
 */
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { DeepseekModel, Engine, LogitsProcessor, Sampler, validatePenaltyParams, type GenerationParams, type PenaltyParams } from "@moela/engine";
import { makeCheckpoint, removeCheckpoints } from "../../helpers/checkpoints.js";
import { rng } from "../../helpers/random.js";

const rand = rng;

/**
 * vLLM's processing written densely, one float32 step per line, independently of the implementation: bias,
 * min_tokens, then repetition over the prompt|output mask, frequency over output counts, presence over the
 * output mask (vllm/v1/sample/sampler.py apply_logits_processors + apply_penalties).
 */
function reference(raw: Float32Array, p: PenaltyParams, prompt: number[], output: number[], stopIds: number[]): Float32Array {
  const V = raw.length;
  const out = Float32Array.from(raw);
  const bias = new Float32Array(V);
  for (const [id, b] of p.logitBias ?? []) bias[id] = b;
  for (let i = 0; i < V; i++) out[i] = Math.fround(out[i]! + bias[i]!);
  if (output.length < (p.minTokens ?? 0)) for (const id of stopIds) out[id] = -Infinity;
  const counts = new Int32Array(V);
  for (const t of output) counts[t]!++;
  const promptMask = new Uint8Array(V);
  for (const t of prompt) promptMask[t] = 1;
  const r = Math.fround(p.repetitionPenalty ?? 1);
  const f = Math.fround(p.frequencyPenalty ?? 0);
  const pr = Math.fround(p.presencePenalty ?? 0);
  for (let i = 0; i < V; i++) {
    const seen = promptMask[i] === 1 || counts[i]! > 0;
    const penalty = seen ? r : 1;
    out[i] = out[i]! > 0 ? Math.fround(out[i]! / penalty) : Math.fround(out[i]! * penalty);
  }
  for (let i = 0; i < V; i++) out[i] = Math.fround(out[i]! - Math.fround(f * counts[i]!));
  for (let i = 0; i < V; i++) out[i] = Math.fround(out[i]! - (counts[i]! > 0 ? pr : 0));
  return out;
}

function randomLogits(next: () => number, V: number): Float32Array {
  return Float32Array.from({ length: V }, () => (next() - 0.5) * 20);
}

/** Feed `output` to a processor made for `prompt`, optionally keeping the last token as the `extra` draft. */
function processed(raw: Float32Array, p: PenaltyParams, prompt: number[], output: number[], stopIds: number[], lastAsExtra = false): Float32Array {
  const proc = new LogitsProcessor(raw.length, p, prompt, stopIds);
  const pushed = lastAsExtra ? output.slice(0, -1) : output;
  for (const t of pushed) proc.push(t);
  return proc.apply(raw, new Float32Array(raw.length), lastAsExtra ? output[output.length - 1]! : -1);
}

describe("LogitsProcessor equals the dense float32 reference, bit for bit", () => {
  const V = 257;
  const stopIds = [1, 200];
  const cases: { name: string; p: PenaltyParams }[] = [
    { name: "presence", p: { presencePenalty: 0.7 } },
    { name: "negative frequency", p: { frequencyPenalty: -1.3 } },
    { name: "repetition", p: { repetitionPenalty: 1.37 } },
    { name: "repetition below 1", p: { repetitionPenalty: 0.61 } },
    {
      name: "logit bias",
      p: {
        logitBias: [
          [3, -100],
          [7, 2.5],
          [200, 100],
        ],
      },
    },
    { name: "min_tokens (still held)", p: { minTokens: 100 } },
    {
      name: "all together",
      p: {
        presencePenalty: -0.4,
        frequencyPenalty: 0.9,
        repetitionPenalty: 1.9,
        logitBias: [
          [0, 1.1],
          [250, -3.3],
        ],
        minTokens: 3,
      },
    },
  ];
  for (const { name, p } of cases) {
    it(name, () => {
      const next = rand(name.length * 7919);
      for (let trial = 0; trial < 20; trial++) {
        const raw = randomLogits(next, V);
        const prompt = Array.from({ length: 1 + Math.floor(next() * 30) }, () => Math.floor(next() * V));
        // Repeats on purpose: a small alphabet, so counts above 1 occur.
        const output = Array.from({ length: Math.floor(next() * 40) }, () => Math.floor(next() * 40));
        const want = reference(raw, p, prompt, output, stopIds);
        expect(processed(raw, p, prompt, output, stopIds)).toEqual(want);
        // A draft under verification counts as output exactly as if it had been pushed.
        if (output.length > 0) expect(processed(raw, p, prompt, output, stopIds, true)).toEqual(want);
      }
    });
  }

  it("a migrated request's prior output (the prompt's tail) counts as output", () => {
    const next = rand(5);
    const raw = randomLogits(next, V);
    const prompt = [9, 9, 4];
    const before = [5, 6, 5];
    const p: PenaltyParams = { presencePenalty: 1, frequencyPenalty: 0.5, minTokens: 5 };
    const want = processed(raw, p, prompt, [...before, 8], stopIds);
    const migrated = processed(raw, { ...p, priorOutputTokens: before.length }, [...prompt, ...before], [8], stopIds);
    expect(migrated).toEqual(want);
  });
});

describe("each processor changes exactly the logits it should", () => {
  const V = 64;
  const raw = Float32Array.from({ length: V }, (_, i) => (i % 2 === 0 ? 1 : -1) * (1 + i / 8));
  const prompt = [10, 11];
  const output = [20, 20, 21, 10];
  const changed = (p: PenaltyParams): number[] => {
    const got = processed(raw, p, prompt, output, [63]);
    return [...got.keys()].filter((i) => !Object.is(got[i], raw[i]));
  };

  it("presence_penalty: the output's tokens, once each", () => {
    expect(changed({ presencePenalty: 0.5 })).toEqual([10, 20, 21]);
    const got = processed(raw, { presencePenalty: 0.5 }, prompt, output, [63]);
    expect(got[20]).toBe(Math.fround(raw[20]! - 0.5));
  });

  it("frequency_penalty: the output's tokens, per occurrence", () => {
    expect(changed({ frequencyPenalty: 0.5 })).toEqual([10, 20, 21]);
    const got = processed(raw, { frequencyPenalty: 0.5 }, prompt, output, [63]);
    expect(got[20]).toBe(Math.fround(raw[20]! - 1));
    expect(got[21]).toBe(Math.fround(raw[21]! - 0.5));
  });

  it("repetition_penalty: prompt and output tokens; positive logits divided, negative multiplied", () => {
    expect(changed({ repetitionPenalty: 2 })).toEqual([10, 11, 20, 21]);
    const got = processed(raw, { repetitionPenalty: 2 }, prompt, output, [63]);
    expect(raw[20]).toBeGreaterThan(0);
    expect(got[20]).toBe(Math.fround(raw[20]! / 2));
    expect(raw[21]).toBeLessThan(0);
    expect(got[21]).toBe(Math.fround(raw[21]! * 2));
  });

  it("logit_bias: only the named tokens", () => {
    expect(
      changed({
        logitBias: [
          [5, 3],
          [40, -3],
        ],
      }),
    ).toEqual([5, 40]);
  });

  it("min_tokens: only the stop ids, and only while the output is shorter", () => {
    expect(changed({ minTokens: 5 })).toEqual([63]);
    expect(processed(raw, { minTokens: 5 }, prompt, output, [63])[63]).toBe(-Infinity);
    expect(changed({ minTokens: 4 })).toEqual([]);
  });
});

describe("logit_bias -100 bans a token; min_p filters by probability", () => {
  it("a token 50 above all others is never sampled once biased by -100", () => {
    const V = 100;
    const raw = new Float32Array(V);
    raw[42] = 50;
    const proc = new LogitsProcessor(V, { logitBias: [[42, -100]] }, [1], []);
    const row = proc.apply(raw, new Float32Array(V));
    const greedy = new Sampler(V, { temperature: 0, topP: 1, topK: -1 });
    expect(greedy.sample(raw)).toBe(42);
    expect(greedy.sample(row)).not.toBe(42);
    const sampler = new Sampler(V, { temperature: 1, topP: 1, topK: -1, seed: 3 });
    for (let i = 0; i < 2000; i++) expect(sampler.sample(row)).not.toBe(42);
  });

  it("min_p keeps exactly the tokens at least min_p times as likely as the best (after temperature)", () => {
    // Probabilities proportional to 1, 1/2, 1/4, 1/8, 1/16 at temperature 1.
    const raw = Float32Array.from([0, -Math.LN2, -2 * Math.LN2, -3 * Math.LN2, -4 * Math.LN2]);
    const probs = new Float32Array(5);
    new Sampler(5, { temperature: 1, topP: 1, topK: -1, minP: 0.2, seed: 1 }).probs(raw, probs);
    expect([...probs].map((x) => x > 0)).toEqual([true, true, true, false, false]);
    expect(probs[0]).toBeCloseTo(4 / 7, 6);
    // Temperature 2 flattens: 1/8 becomes 1/sqrt(8) > 0.3 of the best, 1/16 becomes 1/4 < 0.3.
    new Sampler(5, { temperature: 2, topP: 1, topK: -1, minP: 0.3, seed: 1 }).probs(raw, probs);
    expect([...probs].map((x) => x > 0)).toEqual([true, true, true, true, false]);
    // With top-p after it, the nucleus is taken from the min_p survivors' renormalised mass.
    new Sampler(5, { temperature: 1, topP: 0.6, topK: -1, minP: 0.2, seed: 1 }).probs(raw, probs);
    expect([...probs].map((x) => x > 0)).toEqual([true, true, false, false, false]);
  });

  it("refuses out-of-range values naming the field", () => {
    expect(() => validatePenaltyParams({ presencePenalty: 2.5 })).toThrow(/presence_penalty must be in \[-2, 2\]/);
    expect(() => validatePenaltyParams({ repetitionPenalty: 0 })).toThrow(/repetition_penalty must be in \(0, 2\]/);
    expect(() => validatePenaltyParams({ logitBias: [[3, 101]] })).toThrow(/logit_bias of token 3 must be in \[-100, 100\]/);
    expect(() => validatePenaltyParams({ logitBias: [[9, 1]] }, 8)).toThrow(/outside the vocabulary of 8/);
    expect(() => validatePenaltyParams({ minTokens: -1 })).toThrow(/min_tokens/);
    expect(() => new Sampler(5, { temperature: 1, topP: 1, topK: -1, minP: 1.5 })).toThrow(/min_p must be in \[0, 1\]/);
  });
});

describe("penalties in the engine", () => {
  const PROMPT = [0, 399, 332, 17, 256, 901, 44, 12, 730, 5, 66, 120, 7];
  const PENALISED: GenerationParams = {
    temperature: 0,
    topP: 1,
    topK: -1,
    maxTokens: 24,
    ignoreEos: true,
    topLogprobs: 2,
    presencePenalty: -2,
    frequencyPenalty: 0.5,
    repetitionPenalty: 0.5,
  };
  let model: DeepseekModel;
  beforeAll(() => {
    model = DeepseekModel.load(makeCheckpoint({ preset: "tiny-v3" }));
  });
  afterAll(removeCheckpoints);

  async function generate(engine: Engine, params: GenerationParams, prompt = PROMPT): Promise<number[]> {
    const seq = engine.newSequence("s", prompt, params);
    const out: number[] = [];
    for await (const t of engine.generate(seq)) out.push(t.id);
    return out;
  }

  // Penalties below zero / a repetition penalty below 1 reward repeats: strong enough to bite on the random model.
  it("penalties change greedy output, identically with and without speculation", async () => {
    const plain = await generate(new Engine(model, { speculation: "off" }), { ...PENALISED, presencePenalty: 0, frequencyPenalty: 0, repetitionPenalty: 1 });
    const off = await generate(new Engine(model, { speculation: "off" }), PENALISED);
    const on = await generate(new Engine(model, { speculation: "on" }), PENALISED);
    expect(off).not.toEqual(plain);
    expect(on).toEqual(off);
  });

  it("a penalised sequence gives the same tokens alone and in a batch with others (batch invariance)", async () => {
    const alone = new Engine(model, { speculation: "on" });
    const want = await generate(alone, PENALISED);
    const engine = new Engine(model, { speculation: "on" });
    const seqs = [
      engine.newSequence("a", PROMPT.slice(0, 5), { ...PENALISED, presencePenalty: -2, repetitionPenalty: 0.5 }),
      engine.newSequence("s", PROMPT, PENALISED),
      engine.newSequence("b", [...PROMPT, 3, 3, 3], { temperature: 0.9, topP: 0.9, topK: 20, seed: 5, maxTokens: 24, ignoreEos: true, frequencyPenalty: 2 }),
    ];
    await engine.prefill(seqs);
    while (seqs.some((s) => !s.finished)) await engine.step(seqs.filter((s) => !s.finished));
    expect(seqs[1]!.output.map((t) => t.id)).toEqual(want);
  });

  it("logit_bias -100 on the greedy first token bans it everywhere; +100 forces a token", async () => {
    const engine = new Engine(model, { speculation: "on" });
    const base: GenerationParams = { temperature: 0, topP: 1, topK: -1, maxTokens: 16, ignoreEos: true };
    const plain = await generate(engine, base);
    const banned = plain[0]!;
    const out = await generate(engine, { ...base, logitBias: [[banned, -100]] });
    expect(out).not.toContain(banned);
    const forced = await generate(engine, { ...base, logitBias: [[77, 100]] });
    expect(forced).toEqual(new Array(16).fill(77));
  });

  it("min_tokens holds EOS back until the output is long enough, then EOS ends it", async () => {
    const eos = model.config.eosTokenIds[0]!;
    const engine = new Engine(model, { speculation: "on" });
    // +100 on EOS: without min_tokens it is the first token.
    const params: GenerationParams = { temperature: 0, topP: 1, topK: -1, maxTokens: 16, logitBias: [[eos, 100]] };
    expect(await generate(engine, params)).toEqual([eos]);
    const out = await generate(engine, { ...params, minTokens: 5 });
    expect(out).toHaveLength(6);
    expect(out.slice(0, 5)).not.toContain(eos);
    expect(out[5]).toBe(eos);
  });
});
