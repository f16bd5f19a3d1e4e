/**
 * The paged latent KV cache of MLA.
 *
 * Per token and layer MLA caches only the normalised compressed latent c_kv (kv_lora_rank values) and the
 * roped shared key k_pe (qk_rope_head_dim values): one row of `latentDim` = kv_lora_rank + qk_rope_head_dim
 * values (576 in V3), laid out [c_kv | k_pe]. Rows live in fixed-size blocks of `blockSize` tokens; a
 * sequence owns a block table (block ids in position order), so position p of a sequence is row
 * (table[p / blockSize] * blockSize + p % blockSize) of every layer's slab. The MTP layer (layer index
 * num_hidden_layers) has a slab of its own and shares the sequence's block table.
 *
 * Capacity is fixed at construction: `allocate` refuses (returns null) instead of growing, so a full cache
 * refuses admission cleanly. Values are stored as float32; a profile with a BF16 KV dtype rounds rows
 * through BF16 before they are written, so what is cached equals what crosses the wire.
 */
import { ResourceExhaustedError } from "@moela/core";

export interface PagedLatentCacheOptions {
  /** Number of layer slabs (main layers + MTP layers). */
  readonly numLayers: number;
  /** kv_lora_rank + qk_rope_head_dim. */
  readonly latentDim: number;
  /** Tokens per block. */
  readonly blockSize: number;
  /** Total blocks (capacity in tokens = numBlocks * blockSize). */
  readonly numBlocks: number;
}

export class PagedLatentCache {
  readonly numLayers: number;
  readonly latentDim: number;
  readonly blockSize: number;
  readonly numBlocks: number;
  /** Per layer: [numBlocks * blockSize, latentDim]. */
  private readonly slabs: Float32Array[];
  /** Stack of free block ids. */
  private readonly freeList: Int32Array;
  private freeCount: number;
  private readonly owned: Uint8Array;
  /**
   * Asked to free `need` more blocks when allocate() finds too few free (a prefix cache evicts unreferenced
   * blocks); it may free fewer, and allocate() then refuses as usual.
   */
  reclaimer: ((need: number) => void) | null = null;

  constructor(o: PagedLatentCacheOptions) {
    if (!(o.numBlocks > 0 && o.blockSize > 0 && o.latentDim > 0 && o.numLayers > 0)) {
      throw new RangeError(`invalid cache geometry ${JSON.stringify(o)}`);
    }
    this.numLayers = o.numLayers;
    this.latentDim = o.latentDim;
    this.blockSize = o.blockSize;
    this.numBlocks = o.numBlocks;
    this.slabs = Array.from({ length: o.numLayers }, () => new Float32Array(o.numBlocks * o.blockSize * o.latentDim));
    this.freeList = new Int32Array(o.numBlocks);
    // Hand out low block ids first (deterministic layouts make bugs reproducible).
    for (let i = 0; i < o.numBlocks; i++) this.freeList[i] = o.numBlocks - 1 - i;
    this.freeCount = o.numBlocks;
    this.owned = new Uint8Array(o.numBlocks);
  }

  get freeBlocks(): number {
    return this.freeCount;
  }

  get usedBlocks(): number {
    return this.numBlocks - this.freeCount;
  }

  /** Blocks needed to hold `tokens` positions. */
  blocksFor(tokens: number): number {
    return Math.ceil(tokens / this.blockSize);
  }

  /** Take `n` free blocks, or null (nothing taken) when fewer are free. */
  allocate(n: number): number[] | null {
    if (n > this.freeCount && this.reclaimer !== null) this.reclaimer(n - this.freeCount);
    if (n > this.freeCount) return null;
    const out: number[] = [];
    for (let i = 0; i < n; i++) {
      const b = this.freeList[--this.freeCount]!;
      this.owned[b] = 1;
      out.push(b);
    }
    return out;
  }

  /** Grow `table` in place so it covers `tokens` positions; throws ResourceExhaustedError when full. */
  ensureCapacity(table: number[], tokens: number): void {
    const need = this.blocksFor(tokens) - table.length;
    if (need <= 0) return;
    const got = this.allocate(need);
    if (got === null) {
      throw new ResourceExhaustedError(`KV cache full: need ${need} more blocks, ${this.freeCount} free of ${this.numBlocks}`);
    }
    table.push(...got);
  }

  /** Return blocks to the pool. Freeing a block that is not allocated is a bug and throws. */
  free(blocks: readonly number[]): void {
    for (const b of blocks) {
      if (!(b >= 0 && b < this.numBlocks) || this.owned[b] !== 1) throw new Error(`double free of KV block ${b}`);
      this.owned[b] = 0;
      this.freeList[this.freeCount++] = b;
    }
  }

  /** The slab of one layer: [numBlocks * blockSize, latentDim]. */
  slab(layer: number): Float32Array {
    const s = this.slabs[layer];
    if (s === undefined) throw new RangeError(`no KV layer ${layer}`);
    return s;
  }

  /** Row index of position `pos` of a sequence with block table `table`. */
  rowOf(table: readonly number[], pos: number): number {
    const b = table[Math.floor(pos / this.blockSize)];
    if (b === undefined) throw new RangeError(`position ${pos} beyond the ${table.length} blocks of the sequence`);
    return b * this.blockSize + (pos % this.blockSize);
  }

  /** Copy positions [0, len) of one layer of a sequence into out: [len, latentDim]. */
  gather(layer: number, table: readonly number[], len: number, out: Float32Array): void {
    const slab = this.slab(layer);
    const d = this.latentDim;
    const bs = this.blockSize;
    for (let p = 0; p < len; p += bs) {
      const n = Math.min(bs, len - p);
      const row = this.rowOf(table, p);
      out.set(slab.subarray(row * d, (row + n) * d), p * d);
    }
  }

  /** Write rows [n, latentDim] from src (at srcOff) into positions [start, start+n) of a sequence. */
  write(layer: number, table: readonly number[], start: number, n: number, src: Float32Array, srcOff = 0): void {
    const slab = this.slab(layer);
    const d = this.latentDim;
    for (let i = 0; i < n; i++) {
      const row = this.rowOf(table, start + i);
      slab.set(src.subarray(srcOff + i * d, srcOff + (i + 1) * d), row * d);
    }
  }

  /** Read positions [start, start+n) of one layer into out: [n, latentDim] (what a KV transfer sends). */
  read(layer: number, table: readonly number[], start: number, n: number, out: Float32Array, outOff = 0): void {
    const slab = this.slab(layer);
    const d = this.latentDim;
    for (let i = 0; i < n; i++) {
      const row = this.rowOf(table, start + i);
      out.set(slab.subarray(row * d, (row + 1) * d), outOff + i * d);
    }
  }
}
