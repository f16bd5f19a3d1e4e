/**
 * One greedy stream through the router's completions API, for the benchmarks that time tokens as a client sees
 * them (cluster-schedule.ts, cluster-ab.ts): each token's arrival time, on the caller's clock, into `arrivals`.
 * Tokens are counted from the logprobs each chunk carries, as scripts/bench/cluster.ts counts them.
 *
 * On node:http rather than @moela/loadgen's OpenAI client (fetch, with usage in every chunk): these benchmarks share
 * two cores with the cluster they measure, and with that client a stream's tokens came 13% further apart (5.35
 * against 6.05 ms at one stream, two alternating pairs, 2026-12-07).
 */
import { request as httpRequest } from "node:http";
import { SseParser } from "@moela/loadgen";

export interface StreamRequest {
  /** The router's OpenAI base URL (cluster.json's openai_base_url). */
  readonly base: string;
  readonly model: string;
  /** Picks the 8-token prompt, so that streams differ. */
  readonly seed: number;
  readonly tokens: number;
  /** The clock each arrival is read from. */
  readonly now: () => number;
}

/** Resolves with `arrivals` once the stream ends; rejects on an HTTP error or an event that is not JSON. */
export function streamArrivals(r: StreamRequest, arrivals: number[]): Promise<number[]> {
  const prompt = Array.from({ length: 8 }, (_, j) => 2 + ((r.seed * 7919 + j * 104729) % 1000));
  const body = JSON.stringify({ model: r.model, prompt, max_tokens: r.tokens, temperature: 0, stream: true, ignore_eos: true, logprobs: 0 });
  return new Promise((resolvePromise, reject) => {
    const req = httpRequest(`${r.base}/completions`, { method: "POST", headers: { "content-type": "application/json" } }, (res) => {
      if (res.statusCode !== 200) {
        res.resume();
        reject(new Error(`the router answered HTTP ${res.statusCode}`));
        return;
      }
      const sse = new SseParser();
      const onEvents = (events: string[]): void => {
        const now = r.now();
        for (const data of events) {
          if (data === "[DONE]") continue;
          const n = (JSON.parse(data) as { choices?: Array<{ logprobs?: { tokens?: unknown[] } }> }).choices?.[0]?.logprobs?.tokens?.length ?? 0;
          for (let i = 0; i < n; i++) arrivals.push(now);
        }
      };
      res.setEncoding("utf8");
      res.on("data", (chunk: string) => {
        try {
          onEvents(sse.push(chunk));
        } catch (err) {
          req.destroy();
          reject(new Error(`the router sent an event that is not JSON: ${err instanceof Error ? err.message : String(err)}`));
        }
      });
      res.on("end", () => {
        onEvents(sse.end());
        resolvePromise(arrivals);
      });
      res.on("error", reject);
    });
    req.on("error", reject);
    req.end(body);
  });
}
