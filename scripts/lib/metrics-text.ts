/**
 * A /metrics page (the Prometheus text format) read into numbers, for the benchmarks and the tests that scrape
 * running services. It takes every sample line as its name with labels, as written, and its value; checking the
 * format itself is test/unit/metrics/registry.test.ts's job.
 */

/** A sample's name with its labels as written (`x_total{role="decode"}`) -> its value. */
export type MetricSamples = Map<string, number>;

const SAMPLE = /^(\S+?(?:\{.*\})?)\s+(\S+)(?:\s+-?\d+)?$/;

/** Go's ParseFloat, as Prometheus reads values: +Inf, -Inf and NaN in any case, besides plain numbers. */
function sampleValue(text: string): number {
  if (text === "+Inf") return Infinity;
  if (text === "-Inf") return -Infinity;
  return /^nan$/i.test(text) ? NaN : Number(text);
}

export function parseMetrics(text: string): MetricSamples {
  const out: MetricSamples = new Map();
  for (const line of text.split("\n")) {
    if (line === "" || line.startsWith("#")) continue;
    const m = SAMPLE.exec(line);
    if (m) out.set(m[1]!, sampleValue(m[2]!));
  }
  return out;
}

/**
 * The sum of every sample of `name` (not its _bucket, _sum or _count series, which are names of their own) whose
 * label text (`{...}`, or "" without labels) passes `labelFilter`; undefined when there is none.
 */
export function metricSum(samples: MetricSamples, name: string, labelFilter?: (labels: string) => boolean): number | undefined {
  let sum: number | undefined;
  for (const [key, v] of samples) {
    const brace = key.indexOf("{");
    if ((brace < 0 ? key : key.slice(0, brace)) !== name) continue;
    if (labelFilter !== undefined && !labelFilter(brace < 0 ? "" : key.slice(brace))) continue;
    sum = (sum ?? 0) + v;
  }
  return sum;
}

/** GET `url` and parse it; throws naming the URL on an HTTP error. */
export async function scrapeMetrics(url: string): Promise<MetricSamples> {
  const res = await fetch(url);
  if (!res.ok) throw new Error(`GET ${url}: HTTP ${res.status}`);
  return parseMetrics(await res.text());
}
