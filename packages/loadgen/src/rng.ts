/**
 * A small seeded random number generator (mulberry32), so a bench's prompts, lengths and arrival times are
 * the same on every run and for every target. Not for cryptography.
 */
export class Rng {
  private state: number;

  constructor(seed: number) {
    // Mix the seed once so nearby seeds (0, 1, 2, ...) do not start nearby streams.
    this.state = hash32(seed);
  }

  /** A float in [0, 1). */
  next(): number {
    this.state = (this.state + 0x6d2b79f5) >>> 0;
    let t = this.state;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  }

  /** An integer in [lo, hi] (both inclusive). */
  int(lo: number, hi: number): number {
    return lo + Math.floor(this.next() * (hi - lo + 1));
  }

  /** A standard normal draw (Box-Muller; one draw per call, the twin is dropped to keep the stream simple). */
  normal(): number {
    const u = 1 - this.next(); // (0, 1]: log(u) is finite
    const v = this.next();
    return Math.sqrt(-2 * Math.log(u)) * Math.cos(2 * Math.PI * v);
  }

  /** An exponential draw with the given rate (mean 1 / rate). */
  exponential(rate: number): number {
    return -Math.log(1 - this.next()) / rate;
  }
}

/** A 32-bit integer hash of a number (any finite number; fractional parts are kept). */
export function hash32(x: number): number {
  let h = (Math.trunc(x) ^ Math.trunc((x % 1) * 2 ** 31)) >>> 0;
  h = Math.imul(h ^ (h >>> 16), 0x85ebca6b);
  h = Math.imul(h ^ (h >>> 13), 0xc2b2ae35);
  return (h ^ (h >>> 16)) >>> 0;
}

/** A seed for a sub-stream (level i, warm-up or measured, ...), derived from the bench's seed. */
export function deriveSeed(seed: number, ...parts: number[]): number {
  let h = hash32(seed);
  for (const p of parts) h = hash32(h ^ hash32(p + 0x9e3779b9));
  return h;
}
