/**
 * What the cluster benchmark reads from its client's streams: the aggregate decode rate over the window in which
 * every stream is decoding, the time per output token a client sees, and how full decode's batch was in that window.
 *
 * The window starts when the last stream gets its first token and ends with the last token of all. Streams that
 * started earlier also end earlier, so the window's last part runs with fewer streams than the batch: the batch's
 * mean over the window says how much of the aggregate rate that tail took (16 streams whose first tokens came in
 * four waves over 793 ms, decoded 15.1 at a time on average: docs/PERFORMANCE.md).
 */

export interface StreamTiming {
  /** ms timestamps of each token-carrying chunk, and how many tokens it carried. */
  chunks: Array<{ t: number; tokens: number }>;
}

/** The window every stream decodes in: from the last stream's first token to the last token of all (ms). */
function decodeWindow(streams: readonly StreamTiming[]): { from: number; to: number } {
  return {
    from: Math.max(...streams.map((s) => s.chunks[0]?.t ?? Infinity)),
    to: Math.max(...streams.map((s) => s.chunks.at(-1)?.t ?? 0)),
  };
}

/**
 * Decode tokens/s of B concurrent streams as the client sees them: tokens that arrived after every
 * stream had its first token (all B sequences in decode's batch), over that window.
 */
export function clientDecodeRate(streams: readonly StreamTiming[]): { rate: number; tokens: number } {
  const { from, to } = decodeWindow(streams);
  let tokens = 0;
  for (const s of streams) for (const c of s.chunks) if (c.t > from) tokens += c.tokens;
  return { rate: to > from ? tokens / ((to - from) / 1000) : NaN, tokens };
}

/** Mean over streams of (last token - first token) / (tokens - 1), in ms: the time per output token a client sees. */
export function meanTpotMs(streams: readonly StreamTiming[]): number {
  const per = streams.map((s) => {
    const n = s.chunks.reduce((a, c) => a + c.tokens, 0);
    return n > 1 ? (s.chunks.at(-1)!.t - s.chunks[0]!.t) / (n - 1) : NaN;
  });
  return per.reduce((a, b) => a + b, 0) / per.length;
}

/**
 * How the streams overlapped: the spread of their first tokens (ms), and the time-weighted mean of the streams still
 * decoding (between their first and last token) over clientDecodeRate's window, which is the stream count where
 * none ended before the last.
 */
export function streamOverlap(streams: readonly StreamTiming[]): { firstTokenSpreadMs: number; meanDecoding: number } {
  const firsts = streams.map((s) => s.chunks[0]?.t ?? NaN);
  const { from, to } = decodeWindow(streams);
  let streamMs = 0;
  for (const s of streams) {
    const last = s.chunks.at(-1)?.t;
    if (last !== undefined) streamMs += Math.max(0, Math.min(last, to) - from);
  }
  return { firstTokenSpreadMs: Math.max(...firsts) - Math.min(...firsts), meanDecoding: to > from ? streamMs / (to - from) : NaN };
}
