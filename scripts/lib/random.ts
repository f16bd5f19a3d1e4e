/** Seeded pseudo-random numbers that the scripts and the tests share. */

/** mulberry32: a tiny 32-bit PRNG, uniform in [0, 1); integer ops only, so the same numbers on every platform. */
export function mulberry32(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}
