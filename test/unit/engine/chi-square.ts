/**
 * Pearson's chi-square goodness-of-fit test for the sampler and speculative tests, with the
 * critical value computed from the chi-square distribution (regularised incomplete gamma,
 * Numerical Recipes 6.2) rather than copied from a table.
 */

/** ln Γ(x) for x > 0 (Lanczos, g = 7, n = 9; ~1e-15 relative). */
export function lnGamma(x: number): number {
  const c = [
    0.99999999999980993, 676.5203681218851, -1259.1392167224028, 771.32342877765313, -176.61502916214059, 12.507343278686905, -0.13857109526572012,
    9.9843695780195716e-6, 1.5056327351493116e-7,
  ];
  if (x < 0.5) return Math.log(Math.PI / Math.sin(Math.PI * x)) - lnGamma(1 - x);
  const z = x - 1;
  let a = c[0]!;
  const t = z + 7.5;
  for (let i = 1; i < 9; i++) a += c[i]! / (z + i);
  return 0.5 * Math.log(2 * Math.PI) + (z + 0.5) * Math.log(t) - t + Math.log(a);
}

/** Regularised lower incomplete gamma P(a, x). */
export function gammaP(a: number, x: number): number {
  if (x <= 0) return 0;
  const lnPrefix = -x + a * Math.log(x) - lnGamma(a);
  if (x < a + 1) {
    // Series.
    let term = 1 / a;
    let sum = term;
    for (let n = 1; n < 10_000; n++) {
      term *= x / (a + n);
      sum += term;
      if (Math.abs(term) < Math.abs(sum) * 1e-16) break;
    }
    return sum * Math.exp(lnPrefix);
  }
  // Continued fraction for Q(a, x) (modified Lentz).
  const tiny = 1e-300;
  let b = x + 1 - a;
  let c = 1 / tiny;
  let d = 1 / b;
  let h = d;
  for (let i = 1; i < 10_000; i++) {
    const an = -i * (i - a);
    b += 2;
    d = an * d + b;
    if (Math.abs(d) < tiny) d = tiny;
    c = b + an / c;
    if (Math.abs(c) < tiny) c = tiny;
    d = 1 / d;
    const delta = d * c;
    h *= delta;
    if (Math.abs(delta - 1) < 1e-16) break;
  }
  return 1 - Math.exp(lnPrefix) * h;
}

export function chiSquareCdf(x: number, df: number): number {
  return gammaP(df / 2, x / 2);
}

/** The x with chiSquareCdf(x, df) = prob, by bisection (the CDF is monotone). */
export function chiSquareQuantile(prob: number, df: number): number {
  let lo = 0;
  let hi = Math.max(1, df);
  while (chiSquareCdf(hi, df) < prob) hi *= 2;
  for (let i = 0; i < 200; i++) {
    const mid = (lo + hi) / 2;
    if (chiSquareCdf(mid, df) < prob) lo = mid;
    else hi = mid;
  }
  return (lo + hi) / 2;
}

/** Significance level of every statistical test here: a correct sampler fails it once in 10,000 seeds. */
export const ALPHA = 1e-4;

export interface ChiSquareResult {
  statistic: number;
  df: number;
  critical: number;
  /** Samples that landed on outcomes of probability exactly 0 (must be 0 for a correct sampler). */
  impossible: number;
}

/**
 * Tests counts[i] (N draws in total) against probabilities expected[i]. Outcomes of probability 0
 * are excluded from the statistic and reported as `impossible`; outcomes whose expected count is
 * under 5 are pooled into one bin so the chi-square approximation holds.
 */
export function chiSquareTest(counts: ArrayLike<number>, expected: ArrayLike<number>): ChiSquareResult {
  let n = 0;
  for (let i = 0; i < counts.length; i++) n += counts[i]!;
  let impossible = 0;
  const bins: Array<[observed: number, expected: number]> = [];
  let pooledObserved = 0;
  let pooledExpected = 0;
  for (let i = 0; i < expected.length; i++) {
    const e = expected[i]! * n;
    const o = counts[i] ?? 0;
    if (expected[i] === 0) impossible += o;
    else if (e < 5) {
      pooledObserved += o;
      pooledExpected += e;
    } else bins.push([o, e]);
  }
  if (pooledExpected > 0) {
    if (pooledExpected >= 5 || bins.length === 0) bins.push([pooledObserved, pooledExpected]);
    else {
      // Too little to stand alone: fold the pooled rare outcomes into the smallest bin.
      let smallest = 0;
      for (let i = 1; i < bins.length; i++) if (bins[i]![1] < bins[smallest]![1]) smallest = i;
      bins[smallest]![0] += pooledObserved;
      bins[smallest]![1] += pooledExpected;
    }
  }
  let statistic = 0;
  for (const [o, e] of bins) statistic += ((o - e) * (o - e)) / e;
  const df = Math.max(1, bins.length - 1);
  return { statistic, df, critical: chiSquareQuantile(1 - ALPHA, df), impossible };
}

/** Two-sided normal critical value for ALPHA: sqrt of the df=1 chi-square quantile. */
export function normalCritical(): number {
  return Math.sqrt(chiSquareQuantile(1 - ALPHA, 1));
}
