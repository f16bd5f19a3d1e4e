/**
 * Structured output: response_format (json_object, json_schema) and tools with tool_choice, as OpenAI defines
 * them, turned into the engine's grammar spec (GenerationParams.grammar, packages/engine/src/grammar/spec.ts)
 * and, for tools, parsed back out of the generated text.
 *
 * - response_format {"type": "json_object"} -> the output is one JSON object; {"type": "json_schema",
 *   "json_schema": {"name", "schema", "strict"}} -> one JSON value valid against the schema (the engine's
 *   supported subset; anything else is a 400 naming the field and listing what is supported). "text" -> free.
 * - tools: function tools only (name [a-zA-Z0-9_-]{1,64}, parameters a schema of the same subset, absent =
 *   no arguments). tool_choice "none" ignores them; "auto" (the default with tools) leaves the output free and
 *   parses any tool calls the model writes; "required" and {"type": "function", "function": {"name"}} constrain
 *   the output to exactly one call, in DeepSeek-V3's chat-template format, of any tool / the named one, with
 *   arguments valid against its parameters:
 *     <｜tool▁calls▁begin｜><｜tool▁call▁begin｜>function<｜tool▁sep｜>NAME\n```json\nARGS\n```<｜tool▁call▁end｜><｜tool▁calls▁end｜>
 *   (the markers are one token each in DeepSeek-V3's tokenizer; a tokenizer without them spells them out).
 * - A schema is checked by ValidationContext.checkSchema (the engine's compiler); without one, json_schema and
 *   tools with parameters are refused.
 */
import { randomBytes } from "node:crypto";
import { errorMessage } from "@moela/core";

export const TOOL_CALLS_BEGIN = "<｜tool▁calls▁begin｜>";
export const TOOL_CALLS_END = "<｜tool▁calls▁end｜>";
export const TOOL_CALL_BEGIN = "<｜tool▁call▁begin｜>";
export const TOOL_CALL_END = "<｜tool▁call▁end｜>";
export const TOOL_SEP = "<｜tool▁sep｜>";
/** Most tools in one request. */
export const MAX_TOOLS = 128;
const TOOL_NAME = /^[a-zA-Z0-9_-]{1,64}$/;
const NO_ARGUMENTS = { type: "object", properties: {} } as const;

/** Throws with a message naming the field when a schema is outside the supported subset (path: its field). */
export type SchemaChecker = (schema: unknown, path: string) => void;

export interface ToolDefinition {
  readonly name: string;
  readonly description?: string;
  readonly parameters: unknown;
}

export type ToolChoice = "none" | "auto" | "required" | { readonly name: string };

/** What a chat request's response_format and tools ask of the generation and of the response. */
export interface StructuredOutput {
  /** GenerationParams.grammar, when the output is constrained. */
  readonly grammar?: string;
  /** Tools offered (passed to the chat template as `tools`); empty when none or tool_choice "none". */
  readonly tools: readonly ToolDefinition[];
  /** Parse tool calls out of the output (tools given and tool_choice is not "none"). */
  readonly parseToolCalls: boolean;
}

export interface ToolCall {
  readonly id: string;
  readonly type: "function";
  readonly function: { readonly name: string; readonly arguments: string };
}

type Fail = (param: string, message: string) => never;

function isObject(v: unknown): v is Record<string, unknown> {
  return typeof v === "object" && v !== null && !Array.isArray(v);
}

function checked(check: SchemaChecker | undefined, schema: unknown, path: string, fail: Fail): void {
  if (check === undefined) fail(path, `${path}: this server cannot constrain output to a schema (no tokenizer)`);
  try {
    check(schema, path);
  } catch (err) {
    fail(path, errorMessage(err));
  }
}

/** response_format -> a grammar spec text, or undefined for free text. */
export function parseResponseFormat(raw: unknown, check: SchemaChecker | undefined, fail: Fail): string | undefined {
  if (raw === undefined || raw === null) return undefined;
  if (!isObject(raw)) fail("response_format", "response_format must be an object");
  const type = raw.type;
  if (type === "text") return undefined;
  if (type === "json_object") {
    if (check === undefined) fail("response_format", "response_format: this server cannot constrain output (no tokenizer)");
    return JSON.stringify({ json: { type: "object" } });
  }
  if (type === "json_schema") {
    const js = raw.json_schema;
    if (!isObject(js)) fail("response_format.json_schema", "response_format.json_schema must be an object with name and schema");
    if (typeof js.name !== "string" || !/^[a-zA-Z0-9_-]{1,64}$/.test(js.name)) {
      fail("response_format.json_schema.name", "response_format.json_schema.name must be 1-64 letters, digits, _ or -");
    }
    if (js.strict !== undefined && js.strict !== null && typeof js.strict !== "boolean")
      fail("response_format.json_schema.strict", "response_format.json_schema.strict must be a boolean");
    const schema = js.schema ?? {};
    checked(check, schema, "response_format.json_schema.schema", fail);
    return JSON.stringify({ json: schema });
  }
  fail("response_format.type", `response_format.type must be "text", "json_object" or "json_schema", got ${JSON.stringify(type)}`);
}

/** tools and tool_choice of a chat request. */
export function parseTools(
  rawTools: unknown,
  rawChoice: unknown,
  check: SchemaChecker | undefined,
  fail: Fail,
): { tools: ToolDefinition[]; choice: ToolChoice } {
  const tools: ToolDefinition[] = [];
  if (rawTools !== undefined && rawTools !== null) {
    if (!Array.isArray(rawTools)) fail("tools", "tools must be a list");
    if (rawTools.length > MAX_TOOLS) fail("tools", `tools may hold at most ${MAX_TOOLS} tools, got ${rawTools.length}`);
    const names = new Set<string>();
    rawTools.forEach((t: unknown, i) => {
      const p = `tools[${i}]`;
      if (!isObject(t) || t.type !== "function" || !isObject(t.function)) fail(p, `${p} must be {"type": "function", "function": {...}}`);
      const fn = t.function;
      if (typeof fn.name !== "string" || !TOOL_NAME.test(fn.name)) fail(`${p}.function.name`, `${p}.function.name must be 1-64 letters, digits, _ or -`);
      if (names.has(fn.name)) fail(`${p}.function.name`, `${p}.function.name ${JSON.stringify(fn.name)} is given twice`);
      names.add(fn.name);
      if (fn.description !== undefined && typeof fn.description !== "string") fail(`${p}.function.description`, `${p}.function.description must be a string`);
      const parameters = fn.parameters ?? NO_ARGUMENTS;
      checked(check, parameters, `${p}.function.parameters`, fail);
      tools.push({ name: fn.name, ...(typeof fn.description === "string" ? { description: fn.description } : {}), parameters });
    });
  }
  let choice: ToolChoice;
  if (rawChoice === undefined || rawChoice === null) choice = tools.length > 0 ? "auto" : "none";
  else if (rawChoice === "none" || rawChoice === "auto" || rawChoice === "required") choice = rawChoice;
  else if (isObject(rawChoice) && rawChoice.type === "function" && isObject(rawChoice.function) && typeof rawChoice.function.name === "string") {
    const name = rawChoice.function.name;
    if (!tools.some((t) => t.name === name)) fail("tool_choice", `tool_choice names ${JSON.stringify(name)}, which is not in tools`);
    choice = { name };
  } else {
    fail("tool_choice", 'tool_choice must be "none", "auto", "required" or {"type": "function", "function": {"name": ...}}');
  }
  if (choice === "required" && tools.length === 0) fail("tool_choice", 'tool_choice "required" needs tools');
  return { tools, choice };
}

/** The grammar spec of exactly one call of one of `tools`, in DeepSeek-V3's format. */
export function toolCallGrammar(tools: readonly ToolDefinition[]): string {
  return JSON.stringify({
    sequence: [
      { literal: `${TOOL_CALLS_BEGIN}${TOOL_CALL_BEGIN}function${TOOL_SEP}` },
      { choice: tools.map((t) => [{ literal: `${t.name}\n\`\`\`json\n` }, { json: t.parameters }, { literal: `\n\`\`\`${TOOL_CALL_END}${TOOL_CALLS_END}` }]) },
    ],
  });
}

/** response_format and tools together: what the generation is constrained to, and whether to parse calls. */
export function parseStructuredOutput(
  fields: { responseFormat: unknown; tools: unknown; toolChoice: unknown },
  check: SchemaChecker | undefined,
  fail: Fail,
): StructuredOutput {
  const format = parseResponseFormat(fields.responseFormat, check, fail);
  const { tools, choice } = parseTools(fields.tools, fields.toolChoice, check, fail);
  if (choice === "none") return { ...(format !== undefined ? { grammar: format } : {}), tools: [], parseToolCalls: false };
  if (choice === "auto") return { ...(format !== undefined ? { grammar: format } : {}), tools, parseToolCalls: true };
  if (format !== undefined) fail("response_format", "response_format cannot be combined with a tool_choice that forces a call");
  const forced = choice === "required" ? tools : tools.filter((t) => t.name === choice.name);
  return { grammar: toolCallGrammar(forced), tools, parseToolCalls: true };
}

const CALL = new RegExp(`${TOOL_CALL_BEGIN}(.*?)${TOOL_SEP}(.*?)\\n\`\`\`json\\n(.*?)\\n\`\`\`${TOOL_CALL_END}`, "gs");

export function newToolCallId(): string {
  return `call_${randomBytes(12).toString("hex")}`;
}

/**
 * The tool calls in a generated text (DeepSeek-V3's format, as vLLM's deepseek_v3 parser reads it): the text
 * before the first TOOL_CALLS_BEGIN is the content (null when blank), each complete call a ToolCall. null when
 * the text has no complete call (it is then all content).
 */
export function extractToolCalls(text: string): { content: string | null; calls: ToolCall[] } | null {
  const start = text.indexOf(TOOL_CALLS_BEGIN);
  if (start < 0) return null;
  const calls: ToolCall[] = [];
  for (const m of text.slice(start).matchAll(CALL)) {
    calls.push({ id: newToolCallId(), type: "function", function: { name: m[2]!, arguments: m[3]! } });
  }
  if (calls.length === 0) return null;
  const before = text.slice(0, start);
  return { content: before.trim() === "" ? null : before, calls };
}

/** How much of a streamed text may go out as content now: all of it up to a possible start of TOOL_CALLS_BEGIN. */
export function streamableContent(text: string): number {
  const start = text.indexOf(TOOL_CALLS_BEGIN);
  if (start >= 0) return start;
  // A suffix that could grow into the marker is held back.
  for (let k = Math.min(TOOL_CALLS_BEGIN.length - 1, text.length); k > 0; k--) {
    if (TOOL_CALLS_BEGIN.startsWith(text.slice(text.length - k))) return text.length - k;
  }
  return text.length;
}
