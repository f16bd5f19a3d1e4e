/**
 * Constrained decoding in the engine with a random-weight model: greedy and sampled, with and without MTP
 * speculation, and across a snapshot/restore (the prefill -> decode hand-off), the output parses and validates
 * against the schema and ends by itself within max_tokens.
 */
import { Ajv } from "ajv";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { DeepseekModel, Engine, type EngineOptions, type GenerationParams } from "@moela/engine";
import { Tokenizer, tokenTextsOption } from "@moela/tokenizer";
import { makeCheckpoint, removeCheckpoints } from "../../helpers/checkpoints.js";

const SCHEMA = {
  type: "object",
  properties: {
    name: { type: "string", maxLength: 10 },
    age: { type: "integer" },
    tags: { type: "array", items: { enum: ["a", "b", "c"] }, maxItems: 3 },
    nested: { type: "object", properties: { ok: { type: "boolean" }, v: { anyOf: [{ type: "number" }, { type: "null" }] } }, required: ["ok", "v"] },
  },
  required: ["name", "age", "tags", "nested"],
  additionalProperties: false,
};
const GRAMMAR = JSON.stringify({ json: SCHEMA });
const PROMPT = [0, 399, 332, 17, 256, 901, 44, 12];

let dir: string;
let model: DeepseekModel;
let tokenizer: Tokenizer;
const validate = new Ajv({ strict: false }).compile(SCHEMA);

beforeAll(() => {
  dir = makeCheckpoint({ preset: "tiny-v3" });
  model = DeepseekModel.load(dir);
  tokenizer = Tokenizer.fromDir(dir);
});
afterAll(() => removeCheckpoints());

function engine(opts: EngineOptions = {}): Engine {
  return new Engine(model, { blockSize: 4, numBlocks: 512, ...tokenTextsOption(dir), ...opts });
}

async function generate(e: Engine, params: GenerationParams): Promise<{ text: string; ids: number[]; finish: string | null }> {
  const seq = e.newSequence("s", PROMPT, params);
  const ids: number[] = [];
  for await (const t of e.generate(seq)) ids.push(t.id);
  return { text: tokenizer.decode(ids, { skipSpecialTokens: true }), ids, finish: seq.finishReason };
}

describe("constrained decoding with a random-weight model", () => {
  const cases: Array<[string, Partial<GenerationParams>, EngineOptions]> = [
    ["greedy, no speculation", { temperature: 0 }, { speculation: "off" }],
    ["greedy, MTP drafting on every step", { temperature: 0 }, { speculation: "on" }],
    ["sampled (top-k, top-p), drafting", { temperature: 1, topK: 50, topP: 0.95, seed: 5 }, { speculation: "on" }],
    ["sampled with penalties and logit_bias", { temperature: 0.8, seed: 9, presencePenalty: 1, logitBias: [[125, 100]] }, { speculation: "on" }],
  ];
  for (const [name, p, opts] of cases) {
    it(name, async () => {
      const out = await generate(engine(opts), { temperature: 1, topP: 1, topK: -1, maxTokens: 300, ...p, grammar: GRAMMAR });
      const value: unknown = JSON.parse(out.text);
      expect(validate(value), out.text).toBe(true);
      expect(out.finish).toBe("stop");
      expect(out.ids.length).toBeLessThanOrEqual(300);
    });
  }

  it("drafting changes no token: greedy output with and without speculation is the same", async () => {
    const params: GenerationParams = { temperature: 0, topP: 1, topK: -1, maxTokens: 200, grammar: GRAMMAR };
    const on = await generate(engine({ speculation: "on" }), params);
    const off = await generate(engine({ speculation: "off" }), params);
    expect(on.ids).toEqual(off.ids);
  });

  it("a tight max_tokens still ends in a complete, valid value", async () => {
    // At least the shortest valid value (56 characters): each character is a token of its own at worst.
    for (const maxTokens of [56, 60, 75]) {
      const out = await generate(engine(), { temperature: 1, topP: 1, topK: -1, seed: 3, maxTokens, grammar: GRAMMAR });
      expect(out.ids.length).toBeLessThanOrEqual(maxTokens);
      expect(validate(JSON.parse(out.text)), out.text).toBe(true);
    }
  });

  it("a hand-off mid-output (snapshot -> restore on another engine) continues inside the grammar", async () => {
    const params: GenerationParams = { temperature: 1, topP: 1, topK: -1, seed: 17, maxTokens: 300, grammar: GRAMMAR };
    const whole = await generate(engine({ speculation: "off" }), params);
    const a = engine({ speculation: "off" });
    const seq = a.newSequence("s", PROMPT, params);
    await a.prefill([seq]);
    for (let i = 0; i < 5 && !seq.finished; i++) await a.step([seq]);
    const snap = seq.snapshot();
    const b = engine({ speculation: "off" });
    const table = b.reserveBlocks(PROMPT.length + params.maxTokens);
    const rows = new Float32Array(a.cache.latentDim * (snap.prompt.length + snap.output.length - 1));
    for (let layer = 0; layer < a.model.cacheLayers; layer++) {
      a.cache.read(layer, seq.blockTable, 0, snap.prompt.length + snap.output.length - 1, rows);
      b.cache.write(layer, table, 0, snap.prompt.length + snap.output.length - 1, rows);
    }
    const cont = b.restore(snap, table);
    while (!cont.finished) await b.step([cont]);
    const ids = cont.output.map((t) => t.id);
    expect(ids).toEqual(whole.ids);
    expect(validate(JSON.parse(tokenizer.decode(ids, { skipSpecialTokens: true })))).toBe(true);
  });

  it("a migrated attempt (earlier output at the prompt's tail, priorOutputTokens) continues where the grammar stood", async () => {
    const params: GenerationParams = { temperature: 1, topP: 1, topK: -1, seed: 23, maxTokens: 300, grammar: GRAMMAR };
    const first = await generate(engine(), params);
    const sent = first.ids.slice(0, 6);
    const rest = await (async () => {
      const e = engine();
      const seq = e.newSequence("s", [...PROMPT, ...sent], { ...params, maxTokens: params.maxTokens - sent.length, priorOutputTokens: sent.length });
      const ids: number[] = [];
      for await (const t of e.generate(seq)) ids.push(t.id);
      return ids;
    })();
    const text = tokenizer.decode([...sent, ...rest], { skipSpecialTokens: true });
    expect(validate(JSON.parse(text)), text).toBe(true);
    // Earlier output the grammar cannot have produced is refused.
    const bad = tokenizer.encode("]]", { addSpecialTokens: false });
    expect(() => engine().newSequence("s", [...PROMPT, ...bad], { ...params, priorOutputTokens: bad.length })).toThrow(/does not continue/);
  });

  it("an engine without token texts refuses a constrained request", () => {
    const bare = new Engine(model, { blockSize: 4, numBlocks: 64 });
    expect(() => bare.newSequence("s", PROMPT, { temperature: 0, topP: 1, topK: -1, maxTokens: 10, grammar: GRAMMAR })).toThrow(/cannot constrain/);
  });
});
