// Prefill under load: 16 concurrent, distinct 1,800-token prompts on the bundled model all complete. Prefill takes
// them one batch at a time (a token budget of one prompt), so the last waits behind fifteen others; decode's KV
// idle timeout is cut to 1.5 s so that, were a transfer opened while its prompt still waited (as it used to be),
// it would be failed as idle long before its rows came and the client would get a 504.
import OpenAI from "openai";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { isAlive, startTestCluster, type TestCluster } from "../helpers/cluster.js";

const PROMPTS = 16;
const PROMPT_TOKENS = 1800;

describe("16 concurrent 1,800-token prompts through the cluster", () => {
  let cluster: TestCluster | undefined;
  beforeAll(async () => {
    cluster = await startTestCluster({
      serviceArgs: {
        decode: ["--kv-idle-ms=1500"],
        prefill: [`--max-batch-tokens=${PROMPT_TOKENS}`, `--concurrency=${PROMPTS}`],
      },
    });
  }, 300_000);

  afterAll(async () => {
    if (cluster === undefined) return;
    const pids = cluster.info.instances.map((i) => i.pid);
    expect(await cluster.stop()).toBe(0);
    expect(pids.filter(isAlive)).toEqual([]);
  }, 120_000);

  it("all complete, none timed out waiting for prefill", async () => {
    const client = new OpenAI({ baseURL: cluster!.baseURL, apiKey: "unused", maxRetries: 0, timeout: 240_000 });
    const started = performance.now();
    const results = await Promise.allSettled(
      Array.from({ length: PROMPTS }, (_, p) => {
        // Distinct prompts (no shared prefix for the prefix cache to skip), ids within the vocabulary.
        const prompt = Array.from({ length: PROMPT_TOKENS }, (_, i) => 2 + ((i * 31 + p * 977 + ((i * p) % 13)) % 1000));
        return client.completions.create({ model: cluster!.model, prompt, max_tokens: 4, temperature: 0 });
      }),
    );
    const seconds = (performance.now() - started) / 1000;
    const failures = results.flatMap((r, i) => (r.status === "rejected" ? [`prompt ${i}: ${String(r.reason)}`] : []));
    expect(failures).toEqual([]);
    for (const r of results) {
      if (r.status !== "fulfilled") continue;
      expect(r.value.usage).toMatchObject({ prompt_tokens: PROMPT_TOKENS, completion_tokens: 4 });
    }
    // The queue really was longer than the idle timeout, or the test proves nothing.
    expect(seconds).toBeGreaterThan(1.5);
  }, 300_000);
});
