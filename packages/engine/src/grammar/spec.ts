/**
 * What a constrained request asks for, as it travels (router -> job -> prefill -> KV hand-off -> decode) in
 * GenerationParams.grammar: the JSON text of a GrammarSpec. Each engine compiles it again (cached per text),
 * so no compiled state crosses a process boundary; a continuation rebuilds its automaton from the spec and the
 * tokens already generated.
 *
 *   {"json": <schema>}                  the whole output is one JSON value valid against <schema>
 *                                       (response_format json_object is {"json": {"type": "object"}})
 *   {"sequence": [<part>, ...]}         the parts one after the other, where a part is
 *       {"literal": "text"}             exactly this text (a special token's content stands for that token)
 *       {"json": <schema>}              one JSON value
 *       {"choice": [[<part>...], ...]}  one of the part lists (tool calls: one list per function)
 */
import { errorMessage, InvalidArgumentError } from "@moela/core";
import { compileJsonSchema, lit, type GNode } from "./schema.js";

export type GrammarPart = { readonly literal: string } | { readonly json: unknown } | { readonly choice: readonly (readonly GrammarPart[])[] };

export type GrammarSpec = { readonly json: unknown } | { readonly sequence: readonly GrammarPart[] };

/** Longest GenerationParams.grammar text accepted (a request's schemas and tool definitions). */
export const MAX_GRAMMAR_CHARS = 256 * 1024;

function isObject(v: unknown): v is Record<string, unknown> {
  return typeof v === "object" && v !== null && !Array.isArray(v);
}

function compilePart(p: unknown, path: string): GNode {
  if (!isObject(p)) throw new InvalidArgumentError(`${path} must be an object`);
  if (typeof p.literal === "string") return lit(p.literal);
  if ("json" in p) return compileJsonSchema(p.json, `${path}.json`);
  if (Array.isArray(p.choice) && p.choice.length > 0) {
    return {
      k: "alt",
      opts: p.choice.map((alt: unknown, i): GNode => {
        if (!Array.isArray(alt)) throw new InvalidArgumentError(`${path}.choice[${i}] must be an array of parts`);
        return { k: "seq", parts: alt.map((q: unknown, j) => compilePart(q, `${path}.choice[${i}][${j}]`)) };
      }),
    };
  }
  throw new InvalidArgumentError(`${path} must have "literal", "json" or a non-empty "choice"`);
}

/** Parses and compiles GenerationParams.grammar. Throws InvalidArgumentError naming what is wrong. */
export function compileGrammarSpec(text: string): GNode {
  if (text.length > MAX_GRAMMAR_CHARS) throw new InvalidArgumentError(`grammar is longer than ${MAX_GRAMMAR_CHARS} characters`);
  let spec: unknown;
  try {
    spec = JSON.parse(text);
  } catch (err) {
    throw new InvalidArgumentError(`grammar is not JSON: ${errorMessage(err)}`, { cause: err });
  }
  if (!isObject(spec)) throw new InvalidArgumentError("grammar must be a JSON object");
  if ("json" in spec) return compileJsonSchema(spec.json, "grammar.json");
  if (Array.isArray(spec.sequence)) return { k: "seq", parts: spec.sequence.map((p: unknown, i) => compilePart(p, `grammar.sequence[${i}]`)) };
  throw new InvalidArgumentError('grammar must have "json" or "sequence"');
}
