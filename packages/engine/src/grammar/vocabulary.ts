/**
 * A model's tokens as the grammar sees them (built once per model, on the first constrained request), the
 * compiled grammar of one spec over it (cached per spec text), and one sequence's matcher (matcher.ts has the
 * method). Ports-style: the engine never reads a tokenizer; the service that owns one hands in TokenTexts.
 */
import { InternalError, InvalidArgumentError } from "@moela/core";
import { advance, advanceText, initialState, isTerminal, stateKey, type GrammarState } from "./matcher.js";
import type { GNode } from "./schema.js";
import { compileGrammarSpec } from "./spec.js";

/** Each token id's decoded text (null: no text, never allowed), and the ids of added tokens (matched whole: one private code point each). */
export interface TokenTexts {
  readonly texts: readonly (string | null)[];
  readonly specialIds: ReadonlySet<number>;
}

const PRIVATE_FIRST = 0xe000;
const PRIVATE_COUNT = 0xf8ff - 0xe000 + 1;

export class GrammarVocabulary {
  readonly size: number;
  readonly eosIds: ReadonlySet<number>;
  /** A special token's content -> its private code point. */
  readonly specialCps: ReadonlyMap<string, number>;
  /** Per id: its code points, or null (never allowed: EOS, undecodable, empty). */
  private readonly cps: (readonly number[] | null)[];
  /** Ids with code points, in code point order. */
  private readonly order: Int32Array;
  /** lcp[j]: code points order[j] shares with order[j - 1] (0 for j = 0). */
  private readonly lcp: Int32Array;
  /** Most code points of one token: counters at or above it are alike to every token (matcher.ts stateKey). */
  readonly maxTokenCps: number;
  /**
   * Masks by state key, least recently used first: per id, min(state after the token) - min(state), or NO_TOKEN.
   * The budget is applied on use, so one entry serves every budget; bounded to MASK_CACHE_BYTES.
   */
  private readonly masks = new Map<string, Int32Array>();
  private readonly maskCacheEntries: number;

  /** `vocabSize`: the model's (its logits rows), which may exceed the tokenizer's. */
  constructor(tokens: TokenTexts, eosIds: readonly number[], vocabSize = tokens.texts.length) {
    this.size = Math.max(vocabSize, tokens.texts.length);
    this.eosIds = new Set(eosIds);
    const specials = new Map<string, number>();
    this.cps = Array.from({ length: this.size }, (_, id) => {
      const text = tokens.texts[id] ?? null;
      if (this.eosIds.has(id) || text === null || text === "") return null;
      if (tokens.specialIds.has(id)) {
        if (specials.size >= PRIVATE_COUNT) return null;
        const cp = specials.get(text) ?? PRIVATE_FIRST + specials.size;
        specials.set(text, cp);
        return [cp];
      }
      const cps = Array.from(text, (c) => c.codePointAt(0)!);
      // U+FFFD: a byte-level token that is part of a UTF-8 sequence (decoded alone it is not text).
      if (cps.some((cp) => cp === 0xfffd || (cp >= PRIVATE_FIRST && cp < PRIVATE_FIRST + PRIVATE_COUNT))) return null;
      return cps;
    });
    this.specialCps = specials;
    const ids: number[] = [];
    for (let id = 0; id < this.size; id++) if (this.cps[id] !== null) ids.push(id);
    ids.sort((a, b) => compareCps(this.cps[a]!, this.cps[b]!) || a - b);
    this.order = Int32Array.from(ids);
    this.lcp = new Int32Array(ids.length);
    let longest = 1;
    for (const id of ids) longest = Math.max(longest, this.cps[id]!.length);
    this.maxTokenCps = longest;
    this.maskCacheEntries = Math.max(4, Math.floor(MASK_CACHE_BYTES / (4 * this.size)));
    for (let j = 1; j < ids.length; j++) {
      const x = this.cps[ids[j - 1]!]!;
      const y = this.cps[ids[j]!]!;
      let l = 0;
      while (l < x.length && l < y.length && x[l] === y[l]) l++;
      this.lcp[j] = l;
    }
  }

  /** The code points of token `id` (null for EOS and tokens that are never allowed). */
  tokenCps(id: number): readonly number[] | null {
    return this.cps[id] ?? null;
  }

  /** A literal's text with special-token contents replaced by their private code points. */
  literalCps(text: string): number[] {
    const out: number[] = [];
    let i = 0;
    outer: while (i < text.length) {
      for (const [content, cp] of this.specialCps) {
        if (text.startsWith(content, i)) {
          out.push(cp);
          i += content.length;
          continue outer;
        }
      }
      const cp = text.codePointAt(i)!;
      out.push(cp);
      i += cp > 0xffff ? 2 : 1;
    }
    return out;
  }

  /**
   * allowed[id] = 1 for each token the grammar accepts from `state` and whose remainder fits in `budget - 1`
   * more tokens (EOS: when the value is complete), else 0. Returns how many ids are allowed.
   */
  fillMask(state: GrammarState, budget: number, allowed: Uint8Array, useCache = true): number {
    allowed.fill(0);
    let n = 0;
    if (state.accept) for (const id of this.eosIds) if (id < allowed.length) ((allowed[id] = 1), n++);
    if (isTerminal(state)) return n;
    let deltas: Int32Array | undefined;
    const key = useCache ? stateKey(state, this.maxTokenCps) : "";
    if (useCache) {
      deltas = this.masks.get(key);
      if (deltas !== undefined) {
        this.masks.delete(key);
        this.masks.set(key, deltas);
      }
    }
    if (deltas === undefined) {
      deltas = this.walk(state);
      if (useCache) {
        this.masks.set(key, deltas);
        if (this.masks.size > this.maskCacheEntries) this.masks.delete(this.masks.keys().next().value!);
      }
    }
    const limit = budget - 1 - state.min;
    for (let j = 0; j < this.order.length; j++) {
      const id = this.order[j]!;
      const d = deltas[id]!;
      if (d !== NO_TOKEN && d <= limit) {
        allowed[id] = 1;
        n++;
      }
    }
    return n;
  }

  /** Per id: min(state after the token) - min(state), or NO_TOKEN where the grammar rejects it. */
  private walk(state: GrammarState): Int32Array {
    const deltas = new Int32Array(this.size).fill(NO_TOKEN);
    const states: (GrammarState | null)[] = [state];
    let depth = 0; // states[0..depth] belong to the previous token's prefix and are alive
    for (let j = 0; j < this.order.length; j++) {
      const l = this.lcp[j]!;
      if (l > depth) continue; // shares a prefix that is already dead
      depth = l;
      const id = this.order[j]!;
      const cps = this.cps[id]!;
      let ok = true;
      while (depth < cps.length) {
        const next = advance(states[depth]!, cps[depth]!);
        if (next === null) {
          ok = false;
          break;
        }
        states[++depth] = next;
      }
      if (ok) deltas[id] = states[depth]!.min - state.min;
    }
    return deltas;
  }
}

/** A token the grammar rejects (in a mask's deltas). */
const NO_TOKEN = -0x80000000;
/** Memory for cached masks per vocabulary (4 bytes per token id each). */
const MASK_CACHE_BYTES = 32 * 1024 * 1024;

function compareCps(a: readonly number[], b: readonly number[]): number {
  const n = Math.min(a.length, b.length);
  for (let i = 0; i < n; i++) if (a[i] !== b[i]) return a[i]! - b[i]!;
  return a.length - b.length;
}

/** A spec compiled for one vocabulary (its literals mapped to special tokens). */
export class CompiledGrammar {
  readonly initial: GrammarState;
  constructor(
    readonly vocab: GrammarVocabulary,
    root: GNode,
  ) {
    this.initial = initialState(mapLiterals(root, vocab));
  }

  static compile(spec: string, vocab: GrammarVocabulary): CompiledGrammar {
    return new CompiledGrammar(vocab, compileGrammarSpec(spec));
  }
}

function mapLiterals(n: GNode, vocab: GrammarVocabulary): GNode {
  if (vocab.specialCps.size === 0) return n;
  switch (n.k) {
    case "lit":
      return { k: "lit", cps: vocab.literalCps(String.fromCodePoint(...n.cps)) };
    case "obj":
      return { k: "obj", props: n.props.map((p) => ({ ...p, value: mapLiterals(p.value, vocab) })) };
    case "arr":
      return { ...n, item: mapLiterals(n.item, vocab) };
    case "alt":
      return { k: "alt", opts: n.opts.map((o) => mapLiterals(o, vocab)) };
    case "seq":
      return { k: "seq", parts: n.parts.map((p) => mapLiterals(p, vocab)) };
    default:
      return n;
  }
}

/**
 * One sequence's position in its grammar. `push` the tokens chosen; `mask` writes the allowed ids for the next
 * token (optionally after one more token, a draft under verification).
 */
export class GrammarMatcher {
  private state: GrammarState;
  private readonly allowed: Uint8Array;
  constructor(private readonly grammar: CompiledGrammar) {
    this.state = grammar.initial;
    this.allowed = new Uint8Array(grammar.vocab.size);
  }

  /** The output so far is a complete value and nothing can follow it. */
  get terminal(): boolean {
    return isTerminal(this.state);
  }

  /** The output so far is a complete value. */
  get complete(): boolean {
    return this.state.accept;
  }

  /** Advance over a chosen token; throws when the grammar rejects it (a bug, or tokens from elsewhere). */
  push(id: number): void {
    const next = this.after(this.state, id);
    if (next === null) throw new InvalidArgumentError(`token ${id} does not continue the constrained output`);
    this.state = next;
  }

  private after(state: GrammarState, id: number): GrammarState | null {
    if (this.grammar.vocab.eosIds.has(id)) return state.accept ? state : null;
    const cps = this.grammar.vocab.tokenCps(id);
    return cps === null ? null : advanceText(state, cps);
  }

  /**
   * row[id] = -Infinity for each token not allowed next (after `extra`, when it is a token id), in place.
   * `budget`: tokens left for the output including this one. If every allowed token is -Infinity already
   * (min_tokens holding back EOS when only EOS fits), the allowed ones get 0: the grammar wins.
   */
  applyMask(row: Float32Array, budget: number, extra = -1): void {
    let state = this.state;
    if (extra >= 0) {
      const s = this.after(state, extra);
      if (s === null) throw new InvalidArgumentError(`token ${extra} does not continue the constrained output`);
      state = s;
      budget--;
    }
    const allowed = this.allowed;
    const vocab = this.grammar.vocab;
    if (vocab.fillMask(state, budget, allowed) === 0 && vocab.fillMask(state, Infinity, allowed) === 0) {
      // Closed and the model has no EOS: the sequence has ended (generation.ts); a draft row is moot.
      if (isTerminal(state)) return;
      throw new InternalError(`no token of the vocabulary continues the constrained output`);
    }
    let finite = false;
    for (let i = 0; i < row.length; i++) {
      if (allowed[i] === 0) row[i] = -Infinity;
      else if (row[i]! > -Infinity) finite = true;
    }
    if (!finite) for (let i = 0; i < row.length; i++) if (allowed[i] === 1) row[i] = 0;
  }
}
