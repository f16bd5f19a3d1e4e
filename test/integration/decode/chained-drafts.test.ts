/**
 * The decode service drafting three chained tokens per step (--speculative on --speculative-tokens 3) over real gRPC
 * with two real expert-host servers: the MTP layer's routed experts of every chained pass go to the hosts too, the
 * greedy tokens are the single-process engine's, and /metrics counts the drafts by position.
 */
import { afterAll, beforeAll, describe, expect, it, vi } from "vitest";
import { createLogger } from "@moela/core";
import type { EmittedToken, GenerationParams } from "@moela/engine";
import { grpcKvConnector, type KvConnector } from "@moela/kv-transfer";
import { DecodeClient, type StreamResponse } from "@moela/proto-gen";
import { connect, serverStreamCall } from "@moela/rpc";
import { startDecodeRig, type DecodeRig } from "../../helpers/decode-rig.js";
import { GREEDY, prefillAndSend, referenceRun } from "../../helpers/kv.js";
import { metricSum, scrapeMetrics } from "../../helpers/cluster.js";

const PROMPT = [0, 399, 332, 17, 256, 901, 44, 12, 730, 5, 66, 120, 7];
const silent = createLogger("test", process.env.MOELA_TEST_LOG_LEVEL ?? "silent");
const PARAMS: GenerationParams = { ...GREEDY, maxTokens: 24 };

describe("decode with chained drafts over gRPC and two expert-hosts", () => {
  let rig: DecodeRig | undefined;
  let connector: KvConnector & { close(): void };
  let client: InstanceType<typeof DecodeClient>;

  beforeAll(async () => {
    rig = await startDecodeRig(silent, { precision: "exact", decodeArgs: ["--speculative", "on", "--speculative-tokens", "3"] });
    connector = grpcKvConnector(rig.decode.grpcAddress);
    client = connect(DecodeClient, rig.decode.grpcAddress);
  });

  afterAll(async () => {
    client?.close();
    connector?.close();
    await rig?.close();
  });

  it("gives the single-process engine's greedy tokens and logprobs, and counts its drafts by position", async () => {
    const { decode, prefill } = rig!;
    expect(decode.engine.speculativeTokens).toBe(3);
    const reference: EmittedToken[] = await referenceRun(prefill, PROMPT, PARAMS);
    const { outcome } = await prefillAndSend(prefill, connector, PROMPT, PARAMS, { transferId: "t-chain", requestId: "req-chain", modelId: decode.modelId });
    expect(outcome.ok).toBe(true);
    const messages: StreamResponse[] = [];
    for await (const m of serverStreamCall<StreamResponse>((md, o) => client.stream({ requestId: "req-chain", startIndex: 0 }, md, o))) messages.push(m);
    const tokens = messages.flatMap((m) => m.tokens);
    expect(tokens.map((t) => t.tokenId)).toEqual(reference.map((t) => t.id));
    expect(tokens.map((t) => t.logprobs!.logprob)).toEqual(reference.map((t) => Math.fround(t.logprob)));
    // The first step verifies the prefill's single draft; every later one (but the last few, cut by max_tokens) three.
    const draftedAt = decode.engine.draftedAt;
    expect(draftedAt[0]).toBeGreaterThan(3);
    expect(draftedAt[2]).toBeGreaterThan(0);
    expect(draftedAt[1]).toBeLessThanOrEqual(draftedAt[0]!);
    expect(draftedAt[3]).toBe(0);
    await vi.waitFor(async () => {
      const metrics = await scrapeMetrics(decode.metricsUrl);
      for (let p = 0; p < 4; p++) {
        const at = (labels: string) => labels.includes(`position="${p}"`);
        expect(metricSum(metrics, "moela_decode_mtp_drafted_tokens_total", at)).toBe(draftedAt[p]);
        expect(metricSum(metrics, "moela_decode_mtp_accepted_tokens_total", at)).toBe(decode.engine.acceptedAt[p]);
      }
    });
  });
});
