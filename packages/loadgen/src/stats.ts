/**
 * Per-request metrics from timestamps, and a level's aggregate, with the definitions of vLLM's
 * benchmark_serving.py and SGLang's bench_serving (all times in ms on the runner's clock):
 *
 * - TTFT: first chunk that carries a token - send.
 * - ITL (inter-token latency): the gaps between consecutive token-carrying chunks, pooled over all
 *   requests. A chunk that brings k > 1 tokens (coalesced or speculative output) counts as k gaps of
 *   gap / k each, as SGLang does, when the server says how many tokens a chunk holds (per-chunk usage
 *   or logprobs); when it does not, each chunk counts as one token, as vLLM does (so ITL is then the
 *   inter-chunk latency, and `tokensPerChunk` in the level says by how much that differs).
 * - TPOT (time per output token): (last token chunk - first token chunk) / (output tokens - 1), per
 *   request; requests with one output token have none (as in vLLM).
 * - E2E: end of the stream - send.
 * - Output tokens: usage.completion_tokens when the server sends it, else the tokens counted in chunks.
 * - The measured window runs from the first measured send to the last measured end (warm-up excluded),
 *   and requests/s, output tokens/s and total (prompt + output) tokens/s are over that window.
 *   meanInFlight = sum of E2E / window (the concurrency actually held, as SGLang reports it).
 * - Failed requests count as failed and add nothing to latencies or tokens; they stay in the window.
 *
 * Percentiles interpolate linearly between order statistics (numpy's default, which vLLM uses).
 */
export interface Chunk {
  /** When the chunk arrived (ms). */
  readonly at: number;
  /** New tokens in it (>= 1). */
  readonly tokens: number;
}

export interface RequestRecord {
  /** Target index (0 = the baseline). */
  readonly target: number;
  /** Position in the level's measured requests. */
  readonly index: number;
  /** The compare round it ran in (runBench's `rounds`; 0 without them). */
  readonly round?: number;
  readonly sendAt: number;
  readonly endAt: number;
  /** Token-carrying chunks, in arrival order. */
  readonly chunks: readonly Chunk[];
  /** Prompt tokens: usage.prompt_tokens, else the requested prompt length. */
  readonly promptTokens: number;
  /** Output tokens: usage.completion_tokens, else the sum over chunks. */
  readonly outputTokens: number;
  /** True when every chunk's token count came from the server (per-chunk usage or logprobs). */
  readonly countsExact: boolean;
  /** Set when the request failed (HTTP error, stream error, timeout, abort). */
  readonly error?: string;
}

export interface RequestMetrics {
  readonly ttft: number | null;
  readonly tpot: number | null;
  readonly e2e: number;
  readonly itl: number[];
}

export function requestMetrics(r: RequestRecord): RequestMetrics {
  const e2e = r.endAt - r.sendAt;
  const first = r.chunks[0];
  const last = r.chunks[r.chunks.length - 1];
  if (first === undefined || last === undefined) return { ttft: null, tpot: null, e2e, itl: [] };
  const itl: number[] = [];
  for (let i = 1; i < r.chunks.length; i++) {
    const c = r.chunks[i]!;
    const gap = c.at - r.chunks[i - 1]!.at;
    const k = r.countsExact ? c.tokens : 1;
    for (let j = 0; j < k; j++) itl.push(gap / k);
  }
  const tpot = r.outputTokens > 1 ? (last.at - first.at) / (r.outputTokens - 1) : null;
  return { ttft: first.at - r.sendAt, tpot, e2e, itl };
}

/** The p-th percentile (0..100) of `values`, linear interpolation (numpy's default); NaN when empty. */
export function percentile(values: readonly number[], p: number): number {
  if (values.length === 0) return Number.NaN;
  const s = [...values].sort((a, b) => a - b);
  const rank = (p / 100) * (s.length - 1);
  const lo = Math.floor(rank);
  const hi = Math.ceil(rank);
  return s[lo]! + (s[hi]! - s[lo]!) * (rank - lo);
}

export interface Summary {
  readonly count: number;
  readonly mean: number;
  readonly p50: number;
  readonly p90: number;
  readonly p99: number;
}

/** null when there are no samples. */
export function summarize(values: readonly number[]): Summary | null {
  if (values.length === 0) return null;
  const mean = values.reduce((a, b) => a + b, 0) / values.length;
  return { count: values.length, mean, p50: percentile(values, 50), p90: percentile(values, 90), p99: percentile(values, 99) };
}

export interface LevelStats {
  readonly completed: number;
  readonly failed: number;
  /** The measured window, seconds: the sum of each round's own (first send to last end), so not the other targets' time between them. */
  readonly durationS: number;
  readonly requestsPerS: number;
  readonly outputTokensPerS: number;
  readonly totalTokensPerS: number;
  readonly promptTokens: number;
  readonly outputTokens: number;
  readonly meanInFlight: number;
  /** Output tokens per token-carrying chunk (1 when every chunk is one token). */
  readonly tokensPerChunk: number;
  /** Whether ITL was split per token (the server gave per-chunk counts on every completed request). */
  readonly itlPerToken: boolean;
  readonly ttftMs: Summary | null;
  readonly itlMs: Summary | null;
  readonly tpotMs: Summary | null;
  readonly e2eMs: Summary | null;
  /** The first failure's message, if any failed. */
  readonly firstError?: string;
}

export function levelStats(records: readonly RequestRecord[]): LevelStats {
  const ok = records.filter((r) => r.error === undefined);
  const failed = records.length - ok.length;
  const windows = new Map<number, { start: number; end: number }>();
  for (const r of records) {
    const w = windows.get(r.round ?? 0);
    if (w === undefined) windows.set(r.round ?? 0, { start: r.sendAt, end: r.endAt });
    else {
      w.start = Math.min(w.start, r.sendAt);
      w.end = Math.max(w.end, r.endAt);
    }
  }
  const durationS = [...windows.values()].reduce((n, w) => n + Math.max(0, w.end - w.start), 0) / 1000;
  const per = (n: number) => (durationS > 0 ? n / durationS : 0);
  const metrics = ok.map(requestMetrics);
  const promptTokens = ok.reduce((n, r) => n + r.promptTokens, 0);
  const outputTokens = ok.reduce((n, r) => n + r.outputTokens, 0);
  const chunks = ok.reduce((n, r) => n + r.chunks.length, 0);
  const busyS = records.reduce((n, r) => n + (r.endAt - r.sendAt), 0) / 1000;
  const firstError = records.find((r) => r.error !== undefined)?.error;
  return {
    completed: ok.length,
    failed,
    durationS,
    requestsPerS: per(ok.length),
    outputTokensPerS: per(outputTokens),
    totalTokensPerS: per(promptTokens + outputTokens),
    promptTokens,
    outputTokens,
    meanInFlight: per(busyS),
    tokensPerChunk: chunks > 0 ? outputTokens / chunks : 0,
    itlPerToken: ok.length > 0 && ok.every((r) => r.countsExact),
    ttftMs: summarize(metrics.flatMap((m) => (m.ttft === null ? [] : [m.ttft]))),
    itlMs: summarize(metrics.flatMap((m) => m.itl)),
    tpotMs: summarize(metrics.flatMap((m) => (m.tpot === null ? [] : [m.tpot]))),
    e2eMs: summarize(metrics.map((m) => m.e2e)),
    ...(firstError !== undefined ? { firstError } : {}),
  };
}
