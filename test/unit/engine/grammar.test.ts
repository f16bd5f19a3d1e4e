import { Ajv } from "ajv";
import { describe, expect, it } from "vitest";
import { InvalidArgumentError } from "@moela/core";
import {
  CompiledGrammar,
  GrammarMatcher,
  GrammarVocabulary,
  Rng,
  advanceText,
  checkJsonSchema,
  compileJsonSchema,
  initialState,
  type TokenTexts,
} from "@moela/engine";

const EOS = 0;
const SPECIALS = ["<｜end▁of▁sentence｜>", "<｜tool▁calls▁begin｜>", "<｜tool▁sep｜>"];

/** A small byte-level-like vocabulary: every printable ASCII character, some multi-character pieces, specials, a broken byte. */
function vocabulary(): TokenTexts {
  const texts: (string | null)[] = [...SPECIALS];
  for (let c = 0x20; c < 0x7f; c++) texts.push(String.fromCharCode(c));
  texts.push(
    ...[
      '{"',
      '":',
      '",',
      '"}',
      "}}",
      "]}",
      "true",
      "null",
      "false",
      "abc",
      " the",
      "\\n",
      "0.5",
      "123",
      '{"name": "',
      "\n",
      "\t",
      "é",
      "\ufffd",
      "name",
      '"a',
      "-1",
    ],
  );
  return { texts, specialIds: new Set([0, 1, 2]) };
}

const VOCAB = new GrammarVocabulary(vocabulary(), [EOS]);
const ajv = new Ajv({ strict: false });

/** Walks the grammar with uniformly random allowed tokens; checks the mask at every step. */
function randomOutput(spec: string, seed: number, maxTokens: number): { text: string; tokens: number; ended: "eos" | "terminal" | "length" } {
  const m = new GrammarMatcher(CompiledGrammar.compile(spec, VOCAB));
  const rng = new Rng(seed);
  const row = new Float32Array(VOCAB.size);
  let text = "";
  for (let t = 0; t < maxTokens; t++) {
    if (m.terminal) return { text, tokens: t, ended: "terminal" };
    row.fill(1);
    m.applyMask(row, maxTokens - t);
    const allowed: number[] = [];
    row.forEach((v, id) => v > -Infinity && allowed.push(id));
    expect(allowed.length).toBeGreaterThan(0);
    // EOS only when the value is complete.
    expect(allowed.includes(EOS)).toBe(m.complete);
    const id = allowed[Math.floor(rng.next() * allowed.length)]!;
    if (id === EOS) return { text, tokens: t + 1, ended: "eos" };
    m.push(id);
    text += vocabulary().texts[id]!;
  }
  return { text, tokens: maxTokens, ended: m.terminal ? "terminal" : "length" };
}

const SCHEMAS: Array<{ name: string; schema: unknown }> = [
  {
    name: "object with required and optional properties",
    schema: {
      type: "object",
      properties: { name: { type: "string", maxLength: 12 }, age: { type: "integer" }, ok: { type: "boolean" }, note: { type: "null" } },
      required: ["name", "age"],
      additionalProperties: false,
    },
  },
  {
    name: "enum and const",
    schema: { type: "object", properties: { c: { enum: ["red", "green", 3, null] }, k: { const: { a: [1, "x"] } } }, required: ["c", "k"] },
  },
  { name: "array with bounds", schema: { type: "array", items: { type: "number" }, minItems: 2, maxItems: 4 } },
  {
    name: "nested objects and anyOf",
    schema: {
      type: "object",
      properties: {
        inner: { type: "object", properties: { x: { anyOf: [{ type: "string", minLength: 2, maxLength: 5 }, { type: "integer" }] } }, required: ["x"] },
        tags: { type: "array", items: { type: "string", maxLength: 4 }, maxItems: 3 },
        t: { type: ["string", "null"], maxLength: 3 },
      },
      required: ["inner", "tags", "t"],
      additionalProperties: false,
    },
  },
  { name: "json_object (free-form)", schema: { type: "object" } },
  { name: "a bare string", schema: { type: "string", maxLength: 8 } },
];

describe("grammar: random walks give JSON that validates", () => {
  for (const { name, schema } of SCHEMAS) {
    it(name, () => {
      const validate = ajv.compile(schema as object);
      for (let seed = 1; seed <= 40; seed++) {
        const out = randomOutput(JSON.stringify({ json: schema }), seed, 300);
        const value: unknown = JSON.parse(out.text);
        expect(validate(value), `${out.text}: ${ajv.errorsText(validate.errors)}`).toBe(true);
        expect(out.text).not.toMatch(/\s\s|\n|\t/);
      }
    });
  }

  it("finishes within a small token budget (the budget forces the closing characters)", () => {
    const schema = SCHEMAS[3]!.schema;
    const validate = ajv.compile(schema as object);
    for (let seed = 1; seed <= 20; seed++) {
      const out = randomOutput(JSON.stringify({ json: schema }), seed, 40);
      expect(out.tokens).toBeLessThanOrEqual(40);
      expect(validate(JSON.parse(out.text)), out.text).toBe(true);
    }
  });

  it("a sequence of literals (special tokens) and JSON: the markers only as their special token", () => {
    const spec = JSON.stringify({
      sequence: [
        { literal: "<｜tool▁calls▁begin｜>function<｜tool▁sep｜>" },
        {
          choice: [
            [{ literal: "get_weather\n" }, { json: { type: "object", properties: { city: { type: "string", maxLength: 5 } }, required: ["city"] } }],
            [{ literal: "noop\n" }, { json: { type: "object", properties: {} } }],
          ],
        },
      ],
    });
    for (let seed = 1; seed <= 20; seed++) {
      const out = randomOutput(spec, seed, 200);
      expect(out.ended).toBe("terminal");
      const m = /^<｜tool▁calls▁begin｜>function<｜tool▁sep｜>(get_weather|noop)\n(.*)$/s.exec(out.text);
      expect(m, out.text).not.toBeNull();
      const args = JSON.parse(m![2]!) as Record<string, unknown>;
      if (m![1] === "get_weather") expect(typeof args.city).toBe("string");
      else expect(args).toEqual({});
    }
    // Spelling the marker with ordinary characters is refused.
    const m = new GrammarMatcher(CompiledGrammar.compile(spec, VOCAB));
    expect(() => m.push(vocabulary().texts.indexOf("<"))).toThrow(/does not continue/);
  });

  it("EOS is the only token once the value is closed", () => {
    const m = new GrammarMatcher(CompiledGrammar.compile(JSON.stringify({ json: { type: "array", maxItems: 0 } }), VOCAB));
    m.push(vocabulary().texts.indexOf("["));
    expect(m.complete).toBe(false);
    m.push(vocabulary().texts.indexOf("]"));
    expect(m.terminal).toBe(true);
    const row = new Float32Array(VOCAB.size).fill(2);
    m.applyMask(row, 10);
    expect([...row.keys()].filter((i) => row[i]! > -Infinity)).toEqual([EOS]);
  });

  it("the grammar wins over a banned EOS (min_tokens): the allowed tokens get a finite logit", () => {
    const m = new GrammarMatcher(CompiledGrammar.compile(JSON.stringify({ json: { const: 1 } }), VOCAB));
    m.push(vocabulary().texts.indexOf("1"));
    const row = new Float32Array(VOCAB.size).fill(1);
    row[EOS] = -Infinity;
    m.applyMask(row, 10);
    expect(row[EOS]).toBe(0);
  });

  it("a top-level number may go on or end: EOS allowed, not forced", () => {
    const m = new GrammarMatcher(CompiledGrammar.compile(JSON.stringify({ json: { type: "integer" } }), VOCAB));
    m.push(vocabulary().texts.indexOf("123"));
    const row = new Float32Array(VOCAB.size).fill(0);
    m.applyMask(row, 10);
    expect(row[EOS]).toBe(0);
    expect(row[vocabulary().texts.indexOf("4")]).toBe(0);
    expect(row[vocabulary().texts.indexOf(".")]).toBe(-Infinity);
  });
});

describe("grammar: cached masks", () => {
  it("a cached mask (keyed with the string counters clamped) is the mask computed afresh, at every step and budget", () => {
    const schema = {
      type: "object",
      properties: {
        long: { type: "string", minLength: 15, maxLength: 40 },
        n: { type: "array", items: { type: "integer" }, minItems: 1, maxItems: 5 },
        free: { type: "object" },
      },
      required: ["long", "n", "free"],
    };
    const grammar = CompiledGrammar.compile(JSON.stringify({ json: schema }), VOCAB);
    const cached = new Uint8Array(VOCAB.size);
    const fresh = new Uint8Array(VOCAB.size);
    let compared = 0;
    for (let seed = 1; seed <= 25; seed++) {
      const rng = new Rng(seed);
      let state = grammar.initial;
      for (let t = 0; t < 150 && !(state.accept && state.stacks.length === 0); t++) {
        for (const budget of [Infinity, 150 - t, 20]) {
          VOCAB.fillMask(state, budget, cached, true);
          VOCAB.fillMask(state, budget, fresh, false);
          expect(cached).toEqual(fresh);
          compared++;
        }
        VOCAB.fillMask(state, 150 - t, fresh, false);
        const allowed = [...fresh.keys()].filter((id) => fresh[id] === 1 && id !== EOS);
        if (allowed.length === 0) break;
        state = advanceText(state, VOCAB.tokenCps(allowed[Math.floor(rng.next() * allowed.length)]!)!)!;
        expect(state).not.toBeNull();
      }
    }
    expect(compared).toBeGreaterThan(1000);
  });
});

describe("grammar: the character automaton", () => {
  const accepts = (schema: unknown, text: string): boolean => {
    const s = advanceText(initialState(compileJsonSchema(schema, "schema")), text);
    return s !== null && s.accept;
  };
  it.each([
    [{ type: "string", maxLength: 3 }, '"abc"', true],
    [{ type: "string", maxLength: 3 }, '"abcd"', false],
    [{ type: "string", minLength: 2 }, '"a"', false],
    [{ type: "string" }, '"a\\"b\\n"', true],
    [{ type: "string" }, '"a\\u0041"', false],
    [{ type: "integer" }, "-0", true],
    [{ type: "integer" }, "01", false],
    [{ type: "number" }, "3.25", true],
    [{ type: "number" }, "1e5", false],
    [{ type: "object", properties: { a: { type: "null" } }, required: ["a"] }, '{"a": null}', true],
    [{ type: "object", properties: { a: { type: "null" } }, required: ["a"] }, '{"a":  null}', false],
    [{ type: "object", properties: { a: { type: "null" } }, required: ["a"] }, "{}", false],
    [{ type: "object", properties: { a: { type: "null" }, b: { type: "null" } } }, '{"b":null}', true],
    [{ type: "object", properties: { a: { type: "null" }, b: { type: "null" } } }, '{"b":null,"a":null}', false],
    [{ type: "array", maxItems: 2, items: { type: "boolean" } }, "[true, false]", true],
    [{ type: "array", maxItems: 2, items: { type: "boolean" } }, "[true,false,true]", false],
    [{ type: "object" }, '{"k": [1, {"x": "y"}], "n": null}', true],
    [{ type: "object" }, '{ "k": 1}', false],
  ])("%j on %s -> %s", (schema, text, ok) => {
    expect(accepts(schema, text)).toBe(ok);
  });
});

describe("grammar: schema validation names the field", () => {
  it.each([
    [{ type: "object", properties: { a: { type: "integer", minimum: 3 } } }, /^s\.properties\.a\.minimum: .*not supported; supported: type, properties/],
    [{ type: "string", pattern: "^a" }, /^s\.pattern: /],
    [{ $ref: "#/x" }, /^s\.\$ref: /],
    [{ type: "object", properties: { a: {} }, required: ["b"] }, /^s\.required: names "b"/],
    [{ type: "date" }, /^s\.type: must be one of/],
    [{ type: "string", minLength: 5, maxLength: 2 }, /^s\.minLength: /],
    [{ type: "string", items: {} }, /^s\.items: applies to array/],
    [{ anyOf: [] }, /^s\.anyOf: /],
    ["string", /^s: must be a JSON object/],
  ])("%j", (schema, message) => {
    expect(() => checkJsonSchema(schema, "s")).toThrow(InvalidArgumentError);
    expect(() => checkJsonSchema(schema, "s")).toThrow(message);
  });

  it("annotations are ignored", () => {
    expect(() => checkJsonSchema({ type: "object", title: "T", description: "d", properties: { a: { type: "string", description: "x" } } }, "s")).not.toThrow();
  });
});
