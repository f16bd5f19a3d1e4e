/**
 * Byte-level BPE training, as Hugging Face's BpeTrainer does it: start from the 256 byte symbols, repeatedly merge
 * the most frequent adjacent pair of symbols inside a word (a pre-tokenizer piece, never across pieces), and record
 * each merge in order; the runtime applies merges by that rank.
 *
 * Pair counts are kept incrementally: a merge only rewrites the words that contain the pair (an index from pair to
 * words), and only the pairs of those words change count. The best pair comes from a max-heap with lazy deletion
 * (an entry whose count no longer matches the live count is skipped). Cost per merge ~ the words it touches, not
 * the corpus.
 *
 * Deterministic: ties on count go to the smaller (left id, right id), as the HF trainer orders them; words are
 * processed in sorted order; ids are the initial tokens, then the bytes in byte order, then one per new token in
 * merge order. Two merges that spell the same string ("ab"+"c", "a"+"bc") share the token's id; both merges stay.
 */
import { byteLevelAlphabet } from "@moela/tokenizer";
import { InvalidArgumentError } from "@moela/core";

export interface BpeTrainOptions {
  /** Size of the BPE model's vocabulary: initial tokens + 256 bytes + merged tokens. */
  vocabSize: number;
  /** Tokens given the first ids, before the bytes (DeepSeek-V3 puts bos, eos, pad there). Default none. */
  initialTokens?: readonly string[];
  /** A pair seen fewer times than this is never merged (training stops early). Default 2. */
  minFrequency?: number;
  /** Called every `progressEvery` merges and once at the end. */
  onProgress?: (merges: number, targetMerges: number) => void;
  progressEvery?: number;
}

export interface BpeModel {
  /** Token (byte-level symbols) to id. */
  vocab: Map<string, number>;
  /** Merges in the order learned (rank 0 first), each [left, right]. */
  merges: [string, string][];
}

/** Ids fit in 16 bits here, so a pair packs into one safe integer. */
const MAX_VOCAB = 1 << 16;

function pairKey(left: number, right: number): number {
  return left * MAX_VOCAB + right;
}

/** Max-heap of (count, pair key): higher count first, then smaller key. Parallel arrays, no objects per entry. */
class PairHeap {
  private counts: number[] = [];
  private keys: number[] = [];

  get size(): number {
    return this.counts.length;
  }

  private before(i: number, j: number): boolean {
    const ci = this.counts[i] as number;
    const cj = this.counts[j] as number;
    return ci > cj || (ci === cj && (this.keys[i] as number) < (this.keys[j] as number));
  }

  private swap(i: number, j: number): void {
    const c = this.counts[i] as number;
    this.counts[i] = this.counts[j] as number;
    this.counts[j] = c;
    const k = this.keys[i] as number;
    this.keys[i] = this.keys[j] as number;
    this.keys[j] = k;
  }

  push(count: number, key: number): void {
    this.counts.push(count);
    this.keys.push(key);
    let i = this.counts.length - 1;
    while (i > 0) {
      const parent = (i - 1) >> 1;
      if (!this.before(i, parent)) break;
      this.swap(i, parent);
      i = parent;
    }
  }

  pop(): { count: number; key: number } | undefined {
    const n = this.counts.length;
    if (n === 0) return undefined;
    const top = { count: this.counts[0] as number, key: this.keys[0] as number };
    this.swap(0, n - 1);
    this.counts.pop();
    this.keys.pop();
    let i = 0;
    const size = n - 1;
    for (;;) {
      const l = 2 * i + 1;
      const r = l + 1;
      let best = i;
      if (l < size && this.before(l, best)) best = l;
      if (r < size && this.before(r, best)) best = r;
      if (best === i) break;
      this.swap(i, best);
      i = best;
    }
    return top;
  }
}

/** Words as id sequences with their counts, in sorted order so that nothing depends on the map's insertion order. */
function wordsAsIds(wordCounts: ReadonlyMap<string, number>, symbolId: ReadonlyMap<string, number>): { words: Int32Array[]; counts: number[] } {
  const sortedWords = [...wordCounts.keys()].sort();
  const words: Int32Array[] = [];
  const counts: number[] = [];
  for (const w of sortedWords) {
    const count = wordCounts.get(w) as number;
    if (!(count > 0)) continue;
    const ids = new Int32Array(w.length);
    for (let i = 0; i < w.length; i++) {
      const id = symbolId.get(w[i] as string);
      if (id === undefined) {
        throw new InvalidArgumentError(`word ${JSON.stringify(w)} has a character that is no byte-level symbol`);
      }
      ids[i] = id;
    }
    words.push(ids);
    counts.push(count);
  }
  return { words, counts };
}

/** How often each adjacent pair occurs over all words (weighted by count), and which words hold it. */
function indexPairs(words: readonly Int32Array[], counts: readonly number[]): { pairCounts: Map<number, number>; pairWords: Map<number, Set<number>> } {
  const pairCounts = new Map<number, number>();
  const pairWords = new Map<number, Set<number>>();
  for (let w = 0; w < words.length; w++) {
    const ids = words[w] as Int32Array;
    const count = counts[w] as number;
    for (let i = 0; i + 1 < ids.length; i++) {
      const key = pairKey(ids[i] as number, ids[i + 1] as number);
      pairCounts.set(key, (pairCounts.get(key) ?? 0) + count);
      let set = pairWords.get(key);
      if (set === undefined) pairWords.set(key, (set = new Set()));
      set.add(w);
    }
  }
  return { pairCounts, pairWords };
}

/**
 * Learns merges over `wordCounts`: each key a pre-tokenized piece already in byte-level symbols (one symbol per
 * byte, as the ByteLevel pre-tokenizer writes it), each value how often it occurs.
 */
export function trainBpe(wordCounts: ReadonlyMap<string, number>, options: BpeTrainOptions): BpeModel {
  const initialTokens = options.initialTokens ?? [];
  const minFrequency = options.minFrequency ?? 2;
  const alphabet = byteLevelAlphabet();
  const baseSize = initialTokens.length + alphabet.length;
  if (!Number.isInteger(options.vocabSize) || options.vocabSize < baseSize || options.vocabSize > MAX_VOCAB) {
    throw new InvalidArgumentError(`vocabSize must be an integer in [${baseSize}, ${MAX_VOCAB}]`);
  }

  const tokens: string[] = [];
  const vocab = new Map<string, number>();
  for (const t of [...initialTokens, ...alphabet]) {
    if (vocab.has(t)) throw new InvalidArgumentError(`initial token ${JSON.stringify(t)} is also a byte symbol`);
    vocab.set(t, tokens.length);
    tokens.push(t);
  }
  const symbolId = new Map<string, number>(alphabet.map((s, b) => [s, initialTokens.length + b]));

  const { words, counts } = wordsAsIds(wordCounts, symbolId);
  const { pairCounts, pairWords } = indexPairs(words, counts);
  const heap = new PairHeap();
  // Pushed in key order so that the heap's contents do not depend on map iteration order either.
  for (const key of [...pairCounts.keys()].sort((a, b) => a - b)) heap.push(pairCounts.get(key) as number, key);

  const merges: [string, string][] = [];
  const targetMerges = options.vocabSize - baseSize;
  const progressEvery = options.progressEvery ?? 100;
  const delta = new Map<number, number>();
  while (tokens.length < options.vocabSize) {
    const top = heap.pop();
    if (top === undefined) break;
    const live = pairCounts.get(top.key);
    if (live !== top.count) continue; // stale entry; the live count has its own entry
    if (live < minFrequency) break;
    const left = Math.floor(top.key / MAX_VOCAB);
    const right = top.key % MAX_VOCAB;
    const mergedText = (tokens[left] as string) + (tokens[right] as string);
    let merged = vocab.get(mergedText);
    if (merged === undefined) {
      merged = tokens.length;
      vocab.set(mergedText, merged);
      tokens.push(mergedText);
    }
    merges.push([tokens[left] as string, tokens[right] as string]);

    delta.clear();
    const touched = pairWords.get(top.key) ?? new Set<number>();
    for (const w of touched) {
      const ids = words[w] as Int32Array;
      const count = counts[w] as number;
      // Greedy left-to-right, non-overlapping, as the runtime applies one merge.
      const next: number[] = [];
      let changed = false;
      for (let i = 0; i < ids.length; i++) {
        if (i + 1 < ids.length && ids[i] === left && ids[i + 1] === right) {
          next.push(merged);
          i++;
          changed = true;
        } else {
          next.push(ids[i] as number);
        }
      }
      if (!changed) continue; // the index is not pruned eagerly, so a word may no longer hold the pair
      for (let i = 0; i + 1 < ids.length; i++) {
        const key = pairKey(ids[i] as number, ids[i + 1] as number);
        delta.set(key, (delta.get(key) ?? 0) - count);
      }
      for (let i = 0; i + 1 < next.length; i++) {
        const key = pairKey(next[i] as number, next[i + 1] as number);
        delta.set(key, (delta.get(key) ?? 0) + count);
        if (next[i] === merged || next[i + 1] === merged) {
          let set = pairWords.get(key);
          if (set === undefined) pairWords.set(key, (set = new Set()));
          set.add(w);
        }
      }
      words[w] = Int32Array.from(next);
    }
    for (const key of [...delta.keys()].sort((a, b) => a - b)) {
      const d = delta.get(key) as number;
      if (d === 0) continue;
      const count = (pairCounts.get(key) ?? 0) + d;
      if (count > 0) {
        pairCounts.set(key, count);
        heap.push(count, key);
      } else {
        pairCounts.delete(key);
        pairWords.delete(key);
      }
    }
    if (merges.length % progressEvery === 0) options.onProgress?.(merges.length, targetMerges);
  }
  options.onProgress?.(merges.length, targetMerges);
  return { vocab, merges };
}
