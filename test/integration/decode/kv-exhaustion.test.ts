/**
 * KV exhaustion by idle transfers, over gRPC, on a real decode instance (issue 10): an attacker that holds
 * the internal secret (a compromised or buggy peer) opens KvTransfer.Push streams whose KvBegin claims as
 * many blocks as it can and then sends nothing. What bounds it:
 *
 * - `--kv-max-transfers-per-peer`: one peer (a sender's IP address, every connection of it together) has at
 *   most that many transfers open; the next is refused RESOURCE_EXHAUSTED before it takes a block, so the
 *   attacker holds at most (bound x its largest reservation) and a sender on another host still gets through;
 * - `--kv-idle-ms`: a transfer without a frame for that long fails as lost (UNAVAILABLE), its call is
 *   answered, and its blocks go back to the pool (decode's Status, its ledger, and
 *   moela_decode_kv_reclaim*_total{reason="lost"} say so).
 *
 * Afterwards a legitimate request from the attacker's own address completes with exactly the engine's tokens.
 * The decode listens on [::]:0, so a sender dialling 127.0.0.1 and one dialling [::1] are two peers.
 */
import { afterAll, beforeAll, describe, expect, it, vi } from "vitest";
import { Code, createLogger } from "@moela/core";
import { DeepseekModel, Engine, type EmittedToken, type Sequence } from "@moela/engine";
import { grpcKvConnector, KvSender, kvTransferMeta, type KvConnector, type KvOutcome } from "@moela/kv-transfer";
import { createInProcessExperts, precisionProfile } from "@moela/moe-dispatch";
import { DecodeClient, type DecodeStatusResponse, type StreamResponse } from "@moela/proto-gen";
import { clientChannel, connect, internalSecurity, serverStreamCall, unaryCall } from "@moela/rpc";
import { parseConfig, startDecode, type RunningDecode } from "@moela/decode";
import { makeCheckpoint, removeCheckpoints } from "../../helpers/checkpoints.js";
import { GREEDY, prefillAndSend, referenceRun } from "../../helpers/kv.js";

const PROMPT = [0, 399, 332, 17, 256, 901, 44, 12, 730, 5, 66, 120, 7];
const SECRET = "s3cret-for-the-kv-exhaustion-test-0123456789";
const KV_BLOCKS = 64;
const BLOCK_SIZE = 4;
const PER_PEER = 2;
/** Low, so the test waits about a second for the reclaim; a legitimate transfer sends a frame far sooner. */
const IDLE_MS = 1_000;
/** An attacker's KvBegin claims prompt + max_tokens + 1 positions: (13 + 50 + 1) / 4 = 16 blocks. */
const ATTACK_MAX_TOKENS = 50;
const ATTACK_BLOCKS = Math.ceil((PROMPT.length + ATTACK_MAX_TOKENS + 1) / BLOCK_SIZE);
const silent = createLogger("test", process.env.MOELA_TEST_LOG_LEVEL ?? "silent");
const WAIT = { timeout: 15_000, interval: 25 };

describe("KV exhaustion by idle KvBegin streams over gRPC (a peer holding the secret)", () => {
  let decode: RunningDecode;
  let prefill: Engine;
  let port: number;
  let ops: InstanceType<typeof DecodeClient>;
  /** The attacker's and, later, a legitimate sender's connector: both dial 127.0.0.1. */
  let fromV4: KvConnector & { close(): void };
  /** A legitimate sender on another host: dials [::1]. */
  let fromV6: KvConnector & { close(): void };
  const attackSeqs: Sequence[] = [];
  let transfers = 0;

  beforeAll(async () => {
    const dir = makeCheckpoint({ preset: "tiny-v3" });
    const cfg = parseConfig(
      [
        "--model",
        dir,
        "--grpc-address",
        "[::]:0",
        "--kv-blocks",
        String(KV_BLOCKS),
        "--block-size",
        String(BLOCK_SIZE),
        "--kv-idle-ms",
        String(IDLE_MS),
        "--kv-max-transfers-per-peer",
        String(PER_PEER),
        "--stream-grace-ms",
        "2000",
        "--drain-grace-ms",
        "0",
      ],
      { MOELA_DECODE_INTERNAL_SECRET: SECRET },
    )!;
    decode = await startDecode(cfg, silent);
    port = Number(/:(\d+)$/.exec(decode.grpcAddress)![1]);
    const model = DeepseekModel.load(dir, { kvDtype: precisionProfile("exact").kvDtype });
    model.setExpertExecutor(createInProcessExperts(model, 1, "exact").executor);
    prefill = new Engine(model, { blockSize: BLOCK_SIZE, numBlocks: 512, prefillChunk: 5 });
    const security = internalSecurity({ secrets: [SECRET] });
    const channel = clientChannel(security);
    ops = connect(DecodeClient, `127.0.0.1:${port}`, {}, security);
    fromV4 = grpcKvConnector(`127.0.0.1:${port}`, { credentials: channel.credentials, channelOptions: channel.options });
    fromV6 = grpcKvConnector(`[::1]:${port}`, { credentials: channel.credentials, channelOptions: channel.options });
  });

  afterAll(async () => {
    for (const s of attackSeqs.splice(0)) prefill?.release(s);
    ops?.close();
    fromV4?.close();
    fromV6?.close();
    await decode?.close(0);
    removeCheckpoints();
  });

  const status = (): Promise<DecodeStatusResponse> => unaryCall((md, o, cb) => ops.status({}, md, o, cb), { timeoutMs: 5_000 });

  async function metric(series: string): Promise<number> {
    const text = await (await fetch(decode.metricsUrl)).text();
    const line = text.split("\n").find((l) => l.startsWith(`${series} `));
    return line === undefined ? 0 : Number(line.slice(series.length + 1));
  }

  /** The attacker's open transfers, as decode counts them (its inbox, by peer host: the dual-stack listener sees
   * "::ffff:127.0.0.1:<port>", which counts as the host 127.0.0.1 whatever the connection). */
  const openFromV4 = (): number => decode.inbox.openFrom("127.0.0.1");

  /** An idle transfer: a KvBegin claiming ATTACK_BLOCKS, then nothing. Resolves with its sender once sent. */
  async function idleBegin(tag: string, connector: KvConnector = fromV4): Promise<KvSender> {
    const seq = prefill.newSequence(`req-attack-${tag}`, PROMPT, { ...GREEDY, maxTokens: ATTACK_MAX_TOKENS });
    attackSeqs.push(seq);
    const sender = new KvSender(connector);
    await sender.begin(kvTransferMeta(prefill, seq, { transferId: `t-attack-${tag}`, requestId: seq.id, modelId: decode.modelId, logprobs: true }));
    return sender;
  }

  function collect(requestId: string): Promise<{ tokens: StreamResponse["tokens"]; error: { code?: number; message?: string } | null }> {
    return (async () => {
      const tokens: StreamResponse["tokens"] = [];
      try {
        for await (const m of serverStreamCall<StreamResponse>((md, o) => ops.stream({ requestId, startIndex: 0 }, md, o))) tokens.push(...m.tokens);
        return { tokens, error: null };
      } catch (err) {
        return { tokens, error: err as { code?: number; message?: string } };
      }
    })();
  }

  /** A legitimate request end to end through `connector`: Stream first, then prefill and transfer. */
  async function legitimate(connector: KvConnector, requestId: string): Promise<{ outcome: KvOutcome; tokens: number[]; error: unknown }> {
    const stream = collect(requestId);
    await vi.waitFor(() => expect(decode.batcher.has(requestId)).toBe(true), WAIT);
    const { outcome } = await prefillAndSend(prefill, connector, PROMPT, GREEDY, { transferId: `t-legit-${++transfers}`, requestId, modelId: decode.modelId });
    const got = await stream;
    return { outcome, tokens: got.tokens.map((t) => t.tokenId), error: got.error };
  }

  it("bounds an idle attacker per peer, frees its blocks after --kv-idle-ms, and serves legitimate requests exactly", async () => {
    const reference: number[] = (await referenceRun(prefill, PROMPT, GREEDY)).map((t: EmittedToken) => t.id);
    expect(reference).toHaveLength(GREEDY.maxTokens);
    expect(await status()).toMatchObject({ freeKvBlocks: KV_BLOCKS, pendingTransfers: 0 });
    const lostBlocksBefore = await metric('moela_decode_kv_reclaimed_blocks_total{reason="lost"}');
    const lostBefore = await metric('moela_decode_kv_reclaims_total{reason="lost"}');

    // The attacker opens PER_PEER idle transfers: each holds its blocks, nothing else happens.
    const idle = [await idleBegin("a"), await idleBegin("b")];
    await vi.waitFor(
      async () => expect(await status()).toMatchObject({ pendingTransfers: PER_PEER, freeKvBlocks: KV_BLOCKS - PER_PEER * ATTACK_BLOCKS }),
      WAIT,
    );
    expect(openFromV4()).toBe(PER_PEER);
    expect(decode.inbox.ledger.heldBlocks).toBe(PER_PEER * ATTACK_BLOCKS);

    // One more from the same host, even over a connection of its own, is refused by the per-peer bound (the pool
    // still has room for it), taking nothing.
    const channel = clientChannel(internalSecurity({ secrets: [SECRET] }));
    const secondConnection = grpcKvConnector(`127.0.0.1:${port}`, { credentials: channel.credentials, channelOptions: channel.options });
    const extra = await idleBegin("c", secondConnection);
    const refused = await extra.done;
    secondConnection.close();
    expect(refused).toEqual({
      ok: false,
      failure: {
        code: Code.RESOURCE_EXHAUSTED,
        reason: expect.stringMatching(/too many concurrent KV transfers from one peer: 2 open, at most 2 \(--kv-max-transfers-per-peer\)/),
      },
    });
    const during = await status();
    expect(during).toMatchObject({ pendingTransfers: PER_PEER, freeKvBlocks: KV_BLOCKS - PER_PEER * ATTACK_BLOCKS });
    // Not a full pool: the refused transfer's blocks were there to take.
    expect(during.freeKvBlocks).toBeGreaterThanOrEqual(ATTACK_BLOCKS);

    // Meanwhile a sender on another host is not affected: its request completes with exactly the engine's tokens.
    const other = await legitimate(fromV6, "req-legit-v6");
    expect(other.outcome.ok).toBe(true);
    expect(other.error).toBeNull();
    expect(other.tokens).toEqual(reference);

    // After --kv-idle-ms without a frame, each idle transfer fails as lost, its call is answered, its blocks come back.
    const outcomes = await Promise.all(idle.map((s) => s.done));
    for (const o of outcomes) {
      expect(o).toEqual({
        ok: false,
        failure: { code: Code.UNAVAILABLE, reason: expect.stringMatching(new RegExp(`no frame for ${IDLE_MS} ms \\(the sender went silent\\)`)) },
      });
    }
    await vi.waitFor(async () => expect(await status()).toMatchObject({ pendingTransfers: 0, freeKvBlocks: KV_BLOCKS }), WAIT);
    expect(openFromV4()).toBe(0);
    expect(decode.inbox.ledger.heldBlocks).toBe(0);
    expect(decode.engine.cache.freeBlocks).toBe(KV_BLOCKS);
    expect((await metric('moela_decode_kv_reclaimed_blocks_total{reason="lost"}')) - lostBlocksBefore).toBe(PER_PEER * ATTACK_BLOCKS);
    expect((await metric('moela_decode_kv_reclaims_total{reason="lost"}')) - lostBefore).toBe(PER_PEER);

    // A legitimate request from the attacker's own host now completes exactly, and gives every block back.
    const same = await legitimate(fromV4, "req-legit-v4");
    expect(same.outcome.ok).toBe(true);
    expect(same.error).toBeNull();
    expect(same.tokens).toEqual(reference);
    await vi.waitFor(async () => expect(await status()).toMatchObject({ pendingTransfers: 0, runningSequences: 0, freeKvBlocks: KV_BLOCKS }), WAIT);
  });

  it("an attacker that keeps reopening idle transfers never holds more than the bound at once", async () => {
    let maxOpen = 0;
    let maxHeld = 0;
    const watch = setInterval(() => {
      maxOpen = Math.max(maxOpen, openFromV4());
      maxHeld = Math.max(maxHeld, decode.engine.cache.usedBlocks);
    }, 5);
    try {
      // Three rounds of PER_PEER + 1 begins each, every round after the previous one was reclaimed.
      for (let round = 0; round < 3; round++) {
        const opened = [await idleBegin(`r${round}-0`), await idleBegin(`r${round}-1`), await idleBegin(`r${round}-2`)];
        const results = await Promise.all(opened.map((s) => s.done));
        expect(results.filter((o) => !o.ok && o.failure.code === Code.RESOURCE_EXHAUSTED)).toHaveLength(1);
        expect(results.filter((o) => !o.ok && o.failure.code === Code.UNAVAILABLE)).toHaveLength(PER_PEER);
        await vi.waitFor(async () => expect(await status()).toMatchObject({ pendingTransfers: 0, freeKvBlocks: KV_BLOCKS }), WAIT);
      }
    } finally {
      clearInterval(watch);
    }
    expect(maxOpen).toBe(PER_PEER);
    expect(maxHeld).toBeLessThanOrEqual(PER_PEER * ATTACK_BLOCKS);
    expect(maxHeld).toBeGreaterThan(0);
  });
});
