// A small greedy workload over a model (5 sequences of 3..7 prompt tokens, 6 tokens each): the tokens and
// logprobs every sequence gets, for tests that compare two ways of running the same model.
import { Engine, type DeepseekModel } from "@moela/engine";

export async function greedyRun(model: DeepseekModel, microBatches = 1): Promise<{ tokens: number[][]; logprobs: number[][] }> {
  const engine = new Engine(model, { speculation: "off", blockSize: 4, numBlocks: 256, microBatches });
  const seqs = Array.from({ length: 5 }, (_, b) =>
    engine.newSequence(
      `s${b}`,
      Array.from({ length: 3 + b }, (_, i) => (17 + 97 * i + 31 * b) % 1000),
      { temperature: 0, topP: 1, topK: -1, maxTokens: 6, ignoreEos: true },
    ),
  );
  await engine.prefill(seqs);
  const tokens: number[][] = seqs.map(() => []);
  const logprobs: number[][] = seqs.map(() => []);
  while (seqs.some((s) => !s.finished)) {
    for (const r of await engine.step(seqs.filter((s) => !s.finished))) {
      const i = seqs.indexOf(r.seq);
      for (const t of r.tokens) {
        tokens[i]!.push(t.id);
        logprobs[i]!.push(t.logprob);
      }
    }
  }
  return { tokens, logprobs };
}
