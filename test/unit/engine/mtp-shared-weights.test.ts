/**
 * DeepSeek-V3 checkpoints repeat the embedding and the output head in the MTP layer (embed_tokens and
 * shared_head.head are copies); the loader keeps one matrix for each pair of identical copies. The generated
 * checkpoints give the MTP layer values of its own (so a wrong read shows), so the copies are made here by
 * writing the main tensors' bytes over the MTP ones.
 */
import * as fs from "node:fs";
import * as path from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { DeepseekModel, Engine, type Sequence } from "@moela/engine";
import { makeCheckpoint, removeCheckpoints, SMALL_V3 } from "../../helpers/checkpoints.js";

const MTP = "model.layers.2";

/** Where each tensor's bytes are: file, absolute offset, length. */
function tensorLocations(dir: string): Map<string, { file: string; start: number; length: number }> {
  const out = new Map<string, { file: string; start: number; length: number }>();
  for (const name of fs.readdirSync(dir).filter((f) => f.endsWith(".safetensors"))) {
    const file = path.join(dir, name);
    const buf = fs.readFileSync(file);
    const headerLen = Number(buf.readBigUInt64LE(0));
    const header = JSON.parse(buf.subarray(8, 8 + headerLen).toString("utf8")) as Record<string, { data_offsets?: [number, number] }>;
    for (const [tensor, info] of Object.entries(header)) {
      if (info.data_offsets === undefined) continue;
      out.set(tensor, { file, start: 8 + headerLen + info.data_offsets[0], length: info.data_offsets[1] - info.data_offsets[0] });
    }
  }
  return out;
}

/** Write tensor `from`'s bytes over tensor `to`'s (same dtype and shape). */
function copyTensorBytes(dir: string, from: string, to: string): void {
  const at = tensorLocations(dir);
  const src = at.get(from)!;
  const dst = at.get(to)!;
  expect(dst.length).toBe(src.length);
  const bytes = Buffer.alloc(src.length);
  const fdIn = fs.openSync(src.file, "r");
  fs.readSync(fdIn, bytes, 0, src.length, src.start);
  fs.closeSync(fdIn);
  const fdOut = fs.openSync(dst.file, "r+");
  fs.writeSync(fdOut, bytes, 0, bytes.length, dst.start);
  fs.closeSync(fdOut);
}

/** 16 greedy tokens, and the MTP draft after each step (null: none). */
async function greedy(model: DeepseekModel, speculation: "on" | "off"): Promise<{ tokens: number[]; drafts: (number | null)[] }> {
  const engine = new Engine(model, { blockSize: 16, numBlocks: 8, speculation });
  const seq: Sequence = engine.newSequence("s", [5, 9, 17, 33, 2, 71], { temperature: 0, topP: 1, topK: -1, maxTokens: 16, ignoreEos: true });
  await engine.prefill([seq]);
  const drafts: (number | null)[] = [seq.draft?.token ?? null];
  while (!seq.finished) {
    await engine.step([seq]);
    drafts.push(seq.draft?.token ?? null);
  }
  return { tokens: seq.output.map((t) => t.id), drafts };
}

describe("the MTP layer's copies of the embedding and the output head", () => {
  let distinct = "";
  let copies = "";
  beforeAll(() => {
    distinct = makeCheckpoint(SMALL_V3);
    copies = makeCheckpoint(SMALL_V3);
    copyTensorBytes(copies, "model.embed_tokens.weight", `${MTP}.embed_tokens.weight`);
    copyTensorBytes(copies, "lm_head.weight", `${MTP}.shared_head.head.weight`);
  });
  afterAll(removeCheckpoints);

  it("share the main matrices when their bytes are the same, and count once in the resident bytes", () => {
    const own = DeepseekModel.load(distinct);
    const shared = DeepseekModel.load(copies);
    expect(own.weights.mtp[0]!.head).not.toBe(own.weights.lmHead);
    expect(own.weights.mtp[0]!.embed).not.toBe(own.weights.embed);
    expect(shared.weights.mtp[0]!.head).toBe(shared.weights.lmHead);
    expect(shared.weights.mtp[0]!.embed).toBe(shared.weights.embed);
    const { vocabSize, hiddenSize } = shared.config;
    // Two BF16 [vocab, hidden] matrices fewer.
    expect(own.weightBytes - shared.weightBytes).toBe(2 * vocabSize * hiddenSize * 2);
  });

  it("a head that differs in one byte is loaded as its own", () => {
    const dir = makeCheckpoint(SMALL_V3);
    copyTensorBytes(dir, "lm_head.weight", `${MTP}.shared_head.head.weight`);
    const at = tensorLocations(dir).get(`${MTP}.shared_head.head.weight`)!;
    const fd = fs.openSync(at.file, "r+");
    const b = Buffer.alloc(1);
    fs.readSync(fd, b, 0, 1, at.start + at.length - 1);
    b[0] = b[0]! ^ 1;
    fs.writeSync(fd, b, 0, 1, at.start + at.length - 1);
    fs.closeSync(fd);
    const m = DeepseekModel.load(dir);
    expect(m.weights.mtp[0]!.head).not.toBe(m.weights.lmHead);
  });

  it("drafts from the shared matrices as from separate copies of them", async () => {
    const shared = DeepseekModel.load(copies);
    const w = shared.weights;
    const mtp = w.mtp[0]!;
    // The same checkpoint with the MTP layer's embedding and head as copies of their own (as before sharing).
    const copy = <M extends { data: Float32Array | Uint16Array | Uint8Array }>(m: M): M => ({ ...m, data: m.data.slice() });
    const separate = new DeepseekModel(shared.config, { ...w, mtp: [{ ...mtp, embed: copy(w.embed), head: copy(w.lmHead) }] }, shared.weightBytes);
    expect(separate.weights.mtp[0]!.head).not.toBe(separate.weights.lmHead);
    const a = await greedy(shared, "on");
    const b = await greedy(separate, "on");
    const off = await greedy(shared, "off");
    expect(a.tokens).toEqual(off.tokens);
    expect(a).toEqual(b);
    expect(a.drafts.filter((d) => d !== null).length).toBeGreaterThan(8);
  });
});
