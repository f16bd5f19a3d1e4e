/** Histogram bucket sets, named by names.ts `buckets`. Upper bounds, ascending. */
import type { BucketSet } from "./names.js";

/**
 * 1 ms .. 600 s, about three per decade: token latencies at the bottom, whole requests at the top, up to
 * the router's default request timeout (--request-timeout-s 600), so a request that runs until its
 * deadline still lands in a finite bucket and P99 of end-to-end latency is never capped below it.
 */
export const LATENCY_BUCKETS_SECONDS: readonly number[] = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60, 120, 300, 600];

/**
 * 10 us .. 1 s: how long a message waited for a process to wake up and read it. A wake-up on an idle core is tens of
 * microseconds; one that waits for a busy core, a time slice or more.
 */
export const WAKEUP_BUCKETS_SECONDS: readonly number[] = [1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4, 5e-4, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.1, 1];

/** Powers of two from 1 to 128K (DeepSeek-V3's context length). */
export const TOKEN_COUNT_BUCKETS: readonly number[] = Array.from({ length: 18 }, (_, i) => 2 ** i);

/** Sequences per batch: powers of two from 1 to 512. */
export const BATCH_SIZE_BUCKETS: readonly number[] = Array.from({ length: 10 }, (_, i) => 2 ** i);

/** Hosts per token: every count up to 8 (V3's topk_group bound is 4), then coarser. */
export const HOST_COUNT_BUCKETS: readonly number[] = [1, 2, 3, 4, 5, 6, 7, 8, 12, 16, 32, 64];

export const BUCKETS: Readonly<Record<BucketSet, readonly number[]>> = {
  latency: LATENCY_BUCKETS_SECONDS,
  wakeup: WAKEUP_BUCKETS_SECONDS,
  tokens: TOKEN_COUNT_BUCKETS,
  batch: BATCH_SIZE_BUCKETS,
  hosts: HOST_COUNT_BUCKETS,
};
