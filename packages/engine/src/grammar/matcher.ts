/**
 * The grammar of schema.ts/spec.ts run over characters, and the token mask it gives at each step.
 *
 * Character level: a nondeterministic pushdown automaton. A state is a set of stacks of elements (a persistent
 * linked list, shared between states, so advancing never copies a stack); the top of every stack consumes one
 * code point (a literal's next character or a character class), everything else is expanded away first. A
 * state also knows whether the input so far is a complete value (`accept`) and the fewest characters that
 * complete it (`min`, kept per stack node, so reading it costs nothing).
 *
 * Token level: GrammarVocabulary holds each token's code points, sorted, with the common prefix of each with
 * the one before (built once per model). A mask walks the sorted tokens advancing the state one character at
 * a time and reusing the states of the shared prefix, and skips every token under a dead prefix: each edge
 * of the vocabulary's trie is advanced at most once per mask, without building the trie.
 * A special token (tool-call markers) is one private-use code point (U+E000 + k), so a literal naming a
 * special token's content is matched by that token only, and JSON strings never contain one.
 *
 * The mask also keeps the output within the token budget: a token is allowed only when what it leaves can
 * still be completed in the tokens left (each needed character is a token of its own in a byte-level
 * vocabulary), so a value is complete when max_tokens runs out. When no token fits the budget (a budget too
 * small from the start), the budget is ignored. EOS is allowed only when the value is complete; once nothing
 * can follow (a closed object), the sequence ends there (generation.ts), which is what forcing EOS would do.
 */
import { ANY_DEPTH, ANY_MAX_KEY, ANY_MAX_PROPERTIES, CharClass, anyValue, type GNode, type ObjProp } from "./schema.js";

/** Consuming elements (the top of every expanded stack) and the expanders. */
const enum T {
  Lit,
  Cls,
  Node,
  Rep,
  StrBody,
  ObjRest,
  ArrRest,
  AnyObjRest,
  Space,
}
/** Character classes beyond schema.ts's. */
const STR_CHAR = 100;
const ESC_CHAR = 101;
const SPACE = 102;

type El =
  | { readonly t: T.Lit; readonly cps: readonly number[]; readonly i: number }
  | { readonly t: T.Cls; readonly cls: number }
  | { readonly t: T.Node; readonly n: GNode }
  | { readonly t: T.Rep; readonly cls: number; readonly need: number; readonly left: number }
  | { readonly t: T.StrBody; readonly need: number; readonly left: number }
  | { readonly t: T.ObjRest; readonly props: readonly ObjProp[]; readonly i: number; readonly first: boolean }
  | { readonly t: T.ArrRest; readonly n: GNode & { k: "arr" }; readonly count: number }
  | { readonly t: T.AnyObjRest; readonly depth: number; readonly count: number }
  | { readonly t: T.Space };

interface Stack {
  readonly el: El;
  readonly next: Stack | null;
  /** Fewest characters that finish this stack. */
  readonly min: number;
}

export interface GrammarState {
  /** Stacks whose top consumes a character. */
  readonly stacks: readonly Stack[];
  /** The input so far is a complete sentence. */
  readonly accept: boolean;
  /** Fewest characters that complete it (0 when accept). */
  readonly min: number;
}

const Q = 0x22;
const BACKSLASH = 0x5c;
const PRIVATE_FIRST = 0xe000;
const PRIVATE_LAST = 0xf8ff;
const QUOTE_LIT: readonly number[] = [Q];
const L_BRACE = [0x7b];
const R_BRACE = [0x7d];
const L_BRACKET = [0x5b];
const R_BRACKET = [0x5d];
const COMMA = [0x2c];
const COLON = [0x3a];
const BACKSLASH_LIT = [BACKSLASH];

function matches(cls: number, cp: number): boolean {
  switch (cls) {
    case CharClass.Digit:
      return cp >= 0x30 && cp <= 0x39;
    case CharClass.Digit19:
      return cp >= 0x31 && cp <= 0x39;
    case STR_CHAR:
      return cp >= 0x20 && cp !== Q && cp !== BACKSLASH && !(cp >= PRIVATE_FIRST && cp <= PRIVATE_LAST);
    case ESC_CHAR:
      return cp === Q || cp === BACKSLASH || cp === 0x2f || cp === 0x62 || cp === 0x66 || cp === 0x6e || cp === 0x72 || cp === 0x74;
    case SPACE:
      return cp === 0x20;
    default:
      return false;
  }
}

const minLenMemo = new WeakMap<GNode, number>();

/** Fewest characters of a sentence of `n`. */
export function minLen(n: GNode): number {
  const memo = minLenMemo.get(n);
  if (memo !== undefined) return memo;
  let v: number;
  switch (n.k) {
    case "lit":
      v = n.cps.length;
      break;
    case "str":
      v = 2 + n.min;
      break;
    case "rep":
      v = n.min;
      break;
    case "obj":
      v = 1 + objRestMin(n.props, 0, true);
      break;
    case "arr":
      v = 1 + arrRestMin(n, 0);
      break;
    case "anyobj":
      v = 2;
      break;
    case "alt":
      v = Math.min(...n.opts.map(minLen));
      break;
    case "seq":
      v = n.parts.reduce((a, p) => a + minLen(p), 0);
      break;
  }
  minLenMemo.set(n, v);
  return v;
}

function objRestMin(props: readonly ObjProp[], i: number, first: boolean): number {
  let total = 1;
  let f = first;
  for (let j = i; j < props.length; j++) {
    const p = props[j]!;
    if (!p.required) continue;
    total += (f ? 0 : 1) + p.key.cps.length + 1 + minLen(p.value);
    f = false;
  }
  return total;
}

function arrRestMin(n: GNode & { k: "arr" }, count: number): number {
  const r = Math.max(n.min - count, 0);
  if (r === 0) return 1;
  return 1 + r * minLen(n.item) + (count > 0 ? r : r - 1);
}

function elMin(e: El): number {
  switch (e.t) {
    case T.Lit:
      return e.cps.length - e.i;
    case T.Cls:
      return 1;
    case T.Node:
      return minLen(e.n);
    case T.Rep:
      return Math.max(e.need, 0);
    case T.StrBody:
      return Math.max(e.need, 0) + 1;
    case T.ObjRest:
      return objRestMin(e.props, e.i, e.first);
    case T.ArrRest:
      return arrRestMin(e.n, e.count);
    case T.AnyObjRest:
      return 1;
    case T.Space:
      return 0;
  }
}

function push(el: El, next: Stack | null): Stack {
  return { el, next, min: elMin(el) + (next === null ? 0 : next.min) };
}

const anyMemo: GNode[] = [];
function anyOfDepth(d: number): GNode {
  return (anyMemo[d] ??= anyValue(d));
}

const lit = (cps: readonly number[], next: Stack | null): Stack | null => (cps.length === 0 ? next : push({ t: T.Lit, cps, i: 0 }, next));

/** Collects the stacks reachable from `s` without consuming, whose top consumes; `acc.accept` when one empties. */
interface Acc {
  stacks: Stack[];
  accept: boolean;
}

function expand(s: Stack | null, acc: Acc): void {
  if (s === null) {
    acc.accept = true;
    return;
  }
  const e = s.el;
  const next = s.next;
  switch (e.t) {
    case T.Lit:
    case T.Cls:
      acc.stacks.push(s);
      return;
    case T.Node:
      expandNode(e.n, next, acc);
      return;
    case T.Rep:
      if (e.need <= 0) expand(next, acc);
      if (e.left > 0) expand(push({ t: T.Cls, cls: e.cls }, push({ t: T.Rep, cls: e.cls, need: e.need - 1, left: e.left - 1 }, next)), acc);
      return;
    case T.StrBody: {
      if (e.need <= 0) expand(lit(QUOTE_LIT, next), acc);
      if (e.left > 0) {
        const after = push({ t: T.StrBody, need: e.need - 1, left: e.left - 1 }, next);
        expand(push({ t: T.Cls, cls: STR_CHAR }, after), acc);
        expand(lit(BACKSLASH_LIT, push({ t: T.Cls, cls: ESC_CHAR }, after)), acc);
      }
      return;
    }
    case T.ObjRest: {
      const { props, i, first } = e;
      let allOptional = true;
      for (let j = i; j < props.length; j++) {
        const p = props[j]!;
        let body: Stack | null = push({ t: T.ObjRest, props, i: j + 1, first: false }, next);
        body = push({ t: T.Node, n: p.value }, body);
        body = push({ t: T.Space }, body);
        body = lit(COLON, body);
        body = lit(p.key.cps, body);
        if (!first) body = lit(COMMA, push({ t: T.Space }, body));
        expand(body, acc);
        if (p.required) {
          allOptional = false;
          break;
        }
      }
      if (allOptional) expand(lit(R_BRACE, next), acc);
      return;
    }
    case T.ArrRest: {
      const { n, count } = e;
      if (count >= n.min) expand(lit(R_BRACKET, next), acc);
      if (count < n.max) {
        let body: Stack | null = push({ t: T.ArrRest, n, count: count + 1 }, next);
        body = push({ t: T.Node, n: n.item }, body);
        if (count > 0) body = lit(COMMA, push({ t: T.Space }, body));
        expand(body, acc);
      }
      return;
    }
    case T.AnyObjRest: {
      const { depth, count } = e;
      expand(lit(R_BRACE, next), acc);
      if (count < ANY_MAX_PROPERTIES) {
        let body: Stack | null = push({ t: T.AnyObjRest, depth, count: count + 1 }, next);
        body = push({ t: T.Node, n: anyOfDepth(depth - 1) }, body);
        body = push({ t: T.Space }, body);
        body = lit(COLON, body);
        body = push({ t: T.Node, n: { k: "str", min: 1, max: ANY_MAX_KEY } }, body);
        if (count > 0) body = lit(COMMA, push({ t: T.Space }, body));
        expand(body, acc);
      }
      return;
    }
    case T.Space:
      expand(next, acc);
      expand(push({ t: T.Cls, cls: SPACE }, next), acc);
      return;
  }
}

function expandNode(n: GNode, rest: Stack | null, acc: Acc): void {
  switch (n.k) {
    case "lit":
      expand(lit(n.cps, rest), acc);
      return;
    case "str":
      expand(lit(QUOTE_LIT, push({ t: T.StrBody, need: n.min, left: n.max }, rest)), acc);
      return;
    case "rep":
      expand(push({ t: T.Rep, cls: n.cls, need: n.min, left: n.max }, rest), acc);
      return;
    case "obj":
      expand(lit(L_BRACE, push({ t: T.ObjRest, props: n.props, i: 0, first: true }, rest)), acc);
      return;
    case "arr":
      expand(lit(L_BRACKET, push({ t: T.ArrRest, n, count: 0 }, rest)), acc);
      return;
    case "anyobj":
      expand(lit(L_BRACE, push({ t: T.AnyObjRest, depth: Math.min(n.depth, ANY_DEPTH), count: 0 }, rest)), acc);
      return;
    case "alt":
      for (const o of n.opts) expandNode(o, rest, acc);
      return;
    case "seq": {
      let s = rest;
      for (let i = n.parts.length - 1; i >= 0; i--) s = push({ t: T.Node, n: n.parts[i]! }, s);
      expand(s, acc);
      return;
    }
  }
}

function stateOf(acc: Acc): GrammarState {
  let min = acc.accept ? 0 : Infinity;
  for (const s of acc.stacks) if (s.min < min) min = s.min;
  return { stacks: acc.stacks, accept: acc.accept, min };
}

/** The state before any input. */
export function initialState(root: GNode): GrammarState {
  const acc: Acc = { stacks: [], accept: false };
  expandNode(root, null, acc);
  return stateOf(acc);
}

/** The state after one more code point; null when the grammar rejects it. */
export function advance(state: GrammarState, cp: number): GrammarState | null {
  const acc: Acc = { stacks: [], accept: false };
  for (const s of state.stacks) {
    const e = s.el;
    if (e.t === T.Lit) {
      if (e.cps[e.i] !== cp) continue;
      expand(e.i + 1 < e.cps.length ? push({ t: T.Lit, cps: e.cps, i: e.i + 1 }, s.next) : s.next, acc);
    } else if (e.t === T.Cls) {
      if (matches(e.cls, cp)) expand(s.next, acc);
    }
  }
  if (acc.stacks.length === 0 && !acc.accept) return null;
  return stateOf(acc);
}

/** The state after a string (code points); null when rejected on the way. */
export function advanceText(state: GrammarState, text: string | readonly number[]): GrammarState | null {
  let s: GrammarState | null = state;
  const cps = typeof text === "string" ? Array.from(text, (c) => c.codePointAt(0)!) : text;
  for (const cp of cps) {
    s = advance(s, cp);
    if (s === null) return null;
  }
  return s;
}

/** Nothing can follow: the value is complete and closed. */
export function isTerminal(state: GrammarState): boolean {
  return state.accept && state.stacks.length === 0;
}

/** A `need` counter in a state key: every value <= 0 acts alike, and so does every value >= the longest token. */
function clampCount(need: number, maxTokenCps: number): number {
  return Math.max(0, Math.min(need, maxTokenCps));
}

const ids = new WeakMap<object, number>();
let nextId = 0;
function idOf(o: object): number {
  let id = ids.get(o);
  if (id === undefined) {
    id = nextId++;
    ids.set(o, id);
  }
  return id;
}

/**
 * A key equal for two states exactly when every token of at most `maxTokenCps` code points is accepted by both
 * or neither, and changes `min` by the same amount (so one cached mask serves both). The stacks' elements,
 * except the counters of a string or a digit run: at or above `maxTokenCps`, no token can exhaust `left` nor
 * reach `need` (so none can close the string, and each consumed character lowers min by one), so they are
 * clamped there; a `need` at or below 0 only means "may close", so it is clamped at 0. Inside a long string the
 * mask is then the same at every position.
 */
export function stateKey(state: GrammarState, maxTokenCps: number): string {
  const parts: string[] = [state.accept ? "A" : "a"];
  for (const top of state.stacks) {
    parts.push("|");
    for (let s: Stack | null = top; s !== null; s = s.next) {
      const e = s.el;
      switch (e.t) {
        case T.Lit:
          parts.push(`L${idOf(e.cps)}.${e.i}`);
          break;
        case T.Cls:
          parts.push(`C${e.cls}`);
          break;
        case T.Node:
          parts.push(`N${idOf(e.n)}`);
          break;
        case T.Rep:
          parts.push(`R${e.cls}.${clampCount(e.need, maxTokenCps)}.${Math.min(e.left, maxTokenCps)}`);
          break;
        case T.StrBody:
          parts.push(`S${clampCount(e.need, maxTokenCps)}.${Math.min(e.left, maxTokenCps)}`);
          break;
        case T.ObjRest:
          parts.push(`O${idOf(e.props)}.${e.i}.${e.first ? 1 : 0}`);
          break;
        case T.ArrRest:
          parts.push(`Y${idOf(e.n)}.${e.count}`);
          break;
        case T.AnyObjRest:
          parts.push(`Z${e.depth}.${e.count}`);
          break;
        case T.Space:
          parts.push("_");
          break;
      }
    }
  }
  return parts.join(",");
}
