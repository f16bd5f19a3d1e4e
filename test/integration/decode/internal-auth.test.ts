/**
 * Internal gRPC authentication on a real decode instance and two real expert-hosts over 127.0.0.1, all
 * configured with a shared secret through their env twins: a caller without the secret (or with a wrong
 * one) cannot read another request's tokens (Decode.Stream), end it (Decode.Cancel), forge its output
 * (KvTransfer.Push with its own KvBegin) or call an expert-host; it gets UNAUTHENTICATED and changes
 * nothing, while the owner holding the secret gets exactly the single-process engine's tokens. Health stays
 * open. Also the per-peer bound on concurrent KV transfers (--kv-max-transfers-per-peer), and a sender
 * holding the secret that sends non-finite latents: its transfer fails alone, the running batch does not.
 */
import { createHash } from "node:crypto";
import { afterAll, beforeAll, describe, expect, it, vi } from "vitest";
import { Code, createLogger } from "@moela/core";
import type { EmittedToken, Engine } from "@moela/engine";
import { grpcKvConnector, KvPoll, KvSender, kvTransferMeta, type KvConnector, type KvFrame } from "@moela/kv-transfer";
import { DecodeClient, ExpertHostClient, type DecodeCancelResponse, type DecodeStatusResponse, type StreamResponse } from "@moela/proto-gen";
import { checkHealth, clientChannel, connect, internalSecurity, serverStreamCall, unaryCall, type InternalSecurity } from "@moela/rpc";
import type { RunningDecode } from "@moela/decode";
import type { RunningExpertHost } from "@moela/expert-host";
import { startDecodeRig, type DecodeRig } from "../../helpers/decode-rig.js";
import { GREEDY, prefillAndSend, referenceRun } from "../../helpers/kv.js";

const PROMPT = [0, 399, 332, 17, 256, 901, 44, 12, 730, 5, 66, 120, 7];
const SECRET = "s3cret-for-the-internal-auth-test-0123456789";
const silent = createLogger("test", process.env.MOELA_TEST_LOG_LEVEL ?? "silent");

/** vi.waitFor's options here: retry every 20 ms, fail the test after 20 s. */
const EVENTUALLY = { timeout: 20_000, interval: 20 };

/** The error a call failed with (null when it succeeded). */
async function failure(p: Promise<unknown>): Promise<{ code?: number; message?: string } | null> {
  try {
    await p;
    return null;
  } catch (err) {
    return err as { code?: number; message?: string };
  }
}

describe("internal gRPC with a shared secret: decode and expert-hosts", () => {
  let rig: DecodeRig | undefined;
  let hosts: readonly RunningExpertHost[];
  let decode: RunningDecode;
  let prefill: Engine;
  const withSecret: InternalSecurity = internalSecurity({ secrets: [SECRET] });
  const wrongSecret: InternalSecurity = internalSecurity({ secrets: ["not-the-secret-but-long-enough"] });
  let owner: InstanceType<typeof DecodeClient>;
  let intruder: InstanceType<typeof DecodeClient>;
  let impostor: InstanceType<typeof DecodeClient>;
  let ownerKv: KvConnector & { close(): void };
  let intruderKv: KvConnector & { close(): void };
  let transfers = 0;

  beforeAll(async () => {
    // Decode reaches its expert-hosts only because it presents the same secret (its start-up Info checks them).
    rig = await startDecodeRig(silent, {
      precision: "exact",
      hostEnv: { MOELA_EXPERT_HOST_INTERNAL_SECRET: SECRET },
      decodeEnv: { MOELA_DECODE_INTERNAL_SECRET: SECRET },
      decodeArgs: ["--kv-max-transfers-per-peer", "1"],
    });
    ({ hosts, decode, prefill } = rig);
    owner = connect(DecodeClient, decode.grpcAddress, {}, withSecret);
    intruder = connect(DecodeClient, decode.grpcAddress);
    impostor = connect(DecodeClient, decode.grpcAddress, {}, wrongSecret);
    const channel = clientChannel(withSecret);
    ownerKv = grpcKvConnector(decode.grpcAddress, { credentials: channel.credentials, channelOptions: channel.options });
    intruderKv = grpcKvConnector(decode.grpcAddress);
  });

  afterAll(async () => {
    for (const c of [owner, intruder, impostor]) c?.close();
    ownerKv?.close();
    intruderKv?.close();
    await rig?.close();
  });

  const status = (): Promise<DecodeStatusResponse> => unaryCall((md, o, cb) => owner.status({}, md, o, cb), { timeoutMs: 5_000 });

  function collect(
    client: InstanceType<typeof DecodeClient>,
    requestId: string,
  ): Promise<{ tokens: StreamResponse["tokens"]; error: { code?: number; message?: string } | null }> {
    return (async () => {
      const tokens: StreamResponse["tokens"] = [];
      try {
        for await (const m of serverStreamCall<StreamResponse>((md, o) => client.stream({ requestId, startIndex: 0 }, md, o))) tokens.push(...m.tokens);
        return { tokens, error: null };
      } catch (err) {
        return { tokens, error: err as { code?: number; message?: string } };
      }
    })();
  }

  const asIds = (ref: EmittedToken[]) => ref.map((t) => t.id);

  it("keeps health open to callers without the secret", async () => {
    expect(await checkHealth(decode.grpcAddress, { service: "moela.v1.Decode" })).toBe("SERVING");
    expect(await checkHealth(hosts[0]!.grpcAddress)).toBe("SERVING");
  });

  it("refuses Status and an expert-host's Info without the secret, and with a wrong one, as UNAUTHENTICATED", async () => {
    const none = await failure(unaryCall((md, o, cb) => intruder.status({}, md, o, cb), { timeoutMs: 5_000 }));
    expect(none).toMatchObject({ code: Code.UNAUTHENTICATED, message: expect.stringMatching(/needs the internal secret/) });
    const wrong = await failure(unaryCall((md, o, cb) => impostor.status({}, md, o, cb), { timeoutMs: 5_000 }));
    expect(wrong).toMatchObject({ code: Code.UNAUTHENTICATED, message: expect.stringMatching(/does not match/) });
    expect((await status()).totalKvBlocks).toBe(128);
    const host = connect(ExpertHostClient, hosts[1]!.grpcAddress);
    const hostWithSecret = connect(ExpertHostClient, hosts[1]!.grpcAddress, {}, withSecret);
    try {
      expect((await failure(unaryCall((md, o, cb) => host.info({}, md, o, cb), { timeoutMs: 5_000 })))?.code).toBe(Code.UNAUTHENTICATED);
      expect(await failure(unaryCall((md, o, cb) => hostWithSecret.info({}, md, o, cb), { timeoutMs: 5_000 }))).toBeNull();
    } finally {
      host.close();
      hostWithSecret.close();
    }
  });

  it("without the secret another request's tokens cannot be read, ended or forged; its owner gets exactly the engine's tokens", async () => {
    const reference = await referenceRun(prefill, PROMPT, GREEDY);
    const victim = "req-victim";
    const mine = collect(owner, victim);
    await vi.waitFor(() => expect(decode.batcher.has(victim), "the owner's Stream to register").toBe(true), EVENTUALLY);
    const before = await status();

    // Reading: a second Stream for the same id is refused before it is registered.
    const read = await collect(intruder, victim);
    expect(read.tokens).toEqual([]);
    expect(read.error?.code).toBe(Code.UNAUTHENTICATED);
    expect((await collect(impostor, victim)).error?.code).toBe(Code.UNAUTHENTICATED);
    // Ending: Cancel is refused, the request stays.
    const cancel = await failure(unaryCall((md, o, cb) => intruder.cancel({ requestId: victim, reason: "gotcha" }, md, o, cb), { timeoutMs: 5_000 }));
    expect(cancel?.code).toBe(Code.UNAUTHENTICATED);
    expect(decode.batcher.has(victim)).toBe(true);
    // Forging: a KvTransfer.Push with its own KvBegin for the victim's id is refused before any block is taken.
    const forged = await prefillAndSend(prefill, intruderKv, [1, 2, 3, 4, 5], GREEDY, { transferId: "t-forged", requestId: victim, modelId: decode.modelId });
    expect(forged.outcome).toEqual({ ok: false, failure: { code: Code.UNAUTHENTICATED, reason: expect.stringMatching(/needs the internal secret/) } });
    expect(await status()).toMatchObject({ freeKvBlocks: before.freeKvBlocks, pendingTransfers: 0, runningSequences: 0 });

    // The owner's transfer, with the secret, completes the Stream with exactly the reference tokens.
    const real = await prefillAndSend(prefill, ownerKv, PROMPT, GREEDY, { transferId: `t-${++transfers}`, requestId: victim, modelId: decode.modelId });
    expect(real.outcome.ok).toBe(true);
    const got = await mine;
    expect(got.error).toBeNull();
    expect(got.tokens.map((t) => t.tokenId)).toEqual(asIds(reference));
    await vi.waitFor(async () => expect((await status()).freeKvBlocks, "blocks to be freed").toBe(128), EVENTUALLY);
  });

  it("batch poisoning: a transfer whose latents hold a NaN (checksum intact) fails alone with INVALID_ARGUMENT; the request running meanwhile finishes exactly", async () => {
    const params = { ...GREEDY, maxTokens: 60 };
    const reference = await referenceRun(prefill, PROMPT, params);
    const running = collect(owner, "req-batch-ok");
    await vi.waitFor(() => expect(decode.batcher.has("req-batch-ok"), "the Stream to register").toBe(true), EVENTUALLY);
    expect(
      (await prefillAndSend(prefill, ownerKv, PROMPT, params, { transferId: `t-${++transfers}`, requestId: "req-batch-ok", modelId: decode.modelId })).outcome
        .ok,
    ).toBe(true);
    await vi.waitFor(async () => expect((await status()).runningSequences, "the sequence to run").toBe(1), EVENTUALLY);
    // A sender with the secret that computed garbage: one NaN in its first layer chunk, its sha256 recomputed.
    let poisoned = 0;
    const nanRows = (f: KvFrame): KvFrame => {
      if (f.kind !== "layer" || poisoned++ > 0) return f;
      const data = new Uint8Array(f.data);
      new Float32Array(data.buffer, data.byteOffset, data.byteLength / 4)[3] = Number.NaN;
      return { ...f, data, sha256: new Uint8Array(createHash("sha256").update(data).digest()) };
    };
    const poisoning: KvConnector = {
      open(transferId, requestId) {
        const inner = ownerKv.open(transferId, requestId);
        return { outcome: inner.outcome, send: (f) => inner.send(nanRows(f)), end: () => inner.end(), cancel: (r) => inner.cancel(r) };
      },
    };
    const bad = await prefillAndSend(prefill, poisoning, [3, 4, 5, 6, 7, 8], GREEDY, {
      transferId: `t-${++transfers}`,
      requestId: "req-batch-bad",
      modelId: decode.modelId,
    });
    expect(poisoned).toBeGreaterThan(0);
    expect(bad.outcome).toEqual({
      ok: false,
      failure: { code: Code.INVALID_ARGUMENT, reason: expect.stringMatching(/latent value NaN .* KV rows must be finite/) },
    });
    expect((await status()).runningSequences).toBe(1);
    const got = await running;
    expect(got.error).toBeNull();
    expect(got.tokens.map((t) => t.tokenId)).toEqual(asIds(reference));
    await vi.waitFor(async () => expect(await status(), "every block back").toMatchObject({ freeKvBlocks: 128, pendingTransfers: 0 }), EVENTUALLY);
  });

  it("with the secret, Cancel ends a running request", async () => {
    const id = "req-cancel-with-secret";
    const stream = collect(owner, id);
    await vi.waitFor(() => expect(decode.batcher.has(id), "the Stream to register").toBe(true), EVENTUALLY);
    expect(
      (
        await prefillAndSend(
          prefill,
          ownerKv,
          PROMPT,
          { ...GREEDY, maxTokens: 400 },
          { transferId: `t-${++transfers}`, requestId: id, modelId: decode.modelId },
        )
      ).outcome.ok,
    ).toBe(true);
    await vi.waitFor(async () => expect((await status()).runningSequences, "the sequence to run").toBe(1), EVENTUALLY);
    const res = await unaryCall<DecodeCancelResponse>((md, o, cb) => owner.cancel({ requestId: id, reason: "stop string" }, md, o, cb), { timeoutMs: 5_000 });
    expect(res.found).toBe(true);
    const got = await stream;
    expect(got.error?.code).toBe(Code.CANCELLED);
    expect(got.tokens.length).toBeLessThan(400);
    expect(await status()).toMatchObject({ freeKvBlocks: 128, runningSequences: 0 });
  });

  it("refuses a second concurrent KV transfer from the same peer with RESOURCE_EXHAUSTED (--kv-max-transfers-per-peer 1), and takes one again once the first ends", async () => {
    const seqA = prefill.newSequence("req-peer-a", PROMPT, GREEDY);
    const seqB = prefill.newSequence("req-peer-b", PROMPT, GREEDY);
    const first = new KvSender(ownerKv);
    const second = new KvSender(ownerKv);
    try {
      const meta = (seq: typeof seqA, transferId: string) =>
        kvTransferMeta(prefill, seq, { transferId, requestId: seq.id, modelId: decode.modelId, logprobs: true });
      // The first transfer begins and holds its blocks (no data yet).
      await first.begin(meta(seqA, "t-peer-a"));
      await vi.waitFor(async () => expect((await status()).pendingTransfers, "the first transfer to be pending").toBe(1), EVENTUALLY);
      await second.begin(meta(seqB, "t-peer-b"));
      const refused = await second.done;
      expect(refused).toEqual({
        ok: false,
        failure: {
          code: Code.RESOURCE_EXHAUSTED,
          reason: expect.stringMatching(/too many concurrent KV transfers from one peer: 1 open, at most 1 \(--kv-max-transfers-per-peer\)/),
        },
      });
      expect(second.poll()).toBe(KvPoll.Failed);
      expect((await status()).pendingTransfers).toBe(1);
      first.abort("test over");
      await first.done;
      await vi.waitFor(
        async () => expect(await status(), "the first transfer's blocks to be freed").toMatchObject({ pendingTransfers: 0, freeKvBlocks: 128 }),
        EVENTUALLY,
      );
      // The bound counts open transfers, not past ones: the next one goes through.
      const stream = collect(owner, "req-peer-c");
      await vi.waitFor(() => expect(decode.batcher.has("req-peer-c"), "the Stream to register").toBe(true), EVENTUALLY);
      expect(
        (await prefillAndSend(prefill, ownerKv, PROMPT, GREEDY, { transferId: `t-${++transfers}`, requestId: "req-peer-c", modelId: decode.modelId })).outcome
          .ok,
      ).toBe(true);
      expect((await stream).error).toBeNull();
    } finally {
      prefill.release(seqA);
      prefill.release(seqB);
    }
  });
});
