import { describe, expect, it } from "vitest";
import { checkJsonSchema } from "@moela/engine";
import {
  extractToolCalls,
  parseChatRequest,
  parseCompletionRequest,
  parseStructuredOutput,
  RequestValidationError,
  streamableContent,
  TOOL_CALL_BEGIN,
  TOOL_CALL_END,
  TOOL_CALLS_BEGIN,
  TOOL_CALLS_END,
  TOOL_SEP,
  type ValidationContext,
} from "@moela/openai-api";
import { tinyValidationContext } from "../../helpers/openai-context.js";

const fail = (param: string, message: string): never => {
  throw new RequestValidationError(message, param, null);
};
const parse = (fields: { responseFormat?: unknown; tools?: unknown; toolChoice?: unknown }) =>
  parseStructuredOutput({ responseFormat: fields.responseFormat, tools: fields.tools, toolChoice: fields.toolChoice }, checkJsonSchema, fail);

const WEATHER = {
  type: "function",
  function: { name: "get_weather", parameters: { type: "object", properties: { city: { type: "string" } }, required: ["city"] } },
};
const NOOP = { type: "function", function: { name: "noop" } };
const call = (name: string, args: string): string => `${TOOL_CALL_BEGIN}function${TOOL_SEP}${name}\n\`\`\`json\n${args}\n\`\`\`${TOOL_CALL_END}`;

describe("response_format and tools -> the grammar spec", () => {
  it("text and absent leave the output free; json_object and json_schema constrain it", () => {
    expect(parse({})).toEqual({ tools: [], parseToolCalls: false });
    expect(parse({ responseFormat: { type: "text" } }).grammar).toBeUndefined();
    expect(JSON.parse(parse({ responseFormat: { type: "json_object" } }).grammar!)).toEqual({ json: { type: "object" } });
    const schema = { type: "object", properties: { a: { type: "integer" } } };
    expect(JSON.parse(parse({ responseFormat: { type: "json_schema", json_schema: { name: "n", schema, strict: true } } }).grammar!)).toEqual({ json: schema });
  });

  it("tool_choice auto (the default with tools) parses calls without constraining; none drops the tools", () => {
    expect(parse({ tools: [WEATHER] })).toMatchObject({ parseToolCalls: true, tools: [{ name: "get_weather" }] });
    expect(parse({ tools: [WEATHER] }).grammar).toBeUndefined();
    expect(parse({ tools: [WEATHER], toolChoice: "none" })).toEqual({ tools: [], parseToolCalls: false });
  });

  it("required allows every tool; a named choice only that one; an absent parameters schema is no arguments", () => {
    const required = JSON.parse(parse({ tools: [WEATHER, NOOP], toolChoice: "required" }).grammar!) as {
      sequence: [{ literal: string }, { choice: unknown[][] }];
    };
    expect(required.sequence[0].literal).toBe(`${TOOLS_PREFIX}`);
    expect(required.sequence[1].choice).toHaveLength(2);
    const named = JSON.parse(parse({ tools: [WEATHER, NOOP], toolChoice: { type: "function", function: { name: "noop" } } }).grammar!) as typeof required;
    expect(named.sequence[1].choice).toEqual([
      [{ literal: "noop\n```json\n" }, { json: { type: "object", properties: {} } }, { literal: `\n\`\`\`${TOOL_CALL_END}${TOOL_CALLS_END}` }],
    ]);
  });

  it.each([
    [
      { responseFormat: { type: "json_schema", json_schema: { name: "n", schema: { type: "string", format: "email" } } } },
      "response_format.json_schema.schema",
      /schema\.format: .*not supported/,
    ],
    [{ responseFormat: { type: "json_schema", json_schema: { schema: {} } } }, "response_format.json_schema.name", /name must be/],
    [{ responseFormat: "json" }, "response_format", /must be an object/],
    [{ tools: [{ type: "function", function: { name: "bad name" } }] }, "tools[0].function.name", /letters, digits/],
    [{ tools: [WEATHER, WEATHER] }, "tools[1].function.name", /given twice/],
    [
      { tools: [{ ...WEATHER, function: { ...WEATHER.function, parameters: { type: "object", properties: { n: { type: "integer", maximum: 3 } } } } }] },
      "tools[0].function.parameters",
      /properties\.n\.maximum/,
    ],
    [{ tools: [WEATHER], toolChoice: { type: "function", function: { name: "x" } } }, "tool_choice", /not in tools/],
    [{ toolChoice: "required" }, "tool_choice", /needs tools/],
    [{ tools: [WEATHER], toolChoice: "always" }, "tool_choice", /must be "none", "auto", "required"/],
    [{ tools: [WEATHER], toolChoice: "required", responseFormat: { type: "json_object" } }, "response_format", /cannot be combined/],
  ])("%j -> 400 on %s", (fields, param, message) => {
    let caught: unknown = null;
    try {
      parse(fields);
    } catch (err) {
      caught = err;
    }
    expect(caught).toBeInstanceOf(RequestValidationError);
    expect((caught as RequestValidationError).param).toBe(param);
    expect((caught as RequestValidationError).message).toMatch(message);
  });
});

const TOOLS_PREFIX = `${TOOL_CALLS_BEGIN}${TOOL_CALL_BEGIN}function${TOOL_SEP}`;

describe("tool calls in the generated text (DeepSeek-V3's format)", () => {
  it("finds each complete call and the content before them", () => {
    const text = `Let me check.${TOOL_CALLS_BEGIN}${call("get_weather", '{"city":"Paris"}')}\n${call("noop", "{}")}${TOOL_CALLS_END}`;
    const got = extractToolCalls(text)!;
    expect(got.content).toBe("Let me check.");
    expect(got.calls.map((c) => [c.type, c.function.name, c.function.arguments])).toEqual([
      ["function", "get_weather", '{"city":"Paris"}'],
      ["function", "noop", "{}"],
    ]);
    expect(new Set(got.calls.map((c) => c.id)).size).toBe(2);
    expect(extractToolCalls(`${TOOL_CALLS_BEGIN}${call("a", "{}")}`)!.content).toBeNull();
  });

  it("no marker, or no complete call: not tool calls", () => {
    expect(extractToolCalls("plain text")).toBeNull();
    expect(extractToolCalls(`${TOOL_CALLS_BEGIN}${TOOL_CALL_BEGIN}function${TOOL_SEP}get_weather\n\`\`\`json\n{"ci`)).toBeNull();
  });

  it("streaming holds back only what may be the start of a call", () => {
    expect(streamableContent("hello")).toBe(5);
    expect(streamableContent("hello<｜tool")).toBe(5);
    expect(streamableContent(`hi${TOOL_CALLS_BEGIN}xyz`)).toBe(2);
    expect(streamableContent("a < b")).toBe(5);
  });
});

describe("the chat and completions requests carry the grammar", () => {
  const ctx: ValidationContext = { ...tinyValidationContext, checkSchema: checkJsonSchema };
  const format = { type: "json_schema", json_schema: { name: "n", schema: { type: "object", properties: { a: { type: "boolean" } }, required: ["a"] } } };

  it("completions (every prompt of a batch) and chat; tools go to the template as `tools`", () => {
    const c = parseCompletionRequest({ prompt: ["x", "y"], response_format: format }, ctx);
    expect(c.sampling.map((s) => s.grammar)).toEqual([
      JSON.stringify({ json: format.json_schema.schema }),
      JSON.stringify({ json: format.json_schema.schema }),
    ]);
    const chat = parseChatRequest({ messages: [{ role: "user", content: "hi" }], tools: [WEATHER], tool_choice: "required" }, ctx);
    expect(chat.parseToolCalls).toBe(true);
    expect(chat.sampling[0]!.grammar).toContain("get_weather");
    expect(parseChatRequest({ messages: [{ role: "user", content: "hi" }] }, ctx).sampling[0]!.grammar).toBeUndefined();
    expect(parseChatRequest({ messages: [{ role: "user", content: "hi" }] }, ctx).parseToolCalls).toBeUndefined();
  });

  it("without a schema checker (a model without a tokenizer) a schema is refused", () => {
    const { checkSchema: _, ...bare } = ctx;
    expect(() => parseCompletionRequest({ prompt: [1, 2], response_format: format }, bare)).toThrow(/cannot constrain/);
  });
});
