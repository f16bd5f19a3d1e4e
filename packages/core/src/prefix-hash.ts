/**
 * Prefix-cache keys of a token sequence: the one definition shared by prefill's cache (engine) and the
 * router's choice of the prefill instance holding the longest cached prefix (scheduler), so both compute
 * the same keys from the same tokens.
 *
 * Blocks of `blockSize` tokens are named by a hash chain from the start:
 *   key_0 = H(seed, tokens[0, bs]),  key_i = H(key_{i-1}, tokens[i*bs, (i+1)*bs])   (closed ranges)
 * with seed = H("moela-prefix-v1:<blockSize>") and H = SHA-256 (the first 128 bits, as hex). Each key
 * covers its block's tokens and the token after the block, so key_i names exactly tokens [0, (i+1)*bs]
 * (engine/kv-cache/prefix-cache.ts says why: the MTP block's rows of a block depend on that next token).
 *
 * A salt (a request's cache_salt, as vLLM calls it) changes the seed: seed = H(H("moela-prefix-v1:<bs>"),
 * "salt:", salt). Every key of a salted prompt then differs from the unsalted keys and from those of any
 * other salt, so prompts share cached blocks only under the same salt. Without a salt the keys are as before.
 */
import { createHash } from "node:crypto";

/** Versioned so a change of the key scheme never matches keys published by an older build. */
export const PREFIX_HASH_SCHEME = "moela-prefix-v1";

/**
 * The keys of `tokens`: one per block i with a token after it ((i + 1) * blockSize < tokens.length), at
 * most `maxBlocks`. For a prompt of L tokens that is the floor((L - 1) / blockSize) blocks a prefill can
 * reuse; for prompt + first sampled token the floor(L / blockSize) full blocks it can cache.
 */
export function prefixBlockHashes(tokens: ArrayLike<number>, blockSize: number, maxBlocks = Infinity, salt?: string): string[] {
  if (!(Number.isInteger(blockSize) && blockSize > 0)) throw new RangeError(`block size must be a positive integer, got ${blockSize}`);
  const n = Math.min(maxBlocks, Math.floor((tokens.length - 1) / blockSize));
  const out: string[] = [];
  let prev = createHash("sha256").update(`${PREFIX_HASH_SCHEME}:${blockSize}`).digest();
  if (salt !== undefined && salt !== "") prev = createHash("sha256").update(prev).update("salt:").update(salt, "utf8").digest();
  const buf = Buffer.alloc((blockSize + 1) * 4); // [bs + 1] uint32 LE: the block's tokens and the next one
  for (let i = 0; i < n; i++) {
    for (let j = 0; j <= blockSize; j++) {
      const t = tokens[i * blockSize + j]!;
      if (!(Number.isInteger(t) && t >= 0 && t <= 0xffff_ffff)) throw new RangeError(`token ${t} at ${i * blockSize + j} is not a uint32`);
      buf.writeUInt32LE(t, j * 4);
    }
    prev = createHash("sha256").update(prev).update(buf).digest();
    out.push(prev.toString("hex", 0, 16));
  }
  return out;
}

/** How many leading keys satisfy `has`: the longest cached prefix, in blocks. */
export function longestPrefix(keys: readonly string[], has: (key: string) => boolean): number {
  let n = 0;
  while (n < keys.length && has(keys[n]!)) n++;
  return n;
}
