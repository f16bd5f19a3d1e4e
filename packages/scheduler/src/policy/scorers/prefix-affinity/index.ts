/**
 * prefix-affinity: prefers the instance whose prefix cache holds the longest prefix of the prompt (so
 * prefill computes the fewest tokens there), discounted by how much more work that instance has queued
 * than the least loaded candidate (so a popular prefix does not pile every request onto one instance).
 *
 *   match_i  = cached prompt tokens at i / prompt tokens                    (the longest run of leading
 *              prefix keys, prefixBlockHashes, that the instance published)
 *   excess_i = sequences on i - fewest sequences on any candidate          (params.ts sequencesOn)
 *   score_i  = match_i * tolerance / (tolerance + excess_i)
 * so an instance `tolerance` jobs busier than the idlest keeps half its match. Combine it with a load
 * scorer (load) so equal matches go to the less busy instance.
 *
 * The candidate source gathers Candidate.attributes["prefix-affinity"] (PrefixAffinityAttribute) before
 * the decision; a candidate without it scores 0, as does every candidate of a request without
 * promptTokenIds.
 */
import { longestPrefix, prefixBlockHashes } from "@moela/core";
import { z } from "zod";
import { parseParameters, sequencesOn } from "../../params.js";
import type { Candidate, Scorer, ScorerFactory } from "../../types.js";

/** The attribute key (the scorer's type id). */
export const PREFIX_AFFINITY = "prefix-affinity";

/** What the candidate source knows about an instance's prefix cache. */
export interface PrefixAffinityAttribute {
  /** Tokens per block of its prefix cache (the keys depend on it). */
  readonly blockSize: number;
  /** Prefix keys it holds: all of them, or at least those of this request's prompt. */
  readonly keys: { has(key: string): boolean };
}

/** The attribute of `c`, when it carries a well-formed one. */
export function prefixAffinityOf(c: Candidate): PrefixAffinityAttribute | undefined {
  const a = c.attributes?.[PREFIX_AFFINITY] as Partial<PrefixAffinityAttribute> | undefined;
  if (a === undefined || !(Number.isInteger(a.blockSize) && a.blockSize! > 0) || typeof a.keys?.has !== "function") return undefined;
  return a as PrefixAffinityAttribute;
}

/** Cached prompt tokens at each candidate (0 without the attribute or the prompt). */
export function cachedPrefixTokens(prompt: readonly number[] | undefined, candidates: readonly Candidate[], salt?: string): number[] {
  if (prompt === undefined || prompt.length === 0) return candidates.map(() => 0);
  const keysBySize = new Map<number, string[]>();
  return candidates.map((c) => {
    const a = prefixAffinityOf(c);
    if (a === undefined) return 0;
    let keys = keysBySize.get(a.blockSize);
    if (keys === undefined) {
      keys = prefixBlockHashes(prompt, a.blockSize, Infinity, salt);
      keysBySize.set(a.blockSize, keys);
    }
    return longestPrefix(keys, (k) => a.keys.has(k)) * a.blockSize;
  });
}

const parameters = z.strictObject({
  /** Extra sequences (over the least loaded candidate) at which a match counts half. */
  tolerance: z.number().positive().default(4),
});

export const prefixAffinityScorer = {
  type: PREFIX_AFFINITY,
  description: "a longer cached prefix of the prompt scores higher, discounted by extra load",
  create(raw, name, path): Scorer {
    const p = parseParameters(parameters, raw, path);
    return {
      type: PREFIX_AFFINITY,
      name,
      score: (request, candidates) => {
        const cached = cachedPrefixTokens(request.promptTokenIds, candidates, request.cacheSalt);
        const promptTokens = Math.max(1, request.promptTokenIds?.length ?? request.promptTokens);
        const load = candidates.map(sequencesOn);
        const least = Math.min(...load);
        return candidates.map((_, i) => Math.min(1, cached[i]! / promptTokens) * (p.tolerance / (p.tolerance + load[i]! - least)));
      },
    };
  },
} satisfies ScorerFactory;
