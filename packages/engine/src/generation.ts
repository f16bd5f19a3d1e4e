/**
 * Sequences and the generation loop over one model and one paged latent cache: chunked prefill, then decode
 * steps with continuous batching (any set of sequences per step) and MTP speculation.
 *
 * Speculation with the MTP head (one draft token per step):
 *   state after every call: the main cache holds positions [0, mainLen); `pending` is the last sampled token
 *   (not yet in the main cache); the MTP cache holds positions [0, mtpLen), and with a draft mtpLen = mainLen
 *   and the MTP logits at mainLen - 1 (fed `pending`) gave `draft` (a paused sequence, below, has none).
 *   A step runs the main model on [pending, draft] at positions mainLen, mainLen + 1 (absorbed attention),
 *   accepts or rejects the draft (greedy: draft == argmax; sampling: the speculative rule, which keeps the
 *   target distribution), then runs the MTP head on the positions that became final to draft the next token.
 *   A rejected draft's KV row at mainLen + 1 is simply left behind: mainLen does not cover it and the next
 *   step overwrites it.
 * Every emitted token carries the main model's logits row it was sampled from, so logprobs are the same
 * with and without speculation.
 *
 * EngineOptions.speculation: "on" drafts at every step; "off" never computes the MTP block; "auto" (the
 * default) prefills exactly as "on" (so prefix-cache entries and KV transfers are the same) and then lets
 * each sequence draft only while that pays (speculation-policy.ts). A paused sequence runs plain steps and
 * skips the MTP block too: it keeps the main hidden rows of the positions whose MTP rows it owes, and the
 * step that resumes drafting (a probe) computes them in one batched MTP call before the draft, giving the
 * very rows, and so the very drafts, that drafting all along would have. Greedy tokens never depend on
 * drafts; a sampled sequence's draws do, which is why its decisions use a fixed cost ratio (see
 * VERIFY_COST_PRIOR) and only its own drafts: a seeded request then samples the same tokens everywhere.
 *
 * Prefix caching (EngineOptions.prefixCache, kv-cache/prefix-cache.ts): prefill starts each sequence at its
 * first position not found in the cache; the cached blocks head its block table, shared read-only with
 * other sequences. Cached rows are the rows a fresh prefill writes, so a hit changes no token or logprob.
 */
import { InvalidArgumentError } from "@moela/core";
import type { DeepseekModel, ForwardResult } from "./model.js";
import { PagedLatentCache } from "./kv-cache/paged-latent.js";
import { PrefixCache } from "./kv-cache/prefix-cache.js";
import type { KvSink } from "./ports.js";
import { argmaxOn, logSumExp, Sampler, SamplerScratch, sampleFromProbs, topLogprobs, validateSamplingParams, type SamplingParams } from "./sampler.js";
import { hasPenalties, LogitsProcessor, validatePenaltyParams, type PenaltyParams } from "./sampler-penalties.js";
import { verifyDraft } from "./speculative.js";
import { CompiledGrammar, GrammarMatcher, GrammarVocabulary, type TokenTexts } from "./grammar/vocabulary.js";
import {
  initialDraftingState,
  nextDraftingState,
  VERIFY_COST_PRIOR,
  VerifyCostEstimator,
  type DraftingState,
  type SpeculationContext,
  type SpeculationMode,
} from "./speculation-policy.js";
import { Rng } from "./rng.js";

/**
 * A request's generation parameters. The penalties, logit_bias and min_tokens (PenaltyParams) act on a copy
 * of each logits row before sampling (sampler-penalties.ts), at every place a token is chosen: prefill's
 * first token, plain steps, both rows of a draft's verification (the second sees the draft as output), and
 * the MTP draft itself; so speculation changes no token. Logprobs stay those of the raw row.
 */
export interface GenerationParams extends SamplingParams, PenaltyParams {
  /** Most tokens to generate (>= 1). */
  readonly maxTokens: number;
  /** Extra token ids that end generation (EOS ends it too unless ignoreEos). */
  readonly stopTokenIds?: readonly number[];
  readonly ignoreEos?: boolean;
  /** How many top logprobs to report per generated token (0 = none). */
  readonly topLogprobs?: number;
  /**
   * Prefix-cache namespace (vLLM's cache_salt): sequences reuse each other's cached KV only when their salts
   * are equal, so a cache hit (and its timing) never reveals another tenant's prompt. Absent: the shared one.
   */
  readonly cacheSalt?: string;
  /**
   * Constrained decoding (response_format, forced tool calls): a GrammarSpec's JSON text (grammar/spec.ts). Its
   * mask goes on after the penalties, logit_bias and min_tokens and before temperature, min_p, top-k and top-p
   * (the Sampler), on every row a token is chosen from (the MTP draft and both verification rows included, the
   * second after the draft), so speculation changes no token and the output always belongs to the grammar.
   * The sequence ends ("stop") as soon as nothing can follow the output. Absent: unconstrained.
   */
  readonly grammar?: string;
}

export interface EmittedToken {
  readonly id: number;
  /** log_softmax of the raw logits at the chosen id. */
  readonly logprob: number;
  /** The N best [id, logprob] pairs, best first (when asked for). */
  readonly top: ReadonlyArray<readonly [number, number]> | null;
}

export type FinishReason = "stop" | "length";

export interface EngineOptions {
  /** Tokens per KV block. */
  readonly blockSize?: number;
  /** KV capacity in blocks. */
  readonly numBlocks?: number;
  /** Prompt tokens per prefill forward call (chunked prefill). */
  readonly prefillChunk?: number;
  /**
   * Drafting with the MTP head, when the model has one (default "auto": each sequence drafts while that
   * pays). The boolean of older callers still works: true is "on", false is "off".
   */
  readonly speculation?: SpeculationMode | boolean;
  /** @deprecated Use `speculation` (true is "on", false is "off"); ignored when `speculation` is given. */
  readonly speculative?: boolean;
  /**
   * A fixed cost ratio c (a verify step over a plain step) for "auto", instead of the engine's own
   * measurement for greedy sequences and VERIFY_COST_PRIOR for sampled ones: decisions then depend on the
   * drafts alone.
   */
  readonly verifyCost?: number;
  /** The per-sequence decision rule of "auto" (default nextDraftingState); tests script it. */
  readonly draftingPolicy?: ((state: DraftingState, step: { verified: boolean; accepted: boolean }, ctx: SpeculationContext) => DraftingState) | undefined;
  /**
   * Reuse the latent KV of prompt prefixes across sequences (off by default). `capacityBlocks` bounds the
   * blocks the cache keeps (default: all of them; unreferenced ones are evicted when allocation needs room).
   */
  readonly prefixCache?: boolean | { readonly capacityBlocks?: number };
  /**
   * Decode steps split the batch into this many micro-batches in flight together when the routed experts run
   * on other processes (ForwardOptions.microBatches; default 1). Same bits either way.
   */
  readonly microBatches?: number;
  /**
   * Drafts choose among the first this many token ids only (default: the whole vocabulary), so drafting reads
   * that part of the MTP head alone. Byte-level BPE numbers its tokens as it learns them, most frequent first.
   * Outputs are unchanged (the main model verifies every draft); acceptance can fall. As SGLang's
   * speculative_token_map and FR-Spec's frequency-ranked draft vocabulary.
   */
  readonly draftVocab?: number;
  /**
   * Tokens drafted per step with speculation "on" (default 1, at most MAX_SPECULATIVE_TOKENS): after the first draft
   * the MTP layer runs again on its own output row, fed the draft it just made, for each further one (vLLM's and
   * SGLang's chained MTP drafting; DeepSeek-V3 has one MTP layer). The main model verifies them all in one step.
   * Outputs are unchanged. "auto" drafts one token per step: its policy weighs one draft against its cost. Chained
   * drafts are made for sequences whose rows are sampled as the model gives them (no penalties, logit bias,
   * min_tokens or grammar: those would have to see every draft before it), and never past max_tokens.
   */
  readonly speculativeTokens?: number;
  /**
   * The tokenizer's text of every token id, for constrained decoding (GenerationParams.grammar); called once, on
   * the first constrained request. Absent: such requests are refused.
   */
  readonly tokenTexts?: () => TokenTexts;
}

/**
 * Everything that continues a sequence elsewhere besides its KV rows (prefill -> decode hand-off, migration).
 * The KV for positions [0, prompt.length + output.length - 1) of every cache layer travels separately.
 */
export interface SequenceSnapshot {
  readonly id: string;
  readonly prompt: readonly number[];
  readonly params: GenerationParams;
  /** Tokens emitted so far; the last one is `pending` (not yet in the KV). */
  readonly output: readonly EmittedToken[];
  readonly draft: { readonly token: number; readonly probs: Float32Array | null } | null;
  /** The sampler's random state (Rng.state()). */
  readonly rngState: readonly number[];
  readonly drafted: number;
  readonly accepted: number;
}

/** A drafted token and the draft's processed distribution it was drawn from (null when greedy). */
export interface Draft {
  token: number;
  probs: Float32Array | null;
}

export class Sequence {
  readonly id: string;
  readonly params: GenerationParams;
  readonly sampler: Sampler;
  /** Block ids of this sequence's KV, in position order. */
  readonly blockTable: number[] = [];
  readonly prompt: readonly number[];
  readonly output: EmittedToken[] = [];
  /** Positions held in the main cache. */
  mainLen = 0;
  /** Last sampled token, not yet fed to the main model (-1 before prefill). */
  pending = -1;
  draft: Draft | null = null;
  /** Chained drafts after `draft`, in order (EngineOptions.speculativeTokens; empty with one draft per step). */
  chainedDrafts: Draft[] = [];
  finishReason: FinishReason | null = null;
  drafted = 0;
  accepted = 0;
  /** Decode steps this sequence ran plain because drafting did not pay ("auto": paused or retired). */
  draftsSkipped = 0;
  /** "auto": whether this sequence drafts at its next step, and what that is based on. */
  drafting: DraftingState = initialDraftingState();
  /**
   * The MTP block's rows of positions [0, mtpLen) are in the cache; -1: they cannot be relied on (no MTP
   * block, speculation off, a hand-off without them, or drafting retired), so the sequence never drafts.
   */
  mtpLen = -1;
  /** [mainLen - mtpLen, hidden] (capacity may be larger): main hidden rows of the positions the MTP block owes. */
  owedHidden: Float32Array | null = null;
  /** Prompt positions [0, cachedTokens) came from the prefix cache (set by Engine.acquirePrefix or prefill). */
  cachedTokens = 0;
  /** The prefix cache was consulted for this sequence (once, before its prefill). */
  prefixLooked = false;
  /** Logits at the last prompt position (kept only when asked for). */
  promptLogits: Float32Array | null = null;
  /** MTP logits at the last prompt position fed the first generated token (kept only when asked for). */
  promptMtpLogits: Float32Array | null = null;
  private readonly stopIds: ReadonlySet<number>;
  /** Penalties, logit_bias, min_tokens; null when the request has none (the raw rows are sampled). */
  private readonly processor: LogitsProcessor | null;
  /** [2][vocab] processed rows (two: a verification holds the rows of both positions). */
  private readonly processedRows: Float32Array[] = [];
  /** Where the output is in its grammar (GenerationParams.grammar); null when unconstrained. */
  private readonly grammar: GrammarMatcher | null;
  /**
   * [vocab] per draft position: the distributions a sampled sequence's drafts are drawn from, reused from step to
   * step (a step verifies the last step's drafts before it makes new ones).
   */
  private readonly draftProbsBuffers: Float32Array[] = [];

  constructor(
    id: string,
    prompt: readonly number[],
    params: GenerationParams,
    vocabSize: number,
    eosIds: readonly number[],
    rng: Rng = new Rng(params.seed),
    grammar: CompiledGrammar | null = null,
    samplerScratch?: SamplerScratch,
  ) {
    this.id = id;
    this.prompt = prompt;
    this.params = params;
    this.sampler = new Sampler(vocabSize, params, rng, samplerScratch);
    this.stopIds = new Set([...(params.stopTokenIds ?? []), ...(params.ignoreEos ? [] : eosIds)]);
    this.processor = hasPenalties(params) ? new LogitsProcessor(vocabSize, params, prompt, this.stopIds) : null;
    this.grammar = grammar === null ? null : new GrammarMatcher(grammar);
    // A migrated attempt: its earlier output (the prompt's tail) is where the grammar stands.
    const prior = params.priorOutputTokens ?? 0;
    if (this.grammar !== null) for (let p = prompt.length - prior; p < prompt.length; p++) this.grammar.push(prompt[p]!);
  }

  /**
   * The row to sample from: `raw` itself without processors; else the processed copy for the next token
   * after this sequence's output, plus `extra` when it is a token id (a draft under verification). `slot`
   * (0 or 1) picks the buffer, so two processed rows can be held at once.
   */
  processed(raw: Float32Array, extra = -1, slot: 0 | 1 = 0): Float32Array {
    if (this.processor === null && this.grammar === null) return raw;
    let buf = this.processedRows[slot];
    if (buf === undefined) {
      buf = new Float32Array(raw.length);
      this.processedRows[slot] = buf;
    }
    let row: Float32Array;
    if (this.processor !== null) {
      row = this.processor.apply(raw, buf, extra);
    } else {
      buf.set(raw);
      row = buf;
    }
    // The grammar's mask: after the processors, before the Sampler (GenerationParams.grammar).
    this.grammar?.applyMask(row, this.params.maxTokens - this.output.length, extra);
    return row;
  }

  /** The buffer for the distribution of the draft at `position` (0: a step's first). */
  draftProbsBuffer(position: number, vocab: number): Float32Array {
    let b = this.draftProbsBuffers[position];
    if (b === undefined) {
      b = new Float32Array(vocab);
      this.draftProbsBuffers[position] = b;
    }
    return b;
  }

  /** Rows are sampled as the model gives them: no processors or grammar, so processed() returns its input. */
  get plainRows(): boolean {
    return this.processor === null && this.grammar === null;
  }

  get finished(): boolean {
    return this.finishReason !== null;
  }

  snapshot(): SequenceSnapshot {
    return {
      id: this.id,
      prompt: this.prompt,
      params: this.params,
      output: [...this.output],
      // A copy: the draft's distribution buffer is reused by the sequence's next step.
      draft: this.draft === null ? null : { token: this.draft.token, probs: this.draft.probs?.slice() ?? null },
      rngState: this.sampler.rng.state(),
      drafted: this.drafted,
      accepted: this.accepted,
    };
  }

  /** Append tokens produced by a step, stopping at a stop id or max_tokens; returns what was accepted. */
  emit(tokens: readonly EmittedToken[]): EmittedToken[] {
    const out: EmittedToken[] = [];
    for (const t of tokens) {
      if (this.finished) break;
      this.output.push(t);
      this.processor?.push(t.id);
      this.grammar?.push(t.id);
      out.push(t);
      if (this.stopIds.has(t.id)) this.finishReason = "stop";
      else if (this.grammar?.terminal === true) this.finishReason = "stop";
      else if (this.output.length >= this.params.maxTokens) this.finishReason = "length";
    }
    return out;
  }
}

export interface StepResult {
  readonly seq: Sequence;
  /** Tokens this call added to the sequence's output (already cut at a stop). */
  readonly tokens: EmittedToken[];
}

/** Compiled grammars an engine keeps (each is small: the schema's tree). */
const GRAMMAR_CACHE_ENTRIES = 64;

export class Engine {
  readonly model: DeepseekModel;
  readonly cache: PagedLatentCache;
  readonly prefillChunk: number;
  /** Micro-batches of a decode step (EngineOptions.microBatches). */
  readonly microBatches: number;
  /** Token ids drafts choose among: the first draftVocab (the whole vocabulary by default). */
  readonly draftVocab: number;
  /** Tokens a sequence drafts per step with speculation "on" (EngineOptions.speculativeTokens). */
  readonly speculativeTokens: number;
  /** How this engine drafts ("off" when the model has no MTP block). */
  readonly speculation: SpeculationMode;
  /** The engine computes the MTP block's rows ("on" or "auto"): its prefill and KV hand-offs carry them. */
  readonly speculative: boolean;
  /** Shared prompt prefixes (null when EngineOptions.prefixCache is off). */
  readonly prefixCache: PrefixCache | null;
  /** Totals over all sequences. */
  drafted = 0;
  accepted = 0;
  /** The same by position in a step's drafts (0: the first; chained ones after it), MAX_SPECULATIVE_TOKENS long. */
  readonly draftedAt: number[] = new Array<number>(MAX_SPECULATIVE_TOKENS).fill(0);
  readonly acceptedAt: number[] = new Array<number>(MAX_SPECULATIVE_TOKENS).fill(0);
  /**
   * The last step()'s drafts verified and accepted by position (zeroed when a step starts): what decode's and the
   * one-process server's metrics count after each step. Overwritten by the next step: read them, do not keep them.
   */
  readonly stepDraftedAt: number[] = new Array<number>(MAX_SPECULATIVE_TOKENS).fill(0);
  readonly stepAcceptedAt: number[] = new Array<number>(MAX_SPECULATIVE_TOKENS).fill(0);
  draftsSkipped = 0;
  /** EWMA of the acceptance of this engine's recent drafts, all sequences together (null before the first). */
  acceptanceRate: number | null = null;
  /** c, the cost of a verify step in plain steps, from this engine's own step timings. */
  readonly verifyCostEstimate: VerifyCostEstimator = new VerifyCostEstimator();
  private readonly fixedVerifyCost: number | null;
  private readonly draftingPolicy: NonNullable<EngineOptions["draftingPolicy"]>;
  private readonly probsTarget: Float32Array[];
  /** [vocab] the samplers' candidates and weights, lent to every sequence's Sampler. */
  private readonly samplerScratch: SamplerScratch;
  /** [max logit, log sum exp(logits - max)] of the token being emitted (token()). */
  private readonly logSumExpPair = new Float64Array(2);
  private readonly tokenTexts: (() => TokenTexts) | null;
  private grammarVocabulary: GrammarVocabulary | null = null;
  /** Compiled grammars by spec text, least recently used first. */
  private readonly grammars = new Map<string, CompiledGrammar>();

  constructor(model: DeepseekModel, opts: EngineOptions = {}) {
    this.model = model;
    this.tokenTexts = opts.tokenTexts ?? null;
    const c = model.config;
    this.cache = new PagedLatentCache({
      numLayers: model.cacheLayers,
      latentDim: c.latentDim,
      blockSize: opts.blockSize ?? 16,
      numBlocks: opts.numBlocks ?? 1024,
    });
    this.prefillChunk = opts.prefillChunk ?? 256;
    this.microBatches = opts.microBatches ?? 1;
    if (!(Number.isInteger(this.microBatches) && this.microBatches >= 1))
      throw new InvalidArgumentError(`microBatches must be a positive integer, got ${this.microBatches}`);
    const asked = opts.speculation ?? opts.speculative ?? "auto";
    const mode: SpeculationMode = asked === true ? "on" : asked === false ? "off" : asked;
    if (mode !== "auto" && mode !== "on" && mode !== "off") throw new InvalidArgumentError(`speculation must be auto, on or off, got ${String(asked)}`);
    this.speculation = model.hasMtp ? mode : "off";
    this.speculative = this.speculation !== "off";
    if (opts.verifyCost !== undefined && !(Number.isFinite(opts.verifyCost) && opts.verifyCost > 0)) {
      throw new InvalidArgumentError(`verifyCost must be a positive number, got ${opts.verifyCost}`);
    }
    this.fixedVerifyCost = opts.verifyCost ?? null;
    this.draftVocab = opts.draftVocab ?? c.vocabSize;
    if (!(Number.isInteger(this.draftVocab) && this.draftVocab >= 1 && this.draftVocab <= c.vocabSize)) {
      throw new InvalidArgumentError(`draftVocab must be an integer from 1 to the vocabulary size ${c.vocabSize}, got ${opts.draftVocab}`);
    }
    this.speculativeTokens = opts.speculativeTokens ?? 1;
    if (!(Number.isInteger(this.speculativeTokens) && this.speculativeTokens >= 1 && this.speculativeTokens <= MAX_SPECULATIVE_TOKENS)) {
      throw new InvalidArgumentError(`speculativeTokens must be an integer from 1 to ${MAX_SPECULATIVE_TOKENS}, got ${opts.speculativeTokens}`);
    }
    this.draftingPolicy = opts.draftingPolicy ?? ((state, step, ctx) => nextDraftingState(state, step, ctx));
    this.probsTarget = Array.from({ length: this.speculativeTokens + 1 }, () => new Float32Array(c.vocabSize));
    this.samplerScratch = new SamplerScratch(c.vocabSize, model.kernels.sampler ?? null);
    if (opts.prefixCache) {
      const cap = typeof opts.prefixCache === "object" ? opts.prefixCache.capacityBlocks : undefined;
      const pc = new PrefixCache(this.cache, cap === undefined ? {} : { capacityBlocks: cap });
      // Evict only when that makes the allocation succeed: a refused request should not cost cached prefixes.
      this.cache.reclaimer = (need) => {
        if (pc.evictableBlocks >= need) pc.evict(need);
      };
      this.prefixCache = pc;
    } else {
      this.prefixCache = null;
    }
  }

  /**
   * Whether cached blocks hold valid MTP rows: they do when every prefill of this engine computes the MTP
   * block's rows (speculation on). A non-speculative engine caches main-layer rows only, and bypasses the
   * cache for a prefill that wants the MTP rows (keepLogits).
   */
  private prefixUsable(keepLogits: boolean): boolean {
    return this.prefixCache !== null && (this.speculative || !(keepLogits && this.model.hasMtp));
  }

  /**
   * Take the longest cached prefix of a new sequence's prompt (whole blocks, leaving at least the last
   * prompt position to compute): its blocks head the block table, referenced until release(). Returns the
   * cached token count (0 without a prefix cache). Prefill calls it for sequences that did not; call it
   * earlier to know the count before prefill (a KV transfer announces it).
   */
  acquirePrefix(seq: Sequence, opts: { keepLogits?: boolean } = {}): number {
    if (seq.prefixLooked) return seq.cachedTokens;
    if (seq.mainLen !== 0 || seq.blockTable.length !== 0) throw new Error(`sequence ${seq.id} already holds KV`);
    seq.prefixLooked = true;
    if (!this.prefixUsable(opts.keepLogits === true)) return 0;
    const blocks = this.prefixCache!.acquire(seq.prompt, seq.params.cacheSalt);
    seq.blockTable.push(...blocks);
    seq.cachedTokens = blocks.length * this.cache.blockSize;
    return seq.cachedTokens;
  }

  /** Validate a request and make its sequence (no cache is taken until prefill). */
  newSequence(id: string, prompt: readonly number[], params: GenerationParams, rng?: Rng): Sequence {
    const c = this.model.config;
    validateSamplingParams(params);
    validatePenaltyParams(params, c.vocabSize);
    if (!(Number.isInteger(params.maxTokens) && params.maxTokens >= 1)) {
      throw new InvalidArgumentError(`max_tokens must be a positive integer, got ${params.maxTokens}`);
    }
    if (prompt.length === 0) throw new InvalidArgumentError("the prompt is empty");
    for (const id of prompt) {
      if (!(Number.isInteger(id) && id >= 0 && id < c.vocabSize)) {
        throw new InvalidArgumentError(`prompt token id ${id} is outside the vocabulary of ${c.vocabSize}`);
      }
    }
    if (prompt.length + params.maxTokens > c.maxPositionEmbeddings) {
      throw new InvalidArgumentError(
        `prompt (${prompt.length} tokens) + max_tokens (${params.maxTokens}) exceeds the model's ${c.maxPositionEmbeddings} positions`,
      );
    }
    const n = params.topLogprobs ?? 0;
    if (!(Number.isInteger(n) && n >= 0 && n <= c.vocabSize)) {
      throw new InvalidArgumentError(`top logprobs must be an integer in [0, ${c.vocabSize}], got ${n}`);
    }
    const grammar = params.grammar === undefined ? null : this.compileGrammar(params.grammar);
    return new Sequence(id, prompt, params, c.vocabSize, c.eosTokenIds, rng, grammar, this.samplerScratch);
  }

  /** GenerationParams.grammar compiled for this model's vocabulary (built on first use), cached per spec. */
  compileGrammar(spec: string): CompiledGrammar {
    const hit = this.grammars.get(spec);
    if (hit !== undefined) {
      this.grammars.delete(spec);
      this.grammars.set(spec, hit);
      return hit;
    }
    if (this.tokenTexts === null) throw new InvalidArgumentError("this engine has no tokenizer texts, so it cannot constrain the output (grammar)");
    const c = this.model.config;
    this.grammarVocabulary ??= new GrammarVocabulary(this.tokenTexts(), c.eosTokenIds, c.vocabSize);
    const compiled = CompiledGrammar.compile(spec, this.grammarVocabulary);
    this.grammars.set(spec, compiled);
    if (this.grammars.size > GRAMMAR_CACHE_ENTRIES) this.grammars.delete(this.grammars.keys().next().value!);
    return compiled;
  }

  /** Blocks a sequence will need at most (prompt + output + one speculative row). */
  blocksNeeded(promptLength: number, maxTokens: number): number {
    return this.cache.blocksFor(promptLength + maxTokens + 1);
  }

  /** Take blocks for `tokens` positions (plus one speculative row); throws ResourceExhaustedError when full. */
  reserveBlocks(tokens: number): number[] {
    const table: number[] = [];
    this.cache.ensureCapacity(table, tokens + 1);
    return table;
  }

  /**
   * Continue a sequence from a snapshot whose KV rows for [0, prompt + output - 1) are already in `blockTable`
   * (all cache layers, MTP included). The sequence then steps exactly as it would have where it started.
   */
  restore(snap: SequenceSnapshot, blockTable: number[]): Sequence {
    if (snap.output.length === 0) throw new InvalidArgumentError(`sequence ${snap.id} has no sampled token to continue from`);
    const seq = this.newSequence(snap.id, snap.prompt, snap.params, Rng.fromState(snap.rngState));
    seq.blockTable.push(...blockTable);
    seq.emit(snap.output);
    seq.mainLen = snap.prompt.length + snap.output.length - 1;
    seq.pending = snap.output[snap.output.length - 1]!.id;
    seq.draft = this.speculative ? snap.draft : null;
    // A snapshot's draft comes with the MTP block's rows of every position (its contract); without one
    // the sequence cannot draft.
    seq.mtpLen = seq.draft !== null ? seq.mainLen : -1;
    seq.drafted = snap.drafted;
    seq.accepted = snap.accepted;
    return seq;
  }

  /** Return a sequence's KV blocks to the pool (finish, cancel, failure); shared blocks lose a reference. Idempotent. */
  release(seq: Sequence): void {
    if (seq.blockTable.length === 0) return;
    const table = seq.blockTable.splice(0);
    if (this.prefixCache !== null) this.prefixCache.release(table);
    else this.cache.free(table);
  }

  /**
   * Chunked prefill of new sequences (decompressed attention); samples each one's first token and, with
   * speculation, runs the MTP head over the prompt to draft the second. `keepLogits` keeps the last prompt
   * position's logits and MTP logits on the sequence.
   *
   * With a prefix cache each sequence starts at its first uncached position (cachedTokens); its cached rows
   * still reach `kvSink`, each layer's just before that layer's first computed rows, so the sink sees every
   * position of every layer in order. The sink's `seq` is the sequence's index in `seqs`. After the MTP
   * pass (whose rows the cache keys cover) the new full blocks are inserted into the cache.
   */
  async prefill(seqs: readonly Sequence[], opts: { keepLogits?: boolean; kvSink?: KvSink } = {}): Promise<StepResult[]> {
    const m = this.model;
    const hd = m.config.hiddenSize;
    const keepLogits = opts.keepLogits === true;
    for (const s of seqs) {
      if (s.mainLen !== 0) throw new Error(`sequence ${s.id} is already prefilled`);
      this.acquirePrefix(s, { keepLogits });
      if (s.cachedTokens > 0 && !this.prefixUsable(keepLogits)) {
        throw new Error(`sequence ${s.id} took cached blocks without MTP rows, and this prefill wants them (keepLogits)`);
      }
      this.cache.ensureCapacity(s.blockTable, s.prompt.length + 1);
    }
    const first = seqs.map((s) => s.cachedTokens); // per seq: first position computed
    const hiddenRows = seqs.map((s, i) => new Float32Array((s.prompt.length - first[i]!) * hd)); // per seq [L - first, hidden]
    const lastLogits = new Map<Sequence, Float32Array>();
    const sink = opts.kvSink
      ? new CachedRowsSink(
          this.cache,
          opts.kvSink,
          seqs.map((s) => s.blockTable),
          first,
          this.prefillChunk,
        )
      : null;
    for (let round = 0; ; round++) {
      // Per sequence, the chunk [at, end) of this round: cursors advance by prefillChunk from `first`.
      const active = seqs.flatMap((s, i) => (first[i]! + round * this.prefillChunk < s.prompt.length ? [i] : []));
      if (active.length === 0) break;
      const batch = active.map((i) => {
        const s = seqs[i]!;
        const at = first[i]! + round * this.prefillChunk;
        const end = Math.min(s.prompt.length, at + this.prefillChunk);
        return {
          blockTable: s.blockTable,
          start: at,
          tokens: s.prompt.slice(at, end),
          logits: end === s.prompt.length ? ("last" as const) : ("none" as const),
        };
      });
      const r = await m.forward(this.cache, batch, { attention: "decompressed", ...(sink ? { kvSink: sink.forBatch(active) } : {}) });
      active.forEach((i, k) => {
        const b = batch[k]!;
        hiddenRows[i]!.set(r.hidden.subarray(r.tokenRow[k]! * hd, (r.tokenRow[k]! + b.tokens.length) * hd), (b.start - first[i]!) * hd);
        if (r.logitRow[k]! >= 0) lastLogits.set(seqs[i]!, this.logitsRow(r, r.logitRow[k]!).slice());
      });
    }
    const results: StepResult[] = [];
    for (let i = 0; i < seqs.length; i++) {
      const s = seqs[i]!;
      const L = s.prompt.length;
      const logits = lastLogits.get(s)!;
      const tok = s.sampler.sample(s.processed(logits));
      s.mainLen = L;
      s.pending = tok;
      if (keepLogits) s.promptLogits = logits;
      results.push({ seq: s, tokens: s.emit([this.token(s, logits, tok)]) });
    }
    // MTP over the prompt: position p is fed token p + 1 (the first generated token at p = L - 1).
    const wantMtp = this.speculative || (keepLogits && m.hasMtp);
    if (wantMtp) {
      for (let round = 0; ; round++) {
        const active = seqs.flatMap((s, i) => (first[i]! + round * this.prefillChunk < s.prompt.length ? [i] : []));
        if (active.length === 0) break;
        const batch = active.map((i) => {
          const s = seqs[i]!;
          const L = s.prompt.length;
          const at = first[i]! + round * this.prefillChunk;
          const end = Math.min(L, at + this.prefillChunk);
          const next = [...s.prompt.slice(at + 1, Math.min(end + 1, L)), ...(end === L ? [s.pending] : [])];
          return {
            blockTable: s.blockTable,
            start: at,
            tokens: next,
            logits: end === L ? ("last" as const) : ("none" as const),
            hidden: hiddenRows[i]!,
            hiddenOff: (at - first[i]!) * hd,
          };
        });
        const r = await m.forwardMtp(this.cache, batch, {
          attention: "decompressed",
          ...(sink ? { kvSink: sink.forBatch(active) } : {}),
          ...(keepLogits ? {} : { headRows: this.draftVocab }),
        });
        active.forEach((i, k) => {
          if (r.logitRow[k]! < 0) return;
          const s = seqs[i]!;
          const row = this.logitsRow(r, r.logitRow[k]!);
          if (keepLogits) s.promptMtpLogits = row.slice();
          if (this.speculative && !s.finished) {
            // Kept logits cover the whole vocabulary; the draft comes from the draft vocabulary all the same.
            this.setDraft(s, keepLogits && this.draftVocab < row.length ? row.slice().fill(-Infinity, this.draftVocab) : row);
            s.mtpLen = s.mainLen;
          }
        });
      }
    }
    // Every cache layer of the prompt's full blocks is final now (the MTP rows of a non-speculative engine
    // are not claimed: see prefixUsable).
    if (this.prefixCache !== null) {
      for (const s of seqs) this.prefixCache.insert([...s.prompt, s.pending], s.blockTable, s.cachedTokens / this.cache.blockSize, s.params.cacheSalt);
    }
    return results;
  }

  /**
   * One decode step for a batch of prefilled, unfinished sequences (absorbed attention). A sequence with a
   * draft verifies it; the others run plain. Then every sequence that drafts at the next step gets its draft
   * from the MTP block, fed the positions that became final (and, after a pause, the ones it owes).
   */
  async step(seqs: readonly Sequence[]): Promise<StepResult[]> {
    const m = this.model;
    const hd = m.config.hiddenSize;
    this.stepDraftedAt.fill(0);
    this.stepAcceptedAt.fill(0);
    for (const s of seqs) {
      if (s.pending < 0 || s.finished) throw new Error(`sequence ${s.id} cannot step (not prefilled or finished)`);
      this.cache.ensureCapacity(s.blockTable, s.mainLen + 2 + s.chainedDrafts.length);
    }
    const t0 = performance.now();
    const batch = seqs.map((s) => ({
      blockTable: s.blockTable,
      start: s.mainLen,
      tokens: s.draft ? [s.pending, s.draft.token, ...s.chainedDrafts.map((d) => d.token)] : [s.pending],
      logits: "all" as const,
    }));
    const r = await m.forward(this.cache, batch, { attention: "absorbed", microBatches: this.microBatches });
    const results: StepResult[] = [];
    // Per sequence drafting next: MTP positions [start, start + tokens.length), fed `tokens`, over `hidden` rows.
    const mtpBatch: { seq: Sequence; start: number; tokens: number[]; hidden: Float32Array; hiddenOff: number }[] = [];
    let verifying = 0;
    let owedRows = 0;
    seqs.forEach((s, i) => {
      const row0 = this.logitsRow(r, r.logitRow[i]!);
      const h0 = r.tokenRow[i]! * hd;
      let produced: EmittedToken[];
      const start = s.mainLen;
      const verified = s.draft !== null;
      let acceptedDraft = false;
      if (s.draft) {
        const rows = [row0];
        for (let j = 0; j <= s.chainedDrafts.length; j++) rows.push(this.logitsRow(r, r.logitRow[i]! + 1 + j));
        let accepted: number;
        ({ produced, accepted } = this.verifyDraftsOf(s, rows));
        acceptedDraft = accepted > 0;
        verifying++;
      } else {
        const next = s.sampler.sample(s.processed(row0));
        produced = [this.token(s, row0, next)];
        s.mainLen += 1;
        s.pending = next;
        if ((s.mtpLen >= 0 || s.drafting.retired) && this.draftFits(s)) {
          s.draftsSkipped++;
          this.draftsSkipped++;
        }
      }
      results.push({ seq: s, tokens: s.emit(produced) });
      s.draft = null;
      if (s.chainedDrafts.length > 0) s.chainedDrafts = [];
      if (s.mtpLen < 0) return;
      if (s.finished) {
        s.owedHidden = null;
        return;
      }
      if (this.speculation === "auto") {
        s.drafting = this.draftingPolicy(s.drafting, { verified, accepted: acceptedDraft }, this.speculationContext(s, seqs.length));
        if (s.drafting.retired) {
          s.mtpLen = -1;
          s.owedHidden = null;
          return;
        }
      }
      const rows = s.mainLen - start; // positions that became final, their hidden rows from h0
      // With one token left, a draft could never be emitted: verifying it would only cost a row.
      const drafting = (this.speculation === "on" || s.drafting.drafting) && this.draftFits(s);
      if (drafting && s.mtpLen === start) {
        mtpBatch.push({ seq: s, start, tokens: this.tokensAt(s, start + 1, s.mainLen + 1), hidden: r.hidden, hiddenOff: h0 });
        return;
      }
      // Owe the MTP block these positions: keep their hidden rows (the MTP block's other input).
      const owed = start - s.mtpLen;
      s.owedHidden = grow(s.owedHidden, (owed + rows) * hd);
      s.owedHidden.set(r.hidden.subarray(h0, h0 + rows * hd), owed * hd);
      if (drafting) {
        mtpBatch.push({ seq: s, start: s.mtpLen, tokens: this.tokensAt(s, s.mtpLen + 1, s.mainLen + 1), hidden: s.owedHidden, hiddenOff: 0 });
        owedRows += owed;
      }
    });
    if (mtpBatch.length > 0) {
      const mr = await m.forwardMtp(
        this.cache,
        mtpBatch.map((b) => ({
          blockTable: b.seq.blockTable,
          start: b.start,
          tokens: b.tokens,
          logits: "last" as const,
          hidden: b.hidden,
          hiddenOff: b.hiddenOff,
        })),
        { attention: "absorbed", headRows: this.draftVocab },
      );
      const chains: DraftChain[] = [];
      mtpBatch.forEach((b, i) => {
        this.setDraft(b.seq, this.logitsRow(mr, mr.logitRow[i]!));
        b.seq.mtpLen = b.seq.mainLen;
        b.seq.owedHidden = null;
        const more = this.chainLength(b.seq);
        // Every row asked for "last", so mr.hidden holds one row per sequence, its last (forwardMtp).
        if (more > 0) chains.push({ seq: b.seq, more, hidden: mr.hidden.slice(mr.tokenRow[i]! * hd, (mr.tokenRow[i]! + 1) * hd) });
      });
      await this.chainDrafts(chains);
    }
    // A step that also computed owed MTP rows (a probe's) would overstate what verifying costs.
    if (owedRows === 0) this.verifyCostEstimate.observe((performance.now() - t0) / 1000, seqs.length - verifying, verifying);
    return results;
  }

  /**
   * Verifies a sequence's drafts against the logits rows of its step (rows[j] before draft j, the last after them
   * all): greedy by argmax, sampled by speculative sampling; advances the sequence and returns the tokens it
   * produced and how many drafts were accepted.
   */
  private verifyDraftsOf(s: Sequence, rows: readonly Float32Array[]): { produced: EmittedToken[]; accepted: number } {
    const drafts = [s.draft!, ...s.chainedDrafts];
    const k = drafts.length;
    // The row after a single draft sees it as output (penalties, min_tokens); chained drafts come only with rows
    // that no processor changes (chainLength), which are their own processed rows.
    const processed = k === 1 ? [s.processed(rows[0]!, -1, 0), s.processed(rows[1]!, drafts[0]!.token, 1)] : rows;
    let accepted = 0;
    let next: number;
    if (s.sampler.greedy) {
      const kernels = this.samplerScratch.kernels;
      for (;;) {
        next = argmaxOn(kernels, processed[accepted]!);
        if (accepted === k || next !== drafts[accepted]!.token) break;
        accepted++;
      }
    } else {
      for (let j = 0; j <= k; j++) s.sampler.probs(processed[j]!, this.probsTarget[j]!);
      const v = verifyDraft({
        draftTokens: drafts.map((d) => d.token),
        draftProbs: drafts.map((d) => d.probs!),
        targetProbs: this.probsTarget.slice(0, k + 1),
        rng: s.sampler.rng,
      });
      accepted = v.accepted;
      next = v.tokens[v.tokens.length - 1]!;
    }
    s.drafted += k;
    this.drafted += k;
    s.accepted += accepted;
    this.accepted += accepted;
    for (let j = 0; j < k; j++) {
      this.draftedAt[j]!++;
      this.stepDraftedAt[j]!++;
    }
    for (let j = 0; j < accepted; j++) {
      this.acceptedAt[j]!++;
      this.stepAcceptedAt[j]!++;
    }
    // The first draft's outcome: what "auto" weighs (it drafts one token per step).
    const a = accepted > 0 ? 1 : 0;
    this.acceptanceRate = this.acceptanceRate === null ? a : this.acceptanceRate + ENGINE_RATE_WEIGHT * (a - this.acceptanceRate);
    const produced = drafts.slice(0, accepted).map((d, j) => this.token(s, rows[j]!, d.token));
    produced.push(this.token(s, rows[accepted]!, next));
    s.mainLen += accepted + 1;
    s.pending = next;
    return { produced, accepted };
  }

  /**
   * Chained drafts a sequence makes after its first (EngineOptions.speculativeTokens): with speculation "on", rows
   * that no processor changes, and none that max_tokens would cut (the step's own token comes after the drafts).
   */
  private chainLength(s: Sequence): number {
    if (this.speculation !== "on" || s.draft === null || !s.plainRows) return 0;
    return Math.max(0, Math.min(this.speculativeTokens - 1, s.params.maxTokens - s.output.length - 2));
  }

  /**
   * The chained drafts: at depth j the MTP layer runs at position mainLen + j - 1, fed the draft before and its own
   * output row there (normed by shared_head.norm, as the main rows it takes are), as vLLM and SGLang chain
   * DeepSeek's one MTP layer. Those MTP rows lie past mtpLen, so the next step's MTP call overwrites them with rows
   * from the main model's hidden states, as a rejected draft's main row is overwritten.
   */
  private async chainDrafts(chains: DraftChain[]): Promise<void> {
    const hd = this.model.config.hiddenSize;
    for (let depth = 1; chains.length > 0; depth++) {
      chains = chains.filter((c) => c.more >= depth);
      if (chains.length === 0) return;
      for (const c of chains) this.cache.ensureCapacity(c.seq.blockTable, c.seq.mainLen + depth);
      const mr = await this.model.forwardMtp(
        this.cache,
        chains.map((c) => ({
          blockTable: c.seq.blockTable,
          start: c.seq.mainLen + depth - 1,
          tokens: [c.seq.chainedDrafts[depth - 2]?.token ?? c.seq.draft!.token],
          logits: "last" as const,
          hidden: c.hidden,
          hiddenOff: 0,
        })),
        { attention: "absorbed", headRows: this.draftVocab },
      );
      chains.forEach((c, i) => {
        c.hidden = mr.hidden.slice(mr.tokenRow[i]! * hd, (mr.tokenRow[i]! + 1) * hd);
        const d = this.draftFrom(c.seq, this.logitsRow(mr, mr.logitRow[i]!), depth);
        if (d === null) c.more = 0;
        else c.seq.chainedDrafts.push(d);
      });
    }
  }

  /**
   * What one sequence's next decision may use besides its own drafts. A greedy sequence's tokens do not
   * depend on its drafts, so it may use measurements: the engine's c and acceptance. A sampled one's draws
   * do, so it uses the fixed prior c and nothing that other sequences or timings change (VERIFY_COST_PRIOR).
   * EngineOptions.verifyCost replaces c for both.
   */
  private speculationContext(s: Sequence, batch: number): SpeculationContext {
    const greedy = s.sampler.greedy;
    const engineRate = greedy ? this.acceptanceRate : null;
    if (this.fixedVerifyCost !== null) return { costRatio: this.fixedVerifyCost, costSource: "fixed", engineRate };
    if (!greedy) return { costRatio: VERIFY_COST_PRIOR, costSource: "fixed", engineRate };
    const e = this.verifyCostEstimate;
    return { costRatio: e.ratio(batch), costSource: e.measured(batch) ? "measured" : "prior", engineRate };
  }

  /** The sequence's tokens at positions [from, to) (prompt, then output). */
  private tokensAt(s: Sequence, from: number, to: number): number[] {
    const L = s.prompt.length;
    const out: number[] = [];
    for (let p = from; p < to; p++) out.push(p < L ? s.prompt[p]! : s.output[p - L]!.id);
    return out;
  }

  /** Prefill then step until done; yields tokens as they are produced. */
  async *generate(seq: Sequence, opts: { keepLogits?: boolean } = {}): AsyncGenerator<EmittedToken> {
    try {
      for (const r of await this.prefill([seq], opts)) yield* r.tokens;
      while (!seq.finished) for (const r of await this.step([seq])) yield* r.tokens;
    } finally {
      this.release(seq);
    }
  }

  /** The MTP row proposes the token after the sequence's output: processed as the main row there will be. */
  private setDraft(s: Sequence, mtpLogits: Float32Array): void {
    s.draft = this.draftFits(s) ? this.draftFrom(s, mtpLogits, 0) : null;
  }

  /** Whether max_tokens leaves room for a draft and the token after it (the step's own). */
  private draftFits(s: Sequence): boolean {
    return s.params.maxTokens - s.output.length >= 2;
  }

  /**
   * The draft at `position` from an MTP row (null when nothing in the draft vocabulary is allowed). Protected, not
   * private: scripts/lib/perfect-drafts.ts overrides it with a plain run's own tokens, so that
   * scripts/bench/speculation.ts --perfect-drafts can measure what verifying costs when every draft lands.
   */
  protected draftFrom(s: Sequence, mtpLogits: Float32Array, position: number): Draft | null {
    const row = s.processed(mtpLogits);
    // A grammar (or a logit bias) may rule out the whole draft vocabulary: nothing to draft this step.
    if (this.draftVocab < row.length && !row.subarray(0, this.draftVocab).some((v) => v > -Infinity)) return null;
    if (s.sampler.greedy) return { token: argmaxOn(this.samplerScratch.kernels, row), probs: null };
    const probs = s.draftProbsBuffer(position, this.model.config.vocabSize);
    s.sampler.probs(row, probs);
    return { token: sampleFromProbs(probs, s.sampler.rng), probs };
  }

  private logitsRow(r: ForwardResult, row: number): Float32Array {
    const V = this.model.config.vocabSize;
    return r.logits.subarray(row * V, (row + 1) * V);
  }

  private token(s: Sequence, logits: Float32Array, id: number): EmittedToken {
    const n = s.params.topLogprobs ?? 0;
    const lse = this.logSumExpPair;
    // Every emitted token pays this pass over the vocabulary: the fast kernels make it a few microseconds.
    if (this.model.kernels.logSumExp !== undefined) this.model.kernels.logSumExp(logits, lse);
    else logSumExp(logits, lse);
    return { id, logprob: logits[id]! - lse[0]! - lse[1]!, top: n > 0 ? topLogprobs(logits, n, lse) : null };
  }
}

/**
 * The KvSink of one prefill: maps each forward call's batch index to the sequence's index in the prefill,
 * and sends a sequence's cached rows of a layer (positions [0, first)) just before that layer's first
 * computed rows, in chunks of `chunk` positions, so the sink sees every position of every layer in order.
 */
class CachedRowsSink {
  /** "seq:layer" whose cached rows went out. */
  private readonly sent = new Set<string>();
  /** [chunk, latentDim] rows read back from the cache. */
  private buf: Float32Array = new Float32Array(0);

  constructor(
    private readonly cache: PagedLatentCache,
    private readonly sink: KvSink,
    /** Per sequence: its block table, whose first blocks are the cached ones. */
    private readonly tables: readonly (readonly number[])[],
    /** Per sequence: cached positions [0, first). */
    private readonly first: readonly number[],
    private readonly chunk: number,
  ) {}

  /** The sink for one forward call whose batch holds the prefill's sequences `active`, in order. */
  forBatch(active: readonly number[]): KvSink {
    return {
      onLayer: async (layer, k, start, n, rows) => {
        const i = active[k]!;
        await this.sendCached(layer, i);
        await this.sink.onLayer(layer, i, start, n, rows);
      },
    };
  }

  private async sendCached(layer: number, i: number): Promise<void> {
    const cached = this.first[i]!;
    const key = `${i}:${layer}`;
    if (cached === 0 || this.sent.has(key)) return;
    this.sent.add(key);
    const d = this.cache.latentDim;
    if (this.buf.length < this.chunk * d) this.buf = new Float32Array(this.chunk * d);
    const table = this.tables[i]!;
    for (let p = 0; p < cached; p += this.chunk) {
      const n = Math.min(this.chunk, cached - p);
      this.cache.read(layer, table, p, n, this.buf);
      await this.sink.onLayer(layer, i, p, n, this.buf.subarray(0, n * d));
    }
  }
}

/** The most tokens EngineOptions.speculativeTokens may ask a sequence to draft per step. */
export const MAX_SPECULATIVE_TOKENS = 4;

/** A sequence making chained drafts: how many more, and the MTP layer's output row its next one is fed. */
interface DraftChain {
  readonly seq: Sequence;
  more: number;
  hidden: Float32Array;
}

/** Weight of one draft's outcome in Engine.acceptanceRate (about the engine's last 40 drafts). */
const ENGINE_RATE_WEIGHT = 0.05;

/** `buf` if it holds `n` values, else a larger copy (doubling, so owing row after row stays linear). */
function grow(buf: Float32Array | null, n: number): Float32Array {
  if (buf !== null && buf.length >= n) return buf;
  const next = new Float32Array(Math.max(n, 2 * (buf?.length ?? 0)));
  if (buf !== null) next.set(buf);
  return next;
}
