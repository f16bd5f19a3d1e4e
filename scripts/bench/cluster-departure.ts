/**
 * How far the paper profile departs from exact (scripts/bench/cluster.ts, --departure-steps), in this process.
 */
import { Engine, PagedLatentCache, type DeepseekModel } from "@moela/engine";

export interface Departure {
  steps: number;
  top1Agreement: number;
  maxLogitDiff: number;
  meanLogitDiff: number;
  /** Root-mean-square of the exact logits, the scale the differences compare with. */
  rmsLogit: number;
  maxLogprobDiff: number;
  exactSelfConsistency: number;
  freeRunFirstDivergence: Array<number | null>;
}

/** [rows, V] logits of every position of `tokens` (one decompressed forward), copied out. */
async function allLogits(model: DeepseekModel, tokens: number[]): Promise<Float32Array> {
  const cfg = model.config;
  const cache = new PagedLatentCache({
    numLayers: model.cacheLayers,
    latentDim: cfg.latentDim,
    blockSize: 16,
    numBlocks: Math.ceil((tokens.length + 2) / 16) + 1,
  });
  const table: number[] = [];
  cache.ensureCapacity(table, tokens.length + 1);
  const r = await model.forward(cache, [{ blockTable: table, start: 0, tokens, logits: "all" }], { attention: "decompressed" });
  return Float32Array.from(r.logits.subarray(0, tokens.length * cfg.vocabSize));
}

function argmaxRow(x: Float32Array, off: number, n: number): number {
  let best = off;
  for (let i = off + 1; i < off + n; i++) if (x[i]! > x[best]!) best = i;
  return best - off;
}

function logSumExp(x: Float32Array, off: number, n: number): number {
  let m = -Infinity;
  for (let i = off; i < off + n; i++) m = Math.max(m, x[i]!);
  let s = 0;
  for (let i = off; i < off + n; i++) s += Math.exp(x[i]! - m);
  return m + Math.log(s);
}

async function greedy(model: DeepseekModel, prompt: number[], n: number): Promise<number[]> {
  const engine = new Engine(model, { speculative: false, blockSize: 16, numBlocks: Math.ceil((prompt.length + n + 4) / 16) + 2 });
  const seq = engine.newSequence("g", prompt, { temperature: 0, topP: 1, topK: -1, maxTokens: n, ignoreEos: true });
  const out: number[] = [];
  for await (const t of engine.generate(seq)) out.push(t.id);
  engine.release(seq);
  return out;
}

export interface DepartureOptions {
  /** Greedy steps in all, over 4 prompts. */
  readonly steps: number;
  /** Prompt `i` of `len` token ids. */
  readonly promptIds: (i: number, len: number) => number[];
  readonly log: (line: string) => void;
}

/**
 * How far `paper` departs from `exact`: teacher-forced top-1 agreement over the exact greedy path, the largest and
 * mean logit differences, and where free-running greedy first diverges.
 */
export async function departure(exact: DeepseekModel, paper: DeepseekModel, o: DepartureOptions): Promise<Departure> {
  const prompts = 4;
  const per = Math.ceil(o.steps / prompts);
  const V = exact.config.vocabSize;
  let steps = 0;
  let agree = 0;
  let selfAgree = 0;
  let maxLogit = 0;
  let maxLogprob = 0;
  let sumLogit = 0;
  let sumSq = 0;
  const firstDiv: Array<number | null> = [];
  for (let p = 0; p < prompts; p++) {
    const prompt = o.promptIds(500 + p, 8 + 3 * p);
    o.log(`  departure: prompt ${p + 1}/${prompts}, ${per} greedy steps (exact, then paper) ...`);
    const exactTokens = await greedy(exact, prompt, per);
    const paperTokens = await greedy(paper, prompt, per);
    const div = exactTokens.findIndex((t, i) => paperTokens[i] !== t);
    firstDiv.push(div < 0 ? null : div);
    // Teacher forcing: both profiles read the exact greedy path; compare their next-token logits.
    const seq = [...prompt, ...exactTokens.slice(0, -1)];
    const [le, lp] = [await allLogits(exact, seq), await allLogits(paper, seq)];
    for (let i = 0; i < per; i++) {
      const row = (prompt.length - 1 + i) * V;
      const ae = argmaxRow(le, row, V);
      const ap = argmaxRow(lp, row, V);
      steps++;
      if (ae === ap) agree++;
      if (ae === exactTokens[i]) selfAgree++;
      const lse = [logSumExp(le, row, V), logSumExp(lp, row, V)];
      for (let v = 0; v < V; v++) {
        const d = Math.abs(le[row + v]! - lp[row + v]!);
        if (d > maxLogit) maxLogit = d;
        sumLogit += d;
        sumSq += le[row + v]! * le[row + v]!;
        const dl = Math.abs(le[row + v]! - lse[0]! - (lp[row + v]! - lse[1]!));
        if (dl > maxLogprob) maxLogprob = dl;
      }
    }
  }
  return {
    steps,
    top1Agreement: agree / steps,
    maxLogitDiff: maxLogit,
    meanLogitDiff: sumLogit / (steps * V),
    rmsLogit: Math.sqrt(sumSq / (steps * V)),
    maxLogprobDiff: maxLogprob,
    exactSelfConsistency: selfAgree / steps,
    freeRunFirstDivergence: firstDiv,
  };
}
