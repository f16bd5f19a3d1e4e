/**
 * The requests of a bench: prompts and lengths drawn from a seeded Rng, so every target gets the same
 * prompts with the same lengths, and a rerun with the same seed sends the same requests.
 *
 * Prompts are either token ids (the default: `prompt` as a list of ids, used exactly as given by vLLM,
 * SGLang and moela's router, so the prompt length is exact and no tokenizer is needed, as with a
 * tokenizer-less checkpoint) or random words (text for /v1/chat/completions or servers that want text;
 * one word is about one token, and the server's usage.prompt_tokens says exactly).
 *
 * Prompt ids are drawn uniformly from [lo, hi]: the default range 3..999 stays clear of the usual special
 * ids (0, 1, 2 are BOS/EOS/pad in DeepSeek-V3 and in the bundled tiny model) and inside every vocabulary
 * from the tiny model's 1,024 up. Random prompts also keep a server's prefix cache from helping: each
 * level and the warm-up get their own prompts (their own derived seed).
 */
import { InvalidArgumentError } from "@moela/core";
import { sampleLength, type LengthDist } from "./lengths.js";
import { Rng } from "./rng.js";

export interface RequestSpec {
  /** Position in its phase (warm-up or measured) of its level. */
  readonly index: number;
  /** Token ids, or text. */
  readonly prompt: readonly number[] | string;
  /** The prompt length asked for (ids: exact; words: the word count). */
  readonly promptLen: number;
  /** max_tokens. */
  readonly maxTokens: number;
}

export type PromptKind = { readonly kind: "ids"; readonly lo: number; readonly hi: number } | { readonly kind: "words" };

export interface WorkloadSpec {
  readonly input: LengthDist;
  readonly output: LengthDist;
  readonly prompt: PromptKind;
}

export const DEFAULT_ID_RANGE = { lo: 3, hi: 999 } as const;

/** Plain words for text prompts (common English words, most one token in any BPE vocabulary). */
const WORDS = (
  "the of and to in is was for on are with as at be by this had not but from or have an they which one you were her all she " +
  "there would their we him been has when who will more no if out so said what up its about into than them can only other new " +
  "some could time these two may then do first any my now such like our over man me even most made after also did many before " +
  "must through back years where much your way well down should because each just those people how too little state good very make"
).split(" ");

/** "LO:HI" (inclusive) for the prompt id range. */
export function parseIdRange(s: string): { lo: number; hi: number } {
  const m = /^\s*(\d+)\s*:\s*(\d+)\s*$/.exec(s);
  const lo = Number(m?.[1]);
  const hi = Number(m?.[2]);
  if (m === null || hi < lo) throw new InvalidArgumentError(`token id range must look like LO:HI with LO <= HI, got "${s}"`);
  return { lo, hi };
}

/** `count` requests drawn from `spec` with `seed`; the same arguments give the same requests. */
export function buildRequests(spec: WorkloadSpec, count: number, seed: number): RequestSpec[] {
  const lengths = new Rng(seed);
  const tokens = new Rng(seed ^ 0x5bd1e995);
  const out: RequestSpec[] = [];
  for (let index = 0; index < count; index++) {
    const promptLen = sampleLength(spec.input, lengths);
    const maxTokens = sampleLength(spec.output, lengths);
    let prompt: number[] | string;
    if (spec.prompt.kind === "ids") {
      const { lo, hi } = spec.prompt;
      prompt = Array.from({ length: promptLen }, () => tokens.int(lo, hi));
    } else {
      prompt = Array.from({ length: promptLen }, () => WORDS[tokens.int(0, WORDS.length - 1)]!).join(" ");
    }
    out.push({ index, prompt, promptLen, maxTokens });
  }
  return out;
}
