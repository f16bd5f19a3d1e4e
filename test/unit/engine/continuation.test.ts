/**
 * The property the router's migration rests on: a greedy sequence continued from prompt + its first k
 * generated tokens (prefilled afresh, as a migrated request is on another decode instance) produces
 * exactly the tokens the uninterrupted run produced after those k. Checked on the bundled model the
 * local cluster serves, with the routed experts split over two in-process hosts as in the cluster.
 *
 * Under "exact" the logprobs agree too (to float32 rounding). Under "paper" the KV is stored in BF16, and
 * the rows of the k generated tokens are computed by prefill's decompressed attention instead of decode's
 * absorbed one, so they can round differently: logprobs then differ slightly and a near-tie could in
 * principle flip a greedy choice (not seen on these prompts).
 */
import { describe, expect, it } from "vitest";
import { DeepseekModel, Engine, type EmittedToken, type GenerationParams } from "@moela/engine";
import { createInProcessExperts, precisionProfile } from "@moela/moe-dispatch";

const MODEL = new URL("../../../models/tiny-v3", import.meta.url).pathname;
const MAX_TOKENS = 12;
const GREEDY: GenerationParams = { temperature: 0, topP: 1, topK: -1, maxTokens: MAX_TOKENS, ignoreEos: true, topLogprobs: 1 };

/** The e2e failure test's prompts: distinct, of distinct lengths, no EOS. */
function prompt(i: number): number[] {
  return Array.from({ length: 3 + (i % 5) }, (_, j) => 2 + ((i * 131 + j * 37 + 11) % 1000));
}

async function run(engine: Engine, p: readonly number[], params: GenerationParams): Promise<EmittedToken[]> {
  const out: EmittedToken[] = [];
  for await (const t of engine.generate(engine.newSequence("s", p, params))) out.push(t);
  return out;
}

describe.each([
  ["exact", 1e-5],
  ["paper", 0.05],
] as const)("greedy continuation from prompt + generated tokens, %s profile", (precision, logprobTol) => {
  const model = DeepseekModel.load(MODEL, { kvDtype: precisionProfile(precision).kvDtype });
  model.setExpertExecutor(createInProcessExperts(model, 2, precision).executor);
  const engine = new Engine(model, { blockSize: 16, numBlocks: 128 });

  it.each([0, 1, 2, 3])("prompt %i: cut after k tokens and continued, it gives the same tokens", async (i) => {
    const p = prompt(i);
    const whole = await run(engine, p, GREEDY);
    expect(whole).toHaveLength(MAX_TOKENS);
    for (const k of [1, 4, MAX_TOKENS - 1]) {
      const rest = await run(engine, [...p, ...whole.slice(0, k).map((t) => t.id)], { ...GREEDY, maxTokens: MAX_TOKENS - k });
      expect(
        rest.map((t) => t.id),
        `cut after ${k}`,
      ).toEqual(whole.slice(k).map((t) => t.id));
      const diff = Math.max(...rest.map((t, j) => Math.abs(t.logprob - whole[k + j]!.logprob)));
      expect(diff, `largest logprob difference after ${k}`).toBeLessThanOrEqual(logprobTol);
    }
    expect(engine.cache.usedBlocks).toBe(0);
  });
});
