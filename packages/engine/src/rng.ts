/**
 * A small seeded PRNG for sampling: xoshiro128** 1.1 (Blackman and Vigna), 128 bits of state,
 * seeded by expanding the user's integer seed with splitmix64 (the seeding the xoshiro authors
 * recommend, so nearby seeds such as 1, 2, 3 give unrelated streams).
 *
 * The state is four uint32 words and can be snapshotted and restored exactly, because a request
 * may migrate between decode processes mid-generation and must continue the same stream.
 */
import { randomFillSync } from "node:crypto";
import { InvalidArgumentError } from "@moela/core";

/** Anything that yields uniform doubles in [0, 1). Rng is one; speculative verification needs only this. */
export interface RandomSource {
  next(): number;
}

const TWO_POW_26 = 67_108_864;
const TWO_POW_53 = 9_007_199_254_740_992;
const MASK64 = (1n << 64n) - 1n;

function rotl32(x: number, k: number): number {
  return (x << k) | (x >>> (32 - k));
}

/** splitmix64 (Steele, Lea, Flood), used only at seeding time, hence BigInt. Returns [next state, output]. */
function splitmix64(x: bigint): [bigint, bigint] {
  const state = (x + 0x9e3779b97f4a7c15n) & MASK64;
  let z = state;
  z = ((z ^ (z >> 30n)) * 0xbf58476d1ce4e5b9n) & MASK64;
  z = ((z ^ (z >> 27n)) * 0x94d049bb133111ebn) & MASK64;
  return [state, z ^ (z >> 31n)];
}

export class Rng implements RandomSource {
  /** [4] xoshiro128** state words; never all zero (the one state that only ever yields zeros). */
  private readonly s = new Uint32Array(4);

  /**
   * @param seed any safe integer (negative seeds are taken modulo 2^64, as splitmix64 sees them);
   *   omitted: 128 bits from the OS CSPRNG.
   */
  constructor(seed?: number) {
    if (seed === undefined) {
      do randomFillSync(this.s);
      while ((this.s[0]! | this.s[1]! | this.s[2]! | this.s[3]!) === 0);
      return;
    }
    if (!Number.isSafeInteger(seed)) {
      throw new InvalidArgumentError(`seed must be an integer of at most 53 bits, got ${seed}`);
    }
    let x = BigInt.asUintN(64, BigInt(seed));
    for (let i = 0; i < 2; i++) {
      const [next, out] = splitmix64(x);
      x = next;
      this.s[2 * i] = Number(out & 0xffffffffn);
      this.s[2 * i + 1] = Number(out >> 32n);
    }
    // Two consecutive splitmix64 outputs are never both zero (its output mix is a bijection of
    // distinct counters), so the all-zero state cannot arise here.
  }

  /** Restores a generator from `state()`; the restored stream continues exactly where the snapshot was taken. */
  static fromState(words: readonly number[]): Rng {
    if (words.length !== 4) {
      throw new InvalidArgumentError(`rng state must be 4 uint32 words, got ${words.length}`);
    }
    for (let i = 0; i < 4; i++) {
      const w = words[i]!;
      if (!Number.isInteger(w) || w < 0 || w > 0xffffffff) {
        throw new InvalidArgumentError(`rng state word ${i} must be a uint32, got ${w}`);
      }
    }
    if (words.every((w) => w === 0)) {
      throw new InvalidArgumentError("rng state must not be all zero (xoshiro128** would only yield zeros)");
    }
    const rng = new Rng(0);
    rng.s.set(words);
    return rng;
  }

  /** A copy of the four state words, for migration; restore with `Rng.fromState`. */
  state(): readonly number[] {
    return Array.from(this.s);
  }

  /** The next raw 32-bit output of xoshiro128**, as an unsigned integer. */
  nextUint32(): number {
    const s = this.s;
    const s0 = s[0]!;
    const s1 = s[1]!;
    const s2 = s[2]!;
    const s3 = s[3]!;
    const result = Math.imul(rotl32(Math.imul(s1, 5), 7), 9) >>> 0;
    const t = s1 << 9;
    const n2 = s2 ^ s0;
    const n3 = s3 ^ s1;
    s[1] = s1 ^ n2;
    s[0] = s0 ^ n3;
    s[2] = n2 ^ t;
    s[3] = rotl32(n3, 11);
    return result;
  }

  /** A uniform double in [0, 1) with the full 53 bits of precision (two 32-bit outputs). */
  next(): number {
    const hi = this.nextUint32() >>> 5; // 27 bits
    const lo = this.nextUint32() >>> 6; // 26 bits
    return (hi * TWO_POW_26 + lo) / TWO_POW_53;
  }
}
