/**
 * The baseline a trained model has to beat: an add-k smoothed bigram model over token ids,
 *   P(b | a) = (c(a, b) + k) / (c(a) + k V),
 * counted on the train split and scored on held-out ids. Sequences are documents written as
 * <bos> text <eos>; every token after the first of a sequence is predicted from the one before it (the model
 * never predicts a bos, and never from an eos across a document boundary). k is chosen on validation.
 */
import { InvalidArgumentError } from "@moela/core";

export type TokenSequences = readonly ArrayLike<number>[];

export class BigramModel {
  readonly vocabSize: number;
  /** c(a, b), keyed a * vocabSize + b. */
  private readonly pairs = new Map<number, number>();
  /** c(a): transitions out of a. Shape [vocabSize]. */
  private readonly from: Float64Array;

  constructor(vocabSize: number, train: TokenSequences) {
    if (!Number.isInteger(vocabSize) || vocabSize < 1) throw new InvalidArgumentError("vocabSize must be a positive integer");
    this.vocabSize = vocabSize;
    this.from = new Float64Array(vocabSize);
    for (const seq of train) {
      for (let i = 1; i < seq.length; i++) {
        const a = this.checkId(seq[i - 1] as number);
        const b = this.checkId(seq[i] as number);
        const key = a * vocabSize + b;
        this.pairs.set(key, (this.pairs.get(key) ?? 0) + 1);
        this.from[a] = (this.from[a] as number) + 1;
      }
    }
  }

  private checkId(id: number): number {
    if (!Number.isInteger(id) || id < 0 || id >= this.vocabSize) {
      throw new InvalidArgumentError(`token id ${id} is outside [0, ${this.vocabSize})`);
    }
    return id;
  }

  /** Natural-log probability of b after a with add-k smoothing. */
  logProb(a: number, b: number, k: number): number {
    const c = this.pairs.get(a * this.vocabSize + b) ?? 0;
    return Math.log((c + k) / ((this.from[a] as number) + k * this.vocabSize));
  }

  /** exp(mean negative log-likelihood) over every predicted token of `sequences`. */
  perplexity(sequences: TokenSequences, k: number): { perplexity: number; predicted: number } {
    if (!(k > 0)) throw new InvalidArgumentError("k must be > 0");
    let nll = 0;
    let predicted = 0;
    for (const seq of sequences) {
      for (let i = 1; i < seq.length; i++) {
        nll -= this.logProb(this.checkId(seq[i - 1] as number), this.checkId(seq[i] as number), k);
        predicted++;
      }
    }
    if (predicted === 0) throw new InvalidArgumentError("no tokens to score");
    return { perplexity: Math.exp(nll / predicted), predicted };
  }
}

export const DEFAULT_K_GRID = [1, 0.3, 0.1, 0.03, 0.01, 0.003, 0.001] as const;

export interface BigramBaseline {
  /** The k of the grid with the lowest validation perplexity. */
  k: number;
  validationPerplexity: number;
  testPerplexity: number;
  /** Tokens scored on test. */
  testPredicted: number;
}

/** Fits on train, picks k on validation, reports test perplexity. */
export function bigramBaseline(
  vocabSize: number,
  splits: { train: TokenSequences; validation: TokenSequences; test: TokenSequences },
  kGrid: readonly number[] = DEFAULT_K_GRID,
): BigramBaseline {
  const model = new BigramModel(vocabSize, splits.train);
  let best: { k: number; perplexity: number } | undefined;
  for (const k of kGrid) {
    const { perplexity } = model.perplexity(splits.validation, k);
    if (best === undefined || perplexity < best.perplexity) best = { k, perplexity };
  }
  if (best === undefined) throw new InvalidArgumentError("kGrid is empty");
  const test = model.perplexity(splits.test, best.k);
  return { k: best.k, validationPerplexity: best.perplexity, testPerplexity: test.perplexity, testPredicted: test.predicted };
}
