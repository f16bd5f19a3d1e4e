import { createHash } from "node:crypto";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { Code } from "@moela/core";
import { DeepseekModel, Engine, type KvDtype, type Sequence } from "@moela/engine";
import {
  batchKvSink,
  connectInProcess,
  KV_POLL_RANK,
  KvInbox,
  KvPoll,
  KvSender,
  kvTransferMeta,
  transferBytes,
  type KvFrame,
  type KvReceiver,
  type KvTransferMeta,
} from "@moela/kv-transfer";
import { makeCheckpoint, removeCheckpoints } from "../../helpers/checkpoints.js";
import { decodeToEnd, GREEDY, MODEL_ID, prefillAndSend, referenceRun, SAMPLED } from "../../helpers/kv.js";

const PROMPT = [0, 399, 332, 17, 256, 901, 44, 12, 730, 5, 66, 120, 7];

interface Decode {
  engine: Engine;
  inbox: KvInbox;
  admitted: Sequence[];
  failures: { code: number; reason: string }[];
}

function decodeSide(model: DeepseekModel, numBlocks = 64): Decode {
  const engine = new Engine(model, { blockSize: 4, numBlocks });
  const admitted: Sequence[] = [];
  const failures: { code: number; reason: string }[] = [];
  const inbox = new KvInbox({
    engine,
    modelId: MODEL_ID,
    onAdmit: (seq) => admitted.push(seq),
    onFail: (f) => failures.push(f),
  });
  return { engine, inbox, admitted, failures };
}

let checkpoint: string;
const models = new Map<KvDtype, DeepseekModel>();

beforeAll(() => {
  checkpoint = makeCheckpoint({ preset: "tiny-v3" });
  models.set("f32", DeepseekModel.load(checkpoint, { kvDtype: "f32" }));
  models.set("bf16", DeepseekModel.load(checkpoint, { kvDtype: "bf16" }));
});
afterAll(removeCheckpoints);

describe.each([
  ["f32 (exact)", "f32" as KvDtype],
  ["bf16 (paper)", "bf16" as KvDtype],
])("a full transfer, KV in %s", (_name, kvDtype) => {
  it.each([
    ["greedy", GREEDY],
    ["seeded sampling", SAMPLED],
  ])("admits, and the restored %s sequence continues exactly like one uninterrupted engine", async (_kind, params) => {
    const model = models.get(kvDtype)!;
    const reference = await referenceRun(new Engine(model, { blockSize: 4, numBlocks: 64 }), PROMPT, params);
    // Small prefill chunks: the rows of each layer arrive in several chunks, interleaved across layers.
    const prefill = new Engine(model, { blockSize: 4, numBlocks: 64, prefillChunk: 5 });
    const decode = decodeSide(model);
    const { outcome, sender } = await prefillAndSend(prefill, connectInProcess(decode.inbox), PROMPT, params, { transferId: "t-1", requestId: "req-1" });

    expect(outcome.ok).toBe(true);
    expect(sender.poll()).toBe(KvPoll.Success);
    expect(decode.admitted).toHaveLength(1);
    const meta: KvTransferMeta = {
      ...kvTransferMeta(prefill, prefill.newSequence("x", PROMPT, params), { transferId: "", requestId: "", modelId: "", logprobs: true }),
    };
    // Main layers + the MTP block, every prompt position, in the profile's dtype.
    expect(meta.numLayers).toBe(model.config.numHiddenLayers + 1);
    expect(sender.bytesSent).toBe(transferBytes(meta));
    expect(outcome.ok && outcome.ack.bytesReceived).toBe(transferBytes(meta));

    const seq = decode.admitted[0]!;
    // Speculation continues on the decode side: the draft came over with the MTP block's KV.
    expect(seq.draft).not.toBeNull();
    const out = await decodeToEnd(decode.engine, seq);
    expect(out.map((t) => t.id)).toEqual(reference.map((t) => t.id));
    expect(out.map((t) => t.logprob)).toEqual(reference.map((t) => t.logprob));
    expect(out.map((t) => t.top)).toEqual(reference.map((t) => t.top));
    expect(decode.engine.cache.usedBlocks).toBe(0);
    expect(prefill.cache.usedBlocks).toBe(0);
  });
});

describe("batched prefill through batchKvSink", () => {
  it("routes each sequence's rows to its own transfer; both continue like single runs", async () => {
    const model = models.get("f32")!;
    const prompts = [PROMPT, PROMPT.slice(0, 6), [3, 1, 4, 1, 5, 9, 2, 6, 5]];
    const refs = [];
    for (const p of prompts) refs.push(await referenceRun(new Engine(model, { blockSize: 4, numBlocks: 64 }), p, GREEDY));
    const prefill = new Engine(model, { blockSize: 4, numBlocks: 64, prefillChunk: 4 });
    const decode = decodeSide(model);
    const seqs = prompts.map((p, i) => prefill.newSequence(`req-${i}`, p, GREEDY));
    const senders = seqs.map(() => new KvSender(connectInProcess(decode.inbox)));
    for (const [i, s] of senders.entries()) {
      await s.begin(kvTransferMeta(prefill, seqs[i]!, { transferId: `t-${i}`, requestId: `req-${i}`, modelId: MODEL_ID, logprobs: true }));
    }
    await prefill.prefill(seqs, { kvSink: batchKvSink(seqs, senders) });
    const outcomes = await Promise.all(senders.map((s, i) => s.end(seqs[i]!.snapshot())));
    expect(outcomes.map((o) => o.ok)).toEqual([true, true, true]);
    for (const s of seqs) prefill.release(s);
    // Admitted in the order their KvEnd arrived: by request id.
    for (const [i, ref] of refs.entries()) {
      const seq = decode.admitted.find((s) => s.id === `req-${i}`)!;
      expect((await decodeToEnd(decode.engine, seq)).map((t) => t.id)).toEqual(ref.map((t) => t.id));
    }
    expect(decode.engine.cache.usedBlocks).toBe(0);
  });
});

describe("state machine", () => {
  it("moves both roles forward through Bootstrapping, WaitingForInput, Transferring to Success", async () => {
    const model = models.get("f32")!;
    const prefill = new Engine(model, { blockSize: 4, numBlocks: 64, prefillChunk: 5 });
    const decode = decodeSide(model);
    let receiver!: KvReceiver;
    const receiverStates: KvPoll[] = [];
    const connector = connectInProcess(decode.inbox, {
      onReceiver: (r) => {
        receiver = r;
        receiverStates.push(r.poll());
      },
      intercept: (f) => [f],
    });
    const seq = prefill.newSequence("req-sm", PROMPT, GREEDY);
    const sender = new KvSender(connector);
    const senderStates: KvPoll[] = [sender.poll()];
    await sender.begin(kvTransferMeta(prefill, seq, { transferId: "t-sm", requestId: "req-sm", modelId: MODEL_ID, logprobs: false }));
    senderStates.push(sender.poll());
    receiverStates.push(receiver.poll());
    // Observe both roles at every layer the engine computes.
    await prefill.prefill([seq], {
      kvSink: {
        async onLayer(layer, i, start, n, rows) {
          await sender.onLayer(layer, i, start, n, rows);
          senderStates.push(sender.poll());
          receiverStates.push(receiver.poll());
        },
      },
    });
    const outcome = await sender.end(seq.snapshot());
    senderStates.push(sender.poll());
    receiverStates.push(receiver.poll());
    prefill.release(seq);

    expect(outcome.ok).toBe(true);
    const dedupe = (xs: KvPoll[]): KvPoll[] => xs.filter((x, i) => i === 0 || xs[i - 1] !== x);
    const path = [KvPoll.Bootstrapping, KvPoll.WaitingForInput, KvPoll.Transferring, KvPoll.Success];
    expect(dedupe(senderStates)).toEqual(path);
    expect(dedupe(receiverStates)).toEqual(path);
    for (const states of [senderStates, receiverStates]) {
      for (let i = 1; i < states.length; i++) expect(KV_POLL_RANK[states[i]!]).toBeGreaterThanOrEqual(KV_POLL_RANK[states[i - 1]!]);
    }
    // Terminal: nothing moves it any more.
    sender.abort();
    receiver.abort();
    expect(sender.poll()).toBe(KvPoll.Success);
    expect(receiver.poll()).toBe(KvPoll.Success);
    decode.engine.release(decode.admitted[0]!);
    expect(decode.engine.cache.usedBlocks).toBe(0);
  });
});

/** Put a NaN into a layer frame's f32 rows, with a checksum that matches (a sender that computed garbage). */
function nanRows(f: KvFrame): KvFrame {
  if (f.kind !== "layer") return f;
  const data = new Uint8Array(f.data); // a copy
  new Float32Array(data.buffer, data.byteOffset, data.byteLength / 4)[3] = Number.NaN;
  return { ...f, data, sha256: new Uint8Array(createHash("sha256").update(data).digest()) };
}

/** Flip one byte of a layer frame's data (its sha256 now lies). */
function corrupt(f: KvFrame): KvFrame {
  if (f.kind !== "layer") return f;
  const data = f.data.slice();
  data[7] = data[7]! ^ 0x40;
  return { ...f, data };
}

type Intercept = (frame: KvFrame, index: number) => readonly KvFrame[] | "hangup";

/** Hold back the first chunk of layer 0 and deliver it after the second one. */
function swapFirstTwoChunksOfLayer0(): Intercept {
  let held: KvFrame | null = null;
  return (f) => {
    if (f.kind !== "layer" || f.layer !== 0) return [f];
    if (f.tokenStart === 0) {
      held = f;
      return [];
    }
    if (held !== null) {
      const out = [f, held];
      held = null;
      return out;
    }
    return [f];
  };
}

describe("failed transfers free every reserved block and say why", () => {
  const cases: [string, Intercept, number, RegExp][] = [
    ["corrupt checksum", (f, i) => [i === 5 ? corrupt(f) : f], Code.DATA_LOSS, /checksum mismatch in chunk 4/],
    ["missing layer", (f) => (f.kind === "layer" && f.layer === 1 ? [] : [f]), Code.DATA_LOSS, /layer 1 is incomplete: tokens \[0, 0\) of 13/],
    ["out-of-order chunk", swapFirstTwoChunksOfLayer0(), Code.INVALID_ARGUMENT, /out of order: layer 0 continues at token 5, expected 0/],
    ["duplicated chunk", (f, i) => (i === 3 ? [f, f] : [f]), Code.INVALID_ARGUMENT, /out of order/],
    ["truncated stream (connection dropped)", (f, i) => (i === 9 ? "hangup" : [f]), Code.DATA_LOSS, /the stream ended before KvEnd/],
    ["truncated stream (no KvEnd)", (f) => (f.kind === "end" ? [] : [f]), Code.DATA_LOSS, /the stream ended before KvEnd/],
    ["lost middle chunk (the next one is out of order)", (f, i) => (i === 2 ? [] : [f]), Code.INVALID_ARGUMENT, /layer 1 continues at token 5, expected 0/],
    [
      "lost last chunk of a layer",
      (f) => (f.kind === "layer" && f.layer === 0 && f.tokenStart === 10 ? [] : [f]),
      Code.DATA_LOSS,
      /layer 0 is incomplete: tokens \[0, 10\) of 13/,
    ],
    ["layer before KvBegin", (f) => (f.kind === "begin" ? [] : [f]), Code.INVALID_ARGUMENT, /a layer message arrived before KvBegin/],
    ["wrong shape", (f) => (f.kind === "layer" && f.layer === 2 ? [{ ...f, shape: [f.tokenCount, 3] }] : [f]), Code.INVALID_ARGUMENT, /latent shape/],
    [
      "rows in the wrong dtype",
      (f) => (f.kind === "layer" ? [{ ...f, dtype: "bf16" as const }] : [f]),
      Code.INVALID_ARGUMENT,
      /latent dtype bf16, KvBegin announced f32/,
    ],
    [
      "non-finite latents (checksum intact)",
      (f, i) => [i === 4 ? nanRows(f) : f],
      Code.INVALID_ARGUMENT,
      /latent value NaN at token \d+, column 3 of layer \d+; KV rows must be finite/,
    ],
    ["tampered total checksum", (f) => (f.kind === "end" ? [{ ...f, sha256: new Uint8Array(32) }] : [f]), Code.DATA_LOSS, /total checksum mismatch/],
    ["another model's KV", (f) => (f.kind === "begin" ? [{ ...f, modelId: "other" }] : [f]), Code.INVALID_ARGUMENT, /KV of model "other"/],
    ["an all-zero rng state", (f) => (f.kind === "end" ? [{ ...f, rngState: [0, 0, 0, 0] }] : [f]), Code.INVALID_ARGUMENT, /rng_state/],
    [
      "a first token outside the vocabulary",
      (f) => (f.kind === "end" ? [{ ...f, firstToken: { ...f.firstToken, id: 1 << 20 } }] : [f]),
      Code.INVALID_ARGUMENT,
      /first_token_id/,
    ],
  ];

  it.each(cases)("%s", async (_name, intercept, code, reason) => {
    const model = models.get("f32")!;
    const prefill = new Engine(model, { blockSize: 4, numBlocks: 64, prefillChunk: 5 });
    const decode = decodeSide(model);
    let receiver!: KvReceiver;
    const connector = connectInProcess(decode.inbox, {
      onReceiver: (r) => (receiver = r),
      intercept,
    });
    const { outcome, sender } = await prefillAndSend(prefill, connector, PROMPT, GREEDY, { transferId: "t-bad", requestId: "req-bad" });
    expect(outcome.ok).toBe(false);
    if (outcome.ok) return;
    expect(outcome.failure.code).toBe(code);
    expect(outcome.failure.reason).toMatch(reason);
    expect(sender.poll()).toBe(KvPoll.Failed);
    expect(receiver.poll()).toBe(KvPoll.Failed);
    expect(receiver.failure).toEqual(outcome.failure);
    expect(decode.failures).toEqual([outcome.failure]);
    expect(decode.admitted).toHaveLength(0);
    expect(decode.engine.cache.usedBlocks).toBe(0);
    expect(decode.inbox.pending).toBe(0);
    expect(prefill.cache.usedBlocks).toBe(0);
  });

  it("reserves blocks for prompt + max_tokens while the transfer runs, then hands them to the sequence", async () => {
    const model = models.get("f32")!;
    const prefill = new Engine(model, { blockSize: 4, numBlocks: 64, prefillChunk: 5 });
    const decode = decodeSide(model);
    const reservedSeen: number[] = [];
    const connector = connectInProcess(decode.inbox, {
      intercept: (f) => {
        if (f.kind === "end") reservedSeen.push(decode.inbox.reservedBlocks, decode.engine.cache.usedBlocks);
        return [f];
      },
    });
    const { outcome } = await prefillAndSend(prefill, connector, PROMPT, GREEDY, { transferId: "t-r", requestId: "req-r" });
    const need = decode.engine.blocksNeeded(PROMPT.length, GREEDY.maxTokens);
    expect(reservedSeen).toEqual([need, need]);
    expect(outcome.ok && outcome.ack.kvBlocks).toBe(need);
    expect(decode.inbox.reservedBlocks).toBe(0);
    expect(decode.admitted[0]!.blockTable).toHaveLength(need);
    decode.engine.release(decode.admitted[0]!);
  });

  it("a duplicate transfer id is refused with ALREADY_EXISTS and takes nothing", async () => {
    const model = models.get("f32")!;
    const prefill = new Engine(model, { blockSize: 4, numBlocks: 64 });
    const decode = decodeSide(model);
    const first = await prefillAndSend(prefill, connectInProcess(decode.inbox), PROMPT, GREEDY, { transferId: "t-dup", requestId: "req-a" });
    expect(first.outcome.ok).toBe(true);
    const held = decode.engine.cache.usedBlocks;
    const second = await prefillAndSend(prefill, connectInProcess(decode.inbox), PROMPT, GREEDY, { transferId: "t-dup", requestId: "req-b" });
    expect(second.outcome).toEqual({
      ok: false,
      failure: { code: Code.ALREADY_EXISTS, reason: expect.stringMatching(/t-dup: this transfer id was seen before/) },
    });
    expect(decode.engine.cache.usedBlocks).toBe(held);
    expect(decode.admitted.map((s) => s.id)).toEqual(["req-a"]);
    decode.engine.release(decode.admitted[0]!);
    expect(decode.engine.cache.usedBlocks).toBe(0);
  });

  it("a full cache refuses with RESOURCE_EXHAUSTED before taking anything, and the sender stops", async () => {
    const model = models.get("f32")!;
    const prefill = new Engine(model, { blockSize: 4, numBlocks: 64 });
    // Prompt 13 + max_tokens 12 + 1 needs 7 blocks of 4; 6 exist.
    const decode = decodeSide(model, 6);
    const chunks: number[] = [];
    const { outcome, sender } = await prefillAndSend(
      prefill,
      connectInProcess(decode.inbox),
      PROMPT,
      GREEDY,
      { transferId: "t-full", requestId: "req-full" },
      { onChunk: (b) => chunks.push(b) },
    );
    expect(outcome).toEqual({
      ok: false,
      failure: { code: Code.RESOURCE_EXHAUSTED, reason: expect.stringMatching(/KV cache full: need 7 more blocks, 6 free of 6/) },
    });
    // The early answer reached the sender before its first row: nothing was encoded or sent.
    expect(chunks).toEqual([]);
    expect(sender.bytesSent).toBe(0);
    expect(decode.engine.cache.usedBlocks).toBe(0);
  });

  it("a sender that aborts mid-transfer leaves nothing behind", async () => {
    const model = models.get("f32")!;
    const prefill = new Engine(model, { blockSize: 4, numBlocks: 64, prefillChunk: 5 });
    const decode = decodeSide(model);
    const seq = prefill.newSequence("req-ab", PROMPT, GREEDY);
    const sender = new KvSender(connectInProcess(decode.inbox));
    await sender.begin(kvTransferMeta(prefill, seq, { transferId: "t-ab", requestId: "req-ab", modelId: MODEL_ID, logprobs: false }));
    let calls = 0;
    await prefill.prefill([seq], {
      kvSink: {
        async onLayer(layer, i, start, n, rows) {
          if (++calls === 4) sender.abort("prefill worker shutting down");
          await sender.onLayer(layer, i, start, n, rows);
        },
      },
    });
    prefill.release(seq);
    expect(await sender.done).toEqual({ ok: false, failure: { code: Code.CANCELLED, reason: "prefill worker shutting down" } });
    expect(decode.failures).toEqual([{ code: Code.CANCELLED, reason: "the sender cancelled: prefill worker shutting down" }]);
    // Rows after the abort were not sent: 3 chunks went out.
    expect(sender.chunksSent).toBe(3);
    expect(decode.engine.cache.usedBlocks).toBe(0);
  });

  it("a transfer whose deadline already passed is refused with DEADLINE_EXCEEDED", async () => {
    const model = models.get("f32")!;
    const decode = decodeSide(model);
    const { outcome } = await prefillAndSend(new Engine(model, { blockSize: 4, numBlocks: 64 }), connectInProcess(decode.inbox), PROMPT, GREEDY, {
      transferId: "t-late",
      requestId: "req-late",
      deadlineUnixMs: Date.now() - 1,
    });
    expect(outcome.ok === false && outcome.failure.code).toBe(Code.DEADLINE_EXCEEDED);
    expect(decode.engine.cache.usedBlocks).toBe(0);
  });

  it("a sampling request without draft probabilities is refused (the speculative rule needs them)", async () => {
    const model = models.get("f32")!;
    const decode = decodeSide(model);
    const connector = connectInProcess(decode.inbox, {
      intercept: (f) => (f.kind === "end" && f.draft !== null ? [{ ...f, draft: { token: f.draft.token, probs: null } }] : [f]),
    });
    const { outcome } = await prefillAndSend(new Engine(model, { blockSize: 4, numBlocks: 64 }), connector, PROMPT, SAMPLED, {
      transferId: "t-dp",
      requestId: "req-dp",
    });
    expect(outcome.ok === false && outcome.failure.reason).toMatch(/draft_probs must be \[\d+\] for a sampled request, got none/);
    expect(decode.engine.cache.usedBlocks).toBe(0);
  });
});

describe("without the MTP block's KV", () => {
  it("admits without the draft and still generates the reference tokens", async () => {
    const model = models.get("f32")!;
    const reference = await referenceRun(new Engine(model, { blockSize: 4, numBlocks: 64, speculative: false }), PROMPT, GREEDY);
    // A prefill that does not speculate computes no MTP rows and announces only the main layers.
    const prefill = new Engine(model, { blockSize: 4, numBlocks: 64, speculative: false });
    const decode = decodeSide(model);
    const { outcome } = await prefillAndSend(prefill, connectInProcess(decode.inbox), PROMPT, GREEDY, { transferId: "t-nomtp", requestId: "req-nomtp" });
    expect(outcome.ok).toBe(true);
    const seq = decode.admitted[0]!;
    expect(seq.draft).toBeNull();
    expect((await decodeToEnd(decode.engine, seq)).map((t) => t.id)).toEqual(reference.map((t) => t.id));
  });
});
