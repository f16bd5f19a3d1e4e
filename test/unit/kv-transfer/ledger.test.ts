/**
 * The KV ledger: one record per request, every hold released once through the one path, whatever ends
 * it; and the receiver's blocks accounted there from KvBegin to admission or failure (lost, broken or
 * refused transfers give everything back, with their reason).
 */
import { afterAll, beforeAll, describe, expect, it, vi } from "vitest";
import { Code } from "@moela/core";
import { DeepseekModel, Engine } from "@moela/engine";
import { connectInProcess, KvInbox, KvLedger, KvPoll, KvSender, kvTransferMeta, type KvHold, type KvReleaseReason } from "@moela/kv-transfer";
import { makeCheckpoint, removeCheckpoints } from "../../helpers/checkpoints.js";
import { ManualClock } from "../../helpers/clock.js";
import { GREEDY, MODEL_ID, prefillAndSend } from "../../helpers/kv.js";

const PROMPT = [0, 399, 332, 17, 256, 901, 44, 12, 730, 5, 66, 120, 7];

describe("KvLedger", () => {
  function blocks(n: number, freed: number[]): { free: () => number; count: () => number } {
    let held = n;
    return {
      free: () => {
        freed.push(held);
        const k = held;
        held = 0;
        return k;
      },
      count: () => held,
    };
  }

  it("keeps one record per request; reclaim releases every hold of it once, with its reason", () => {
    const released: Array<[KvReleaseReason, number, string]> = [];
    const ledger = new KvLedger({ onRelease: (reason, n, h) => released.push([reason, n, h.kind]) });
    const freed: number[] = [];
    const a = blocks(3, freed);
    const b = blocks(2, freed);
    ledger.hold("req-1", "transfer", a.free, a.count);
    ledger.hold("req-1", "transfer", b.free, b.count);
    const c = blocks(4, freed);
    ledger.hold("req-2", "sequence", c.free, c.count);
    expect(ledger.requests).toBe(2);
    expect(ledger.heldBlocks).toBe(9);
    expect(ledger.reclaim("req-1", "sender_failed")).toBe(5);
    expect(ledger.reclaim("req-1", "cancelled")).toBe(0);
    expect(ledger.requests).toBe(1);
    expect(ledger.heldBlocks).toBe(4);
    expect(released).toEqual([
      ["sender_failed", 3, "transfer"],
      ["sender_failed", 2, "transfer"],
    ]);
    expect(freed).toEqual([3, 2]);
  });

  it("a hold is released once whichever path comes first; adopt hands the same blocks to a new holder", () => {
    const reasons: KvReleaseReason[] = [];
    const ledger = new KvLedger({ onRelease: (reason) => reasons.push(reason) });
    const freed: number[] = [];
    const t = blocks(5, freed);
    const h = ledger.hold("req-1", "transfer", t.free, t.count);
    const s = blocks(5, freed);
    h.adopt("sequence", s.free, s.count);
    expect(h.kind).toBe("sequence");
    expect(h.release("finished")).toBe(5);
    expect(h.release("cancelled")).toBe(0);
    expect(ledger.reclaim("req-1", "lost")).toBe(0);
    expect(reasons).toEqual(["finished"]);
    expect(h.releaseReason).toBe("finished");
    expect(() => h.adopt("sequence", s.free, s.count)).toThrow(/was released \(finished\)/);
    expect(ledger.requests).toBe(0);
  });

  it("counts as stranded only holds nobody touched for the threshold", () => {
    let now = 1_000;
    const ledger = new KvLedger({ strandedAfterMs: 100, now: () => now });
    const freed: number[] = [];
    const a = blocks(3, freed);
    const b = blocks(7, freed);
    const ha = ledger.hold("req-a", "transfer", a.free, a.count);
    ledger.hold("req-b", "sequence", b.free, b.count);
    now += 50;
    ha.touch();
    now += 60;
    expect(ledger.strandedBlocks()).toBe(7);
    now += 50;
    expect(ledger.strandedBlocks()).toBe(10);
    ledger.reclaim("req-b", "lost");
    expect(ledger.strandedBlocks()).toBe(3);
  });
});

describe("KvInbox blocks in the ledger", () => {
  let model: DeepseekModel;
  beforeAll(() => {
    model = DeepseekModel.load(makeCheckpoint({ preset: "tiny-v3" }), { kvDtype: "f32" });
  });
  afterAll(removeCheckpoints);

  function sides(opts: { idleTimeoutMs?: number; clock?: ManualClock } = {}) {
    const prefill = new Engine(model, { blockSize: 4, numBlocks: 64 });
    const engine = new Engine(model, { blockSize: 4, numBlocks: 64 });
    const reasons: KvReleaseReason[] = [];
    const ledger = new KvLedger({ onRelease: (r) => reasons.push(r) });
    const admitted: KvHold[] = [];
    const inbox = new KvInbox({ engine, modelId: MODEL_ID, ledger, ...opts, onAdmit: (_seq, _meta, _stats, hold) => admitted.push(hold) });
    return { prefill, engine, ledger, inbox, reasons, admitted };
  }

  it("an admitted transfer's hold becomes the sequence's; releasing it frees every block", async () => {
    const d = sides();
    const { outcome } = await prefillAndSend(d.prefill, connectInProcess(d.inbox), PROMPT, GREEDY, { transferId: "t-1", requestId: "req-1" });
    expect(outcome.ok).toBe(true);
    expect(d.admitted).toHaveLength(1);
    const hold = d.admitted[0]!;
    expect(hold.kind).toBe("sequence");
    expect(d.ledger.heldBlocks).toBe(d.engine.cache.usedBlocks);
    expect(d.engine.cache.usedBlocks).toBeGreaterThan(0);
    hold.release("finished");
    expect(d.engine.cache.usedBlocks).toBe(0);
    expect(d.ledger.requests).toBe(0);
    expect(d.reasons).toEqual(["finished"]);
  });

  it("a sender that dies mid-transfer (the stream ends before KvEnd) gives the reservation back as sender_failed", async () => {
    const d = sides();
    const seq = d.prefill.newSequence("req-2", PROMPT, GREEDY);
    const sender = new KvSender(connectInProcess(d.inbox));
    await sender.begin(kvTransferMeta(d.prefill, seq, { transferId: "t-2", requestId: "req-2", modelId: MODEL_ID, logprobs: false }));
    expect(d.ledger.holdsOf("req-2").map((h) => h.kind)).toEqual(["transfer"]);
    expect(d.engine.cache.usedBlocks).toBeGreaterThan(0);
    sender.abort("prefill was killed");
    await vi.waitFor(() => expect(d.engine.cache.usedBlocks).toBe(0), { timeout: 5_000, interval: 10 });
    expect(d.ledger.requests).toBe(0);
    expect(d.reasons).toEqual(["sender_failed"]);
  });

  it("a sender that goes silent is failed after the idle timeout and its blocks reclaimed as lost", async () => {
    const clock = new ManualClock();
    const d = sides({ idleTimeoutMs: 50, clock });
    const seq = d.prefill.newSequence("req-3", PROMPT, GREEDY);
    const sender = new KvSender(connectInProcess(d.inbox));
    await sender.begin(kvTransferMeta(d.prefill, seq, { transferId: "t-3", requestId: "req-3", modelId: MODEL_ID, logprobs: false }));
    expect(d.engine.cache.usedBlocks).toBeGreaterThan(0);
    clock.advance(49);
    expect(d.engine.cache.usedBlocks).toBeGreaterThan(0);
    expect(d.reasons).toEqual([]);
    clock.advance(1);
    expect(d.engine.cache.usedBlocks).toBe(0);
    expect(d.reasons).toEqual(["lost"]);
    expect((await sender.done).ok).toBe(false);
    expect(sender.poll()).toBe(KvPoll.Failed);
    // Retryable: prefill's job runs again and the request waits for that transfer.
    expect(sender.failure?.code).toBe(Code.UNAVAILABLE);
  });

  it("a sequence refused at admission is released as rejected", async () => {
    const prefill = new Engine(model, { blockSize: 4, numBlocks: 64 });
    const engine = new Engine(model, { blockSize: 4, numBlocks: 64 });
    const reasons: KvReleaseReason[] = [];
    const ledger = new KvLedger({ onRelease: (r) => reasons.push(r) });
    const inbox = new KvInbox({
      engine,
      modelId: MODEL_ID,
      ledger,
      onAdmit: () => {
        throw new Error("the request was cancelled meanwhile");
      },
    });
    const { outcome } = await prefillAndSend(prefill, connectInProcess(inbox), PROMPT, GREEDY, { transferId: "t-4", requestId: "req-4" });
    expect(outcome.ok).toBe(false);
    expect(engine.cache.usedBlocks).toBe(0);
    expect(reasons).toEqual(["rejected"]);
  });
});
