/**
 * A JSON-Schema subset compiled to a bounded grammar (grammar/matcher.ts runs it over characters).
 *
 * No maintained JavaScript library turns a JSON Schema into a token mask on Node 20: @mlc-ai/web-xgrammar (the
 * only one on npm) is a browser WebAssembly build that does not load in Node 20, and the rest (xgrammar,
 * llguidance, outlines) are Python or Rust. So this is a small compiler of the subset that structured-output
 * clients send (OpenAI's strict mode needs little more):
 *   object: properties, required, additionalProperties (false, or absent: only the listed properties are
 *           generated, which any additionalProperties allows)
 *   string: enum, const, minLength, maxLength
 *   number, integer, boolean, null; enum/const of any JSON values
 *   array:  items, minItems, maxItems
 *   anyOf (and a type list: {"type": ["string", "null"]}), nested to any depth the schema has
 *   annotations ignored: title, description, $schema, $id, default, examples, $comment
 * Every other keyword is refused by name (checkJsonSchema), before anything is generated.
 *
 * Bounded, so a model (even a random one) cannot pad forever: no whitespace except one optional space after
 * ':' and ','; strings at most maxLength characters (DEFAULT_MAX_STRING when absent); arrays at most maxItems
 * items (DEFAULT_MAX_ITEMS when absent); numbers at most 16 integer digits and 8 fraction digits, no exponent;
 * properties in the schema's order, each at most once. {"type": "object"} without properties (json_object)
 * is any JSON object at most ANY_DEPTH deep, with at most ANY_MAX_PROPERTIES keys of at most ANY_MAX_KEY
 * characters per object and strings of at most ANY_MAX_STRING characters.
 */
import { InvalidArgumentError } from "@moela/core";

/** Longest string when the schema gives no maxLength. */
export const DEFAULT_MAX_STRING = 256;
/** Most array items when the schema gives no maxItems. */
export const DEFAULT_MAX_ITEMS = 16;
/** Free-form JSON (json_object, or a value schema of {}): nesting, keys and strings are bounded too. */
export const ANY_DEPTH = 3;
export const ANY_MAX_PROPERTIES = 8;
export const ANY_MAX_KEY = 32;
export const ANY_MAX_STRING = 64;
export const MAX_INT_DIGITS = 16;
export const MAX_FRACTION_DIGITS = 8;

/** The keywords checkJsonSchema accepts, for the error message. */
export const SUPPORTED_KEYWORDS = [
  "type",
  "properties",
  "required",
  "additionalProperties",
  "enum",
  "const",
  "minLength",
  "maxLength",
  "items",
  "minItems",
  "maxItems",
  "anyOf",
] as const;
const ANNOTATIONS = new Set(["title", "description", "$schema", "$id", "default", "examples", "$comment"]);
const TYPES = ["object", "string", "number", "integer", "boolean", "null", "array"] as const;
type TypeName = (typeof TYPES)[number];

/** Character classes a grammar node may consume (one code point each). */
export const enum CharClass {
  Digit,
  Digit19,
}

/** The compiled grammar: a tree of these (no recursion: a schema's tree is finite, free-form JSON is depth-bounded). */
export type GNode =
  | { readonly k: "lit"; readonly cps: readonly number[] }
  | { readonly k: "str"; readonly min: number; readonly max: number }
  | { readonly k: "rep"; readonly cls: CharClass; readonly min: number; readonly max: number }
  | { readonly k: "obj"; readonly props: readonly ObjProp[] }
  | { readonly k: "arr"; readonly item: GNode; readonly min: number; readonly max: number }
  | { readonly k: "anyobj"; readonly depth: number }
  | { readonly k: "alt"; readonly opts: readonly GNode[] }
  | { readonly k: "seq"; readonly parts: readonly GNode[] };

export interface ObjProp {
  /** The key as JSON text, quotes included. */
  readonly key: GNode & { k: "lit" };
  readonly value: GNode;
  readonly required: boolean;
}

export function lit(text: string): GNode & { k: "lit" } {
  return { k: "lit", cps: Array.from(text, (c) => c.codePointAt(0)!) };
}
const EMPTY: GNode = { k: "seq", parts: [] };
const opt = (n: GNode): GNode => ({ k: "alt", opts: [EMPTY, n] });

const INTEGER: GNode = {
  k: "seq",
  parts: [
    opt(lit("-")),
    {
      k: "alt",
      opts: [
        lit("0"),
        {
          k: "seq",
          parts: [
            { k: "rep", cls: CharClass.Digit19, min: 1, max: 1 },
            { k: "rep", cls: CharClass.Digit, min: 0, max: MAX_INT_DIGITS - 1 },
          ],
        },
      ],
    },
  ],
};
const NUMBER: GNode = {
  k: "seq",
  parts: [INTEGER, opt({ k: "seq", parts: [lit("."), { k: "rep", cls: CharClass.Digit, min: 1, max: MAX_FRACTION_DIGITS }] })],
};
const BOOLEAN: GNode = { k: "alt", opts: [lit("true"), lit("false")] };
const NULL: GNode = lit("null");

/** Any JSON value up to `depth` levels of nesting (free-form: json_object, or a schema of {}). */
export function anyValue(depth: number): GNode {
  const scalars: GNode[] = [{ k: "str", min: 0, max: ANY_MAX_STRING }, NUMBER, BOOLEAN, NULL];
  if (depth <= 0) return { k: "alt", opts: scalars };
  return { k: "alt", opts: [...scalars, { k: "anyobj", depth }, { k: "arr", item: anyValue(depth - 1), min: 0, max: DEFAULT_MAX_ITEMS }] };
}

type Json = null | boolean | number | string | Json[] | { [key: string]: Json };

function isPlainObject(v: unknown): v is Record<string, unknown> {
  return typeof v === "object" && v !== null && !Array.isArray(v);
}

function bad(path: string, why: string): never {
  throw new InvalidArgumentError(`${path}: ${why}`);
}

function unsupported(path: string, keyword: string): never {
  bad(
    `${path}.${keyword}`,
    `the keyword ${JSON.stringify(keyword)} is not supported; supported: ${SUPPORTED_KEYWORDS.join(", ")} (annotations such as title and description are ignored)`,
  );
}

function count(path: string, v: unknown): number {
  if (!(typeof v === "number" && Number.isSafeInteger(v) && v >= 0)) bad(path, `must be an integer >= 0, got ${JSON.stringify(v)}`);
  return v;
}

/** A JSON value's text as the grammar generates it: compact, one space after ':' and ',' would also do, none is used. */
function jsonLiteral(path: string, v: unknown): GNode {
  if (typeof v === "number" && !Number.isFinite(v)) bad(path, "must be finite");
  const text = JSON.stringify(v as Json);
  if (text === undefined) bad(path, "must be a JSON value");
  return lit(text);
}

/**
 * Checks `schema` (at `path`, e.g. "response_format.json_schema.schema") against the supported subset and
 * compiles it. Throws InvalidArgumentError whose message starts with the path of the offending field.
 */
export function compileJsonSchema(schema: unknown, path: string): GNode {
  if (schema === true) return anyValue(ANY_DEPTH);
  if (!isPlainObject(schema)) bad(path, `must be a JSON object (a schema), got ${JSON.stringify(schema)}`);
  for (const key of Object.keys(schema)) {
    if (!(SUPPORTED_KEYWORDS as readonly string[]).includes(key) && !ANNOTATIONS.has(key)) unsupported(path, key);
  }
  if (schema.const !== undefined) return jsonLiteral(`${path}.const`, schema.const);
  if (schema.enum !== undefined) {
    const e = schema.enum;
    if (!Array.isArray(e) || e.length === 0) bad(`${path}.enum`, "must be a non-empty array");
    return { k: "alt", opts: e.map((v, i) => jsonLiteral(`${path}.enum[${i}]`, v)) };
  }
  if (schema.anyOf !== undefined) {
    const a = schema.anyOf;
    if (!Array.isArray(a) || a.length === 0) bad(`${path}.anyOf`, "must be a non-empty array of schemas");
    for (const k of Object.keys(schema)) {
      if (k !== "anyOf" && !ANNOTATIONS.has(k)) bad(`${path}.${k}`, "cannot be combined with anyOf here; put it inside each alternative");
    }
    return { k: "alt", opts: a.map((s, i) => compileJsonSchema(s, `${path}.anyOf[${i}]`)) };
  }
  const t = schema.type;
  if (t === undefined) {
    const keys = Object.keys(schema).filter((k) => !ANNOTATIONS.has(k));
    if (keys.length === 0) return anyValue(ANY_DEPTH);
    bad(`${path}.type`, `is required with ${keys.map((k) => JSON.stringify(k)).join(", ")}`);
  }
  const types = Array.isArray(t) ? t : [t];
  if (types.length === 0) bad(`${path}.type`, "must name at least one type");
  for (const ty of types) {
    if (!(TYPES as readonly unknown[]).includes(ty)) bad(`${path}.type`, `must be one of ${TYPES.join(", ")} (or a list of them), got ${JSON.stringify(ty)}`);
  }
  const has = (k: string): boolean => schema[k] !== undefined;
  const only = (allowed: readonly string[], forType: string): void => {
    for (const k of ["properties", "required", "additionalProperties", "minLength", "maxLength", "items", "minItems", "maxItems"]) {
      if (has(k) && !allowed.includes(k) && !types.includes(keywordType(k))) bad(`${path}.${k}`, `applies to ${keywordType(k)}, not ${forType}`);
    }
  };
  const opts = (types as TypeName[]).map((ty): GNode => {
    switch (ty) {
      case "null":
        return NULL;
      case "boolean":
        return BOOLEAN;
      case "integer":
        return INTEGER;
      case "number":
        return NUMBER;
      case "string": {
        const min = has("minLength") ? count(`${path}.minLength`, schema.minLength) : 0;
        const max = has("maxLength") ? count(`${path}.maxLength`, schema.maxLength) : Math.max(DEFAULT_MAX_STRING, min);
        if (min > max) bad(`${path}.minLength`, `is more than maxLength (${max})`);
        return { k: "str", min, max };
      }
      case "array": {
        const min = has("minItems") ? count(`${path}.minItems`, schema.minItems) : 0;
        const max = has("maxItems") ? count(`${path}.maxItems`, schema.maxItems) : Math.max(DEFAULT_MAX_ITEMS, min);
        if (min > max) bad(`${path}.minItems`, `is more than maxItems (${max})`);
        const item = has("items") ? compileJsonSchema(schema.items, `${path}.items`) : anyValue(ANY_DEPTH - 1);
        return { k: "arr", item, min, max };
      }
      case "object":
        return compileObject(schema, path);
    }
  });
  only([], types.join("|"));
  return opts.length === 1 ? opts[0]! : { k: "alt", opts };
}

function keywordType(k: string): TypeName {
  if (k === "minLength" || k === "maxLength") return "string";
  if (k === "items" || k === "minItems" || k === "maxItems") return "array";
  return "object";
}

function compileObject(schema: Record<string, unknown>, path: string): GNode {
  const ap = schema.additionalProperties;
  if (ap !== undefined && ap !== false && ap !== true && !isPlainObject(ap)) bad(`${path}.additionalProperties`, "must be a boolean or a schema");
  if (isPlainObject(ap)) compileJsonSchema(ap, `${path}.additionalProperties`);
  const props = schema.properties;
  if (props === undefined) {
    if (schema.required !== undefined) bad(`${path}.required`, "names properties, but the schema has no properties");
    return { k: "anyobj", depth: ANY_DEPTH };
  }
  if (!isPlainObject(props)) bad(`${path}.properties`, "must be an object of schemas");
  const req = schema.required ?? [];
  if (!Array.isArray(req) || !req.every((r) => typeof r === "string")) bad(`${path}.required`, "must be an array of property names");
  for (const r of req as string[]) {
    if (!Object.hasOwn(props, r)) bad(`${path}.required`, `names ${JSON.stringify(r)}, which is not in properties`);
  }
  return {
    k: "obj",
    props: Object.entries(props).map(([key, s]) => ({
      key: lit(JSON.stringify(key)),
      value: compileJsonSchema(s, `${path}.properties.${key}`),
      required: (req as string[]).includes(key),
    })),
  };
}

/** Throws InvalidArgumentError ("<path>.<field>: why") when `schema` is outside the supported subset. */
export function checkJsonSchema(schema: unknown, path: string): void {
  compileJsonSchema(schema, path);
}
