/**
 * A block-hash prefix cache of latent KV over a PagedLatentCache (vLLM's automatic prefix caching, for MLA).
 *
 * Keys. A prompt's full blocks are named by a hash chain from its start:
 *   key_0 = H(seed, tokens[0, bs]),  key_i = H(key_{i-1}, tokens[i*bs, (i+1)*bs])   (closed ranges)
 * where seed = H("moela-prefix-v1", blockSize). Each key covers the block's bs tokens AND the token after the
 * block, so key_i names exactly tokens [0, (i+1)*bs]. Why the extra token: the cache also holds the MTP
 * block's rows, and the MTP row at position p is computed from the main hidden state at p and the embedding
 * of token p + 1, so a block's MTP rows depend on the first token of the next block. Keying on it makes a
 * hit valid for every cache layer at once, and it costs no hits: prefill must compute at least the last
 * prompt position (its logits sample the first token), so a reusable block always has its next token
 * inside the prompt. (The alternative, recomputing the last cached block's MTP rows, would need that
 * block's main hidden states, i.e. recomputing the block anyway.) The one cost: the same block followed by
 * different tokens is cached under different keys (only where a prompt ends exactly on a block boundary, or
 * where prompts diverge exactly there).
 * Keys are the first 128 bits of SHA-256, as hex: collisions are not a practical concern, and the router
 * computes the same keys from the same tokens (prefixBlockHashes, defined in @moela/core for both) to find
 * the instance holding the longest prefix.
 *
 * Blocks. A cached block belongs to the cache; sequences that use it hold a reference. A sequence's own
 * blocks (not cached) are freed to the allocator when it is released; a cached block whose last reference
 * goes becomes evictable, and evictable blocks are freed least recently used first, when the allocator runs
 * out (the PagedLatentCache's reclaimer) or when the cache holds `capacity` blocks and a new one comes in.
 * A referenced block is never evicted. A sequence's blocks become evictable tail first, so a chain loses its
 * last blocks before its first (a lost middle block would strand everything after it).
 *
 * Validity. Cached rows are what prefill computed for those tokens, bit for bit the rows a fresh prefill
 * would write (every row is computed by the same loops whatever the chunking), so a hit changes no number.
 * Blocks are read-only once cached: every later write of a sequence lands at positions past its prompt,
 * which lie in blocks of its own.
 */
import { longestPrefix, prefixBlockHashes } from "@moela/core";
import type { PagedLatentCache } from "./paged-latent.js";

// The key scheme is shared with the router's prefix-affinity scoring, so it lives in @moela/core.
export { longestPrefix, prefixBlockHashes, PREFIX_HASH_SCHEME } from "@moela/core";

export interface PrefixCacheOptions {
  /** Most blocks the cache holds, referenced or not (default: every block of the paged cache). */
  readonly capacityBlocks?: number;
}

/** Counters since construction. */
export interface PrefixCacheStats {
  /** Lookups (one per prefilled sequence). */
  readonly queries: number;
  /** Prompt tokens looked up. */
  readonly queryTokens: number;
  /** Prompt tokens served from the cache. */
  readonly hitTokens: number;
  /** Blocks inserted, and blocks evicted (freed to the allocator). */
  readonly inserted: number;
  readonly evicted: number;
}

export class PrefixCache {
  readonly cache: PagedLatentCache;
  readonly blockSize: number;
  readonly capacityBlocks: number;
  /** key -> block id. */
  private readonly byKey = new Map<string, number>();
  /** [numBlocks] the key of a cached block, undefined for a block that is not cached. */
  private readonly keyOf: (string | undefined)[];
  /** [numBlocks] sequences holding a cached block. */
  private readonly refs: Int32Array;
  /** Unreferenced cached blocks, least recently used first (Map keeps insertion order). */
  private readonly evictable = new Map<number, true>();
  private stats = { queries: 0, queryTokens: 0, hitTokens: 0, inserted: 0, evicted: 0 };
  /** Called with the keys inserted and the keys evicted (publishing them). */
  onChange: ((added: readonly string[], removed: readonly string[]) => void) | null = null;

  constructor(cache: PagedLatentCache, opts: PrefixCacheOptions = {}) {
    const cap = opts.capacityBlocks ?? cache.numBlocks;
    if (!(Number.isInteger(cap) && cap >= 0)) throw new RangeError(`prefix cache capacity must be a non-negative integer of blocks, got ${cap}`);
    this.cache = cache;
    this.blockSize = cache.blockSize;
    this.capacityBlocks = cap;
    this.keyOf = new Array<string | undefined>(cache.numBlocks);
    this.refs = new Int32Array(cache.numBlocks);
  }

  /** Cached blocks (referenced or not). */
  get size(): number {
    return this.byKey.size;
  }

  /** Cached blocks no sequence uses (what eviction can free). */
  get evictableBlocks(): number {
    return this.evictable.size;
  }

  getStats(): PrefixCacheStats {
    return { ...this.stats };
  }

  /** The keys held now. */
  keys(): IterableIterator<string> {
    return this.byKey.keys();
  }

  has(key: string): boolean {
    return this.byKey.has(key);
  }

  /** References held on a block (0 for an unreferenced or uncached block). */
  refCount(block: number): number {
    return this.refs[block] ?? 0;
  }

  isCached(block: number): boolean {
    return this.keyOf[block] !== undefined;
  }

  /**
   * The longest cached prefix of `prompt`: its blocks, each now referenced once more by the caller (who puts
   * them at the start of its block table and gives them back with release()). Counts one query.
   */
  acquire(prompt: readonly number[], salt?: string): number[] {
    const keys = prefixBlockHashes(prompt, this.blockSize, Infinity, salt);
    const n = longestPrefix(keys, (k) => this.byKey.has(k));
    const blocks: number[] = [];
    for (let i = 0; i < n; i++) {
      const b = this.byKey.get(keys[i]!)!;
      if (this.refs[b] === 0) this.evictable.delete(b);
      this.refs[b] = this.refs[b]! + 1;
      blocks.push(b);
    }
    this.stats.queries++;
    this.stats.queryTokens += prompt.length;
    this.stats.hitTokens += n * this.blockSize;
    return blocks;
  }

  /**
   * Cache the full blocks of a sequence that just finished prefill: `tokens` = prompt + the first sampled
   * token (the keys need the token after each block), `table` the sequence's block table, whose first
   * `from` blocks came from acquire(). The sequence keeps a reference on each block inserted. A key already
   * cached (another sequence computed the same block meanwhile) leaves the sequence's block its own.
   * Over capacity, unreferenced blocks are evicted first; when nothing can be evicted the block is not cached.
   */
  insert(tokens: readonly number[], table: readonly number[], from: number, salt?: string): number {
    const keys = prefixBlockHashes(tokens, this.blockSize, Infinity, salt);
    const added: string[] = [];
    const removed: string[] = [];
    for (let i = from; i < keys.length; i++) {
      const key = keys[i]!;
      const b = table[i]!;
      if (this.byKey.has(key) || this.keyOf[b] !== undefined) continue;
      if (this.byKey.size >= this.capacityBlocks && this.evictOne(removed) === null) break;
      this.byKey.set(key, b);
      this.keyOf[b] = key;
      this.refs[b] = 1;
      added.push(key);
    }
    this.stats.inserted += added.length;
    if (added.length > 0 || removed.length > 0) this.onChange?.(added, removed);
    return added.length;
  }

  /**
   * Give back a sequence's block table: cached blocks lose a reference (unreferenced ones become evictable,
   * the table's tail the least recently used), the others go back to the allocator.
   */
  release(table: readonly number[]): void {
    const own: number[] = [];
    for (let i = table.length - 1; i >= 0; i--) {
      const b = table[i]!;
      if (this.keyOf[b] === undefined) {
        own.push(b);
        continue;
      }
      const r = this.refs[b]!;
      if (r <= 0) throw new Error(`prefix cache: block ${b} released more often than acquired`);
      this.refs[b] = r - 1;
      if (r === 1) this.evictable.set(b, true);
    }
    if (own.length > 0) this.cache.free(own);
  }

  /** Free up to `n` unreferenced cached blocks to the allocator, least recently used first; returns how many. */
  evict(n: number): number {
    const removed: string[] = [];
    let freed = 0;
    while (freed < n && this.evictOne(removed) !== null) freed++;
    if (removed.length > 0) this.onChange?.([], removed);
    return freed;
  }

  /** Drop every unreferenced block (referenced ones stay until released, then become evictable). */
  clear(): number {
    return this.evict(this.evictable.size);
  }

  private evictOne(removed: string[]): number | null {
    const first = this.evictable.keys().next();
    if (first.done === true) return null;
    const b = first.value;
    this.evictable.delete(b);
    const key = this.keyOf[b]!;
    this.byKey.delete(key);
    this.keyOf[b] = undefined;
    this.cache.free([b]);
    this.stats.evicted++;
    removed.push(key);
    return b;
  }
}
