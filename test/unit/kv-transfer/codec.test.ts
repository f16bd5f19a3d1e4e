import { createHash } from "node:crypto";
import { describe, expect, it } from "vitest";
import { roundBf16, type KvDtype } from "@moela/engine";
import { decodeRows, encodeRows, frameFromWire, frameToWire, RunningChecksum, sha256, type KvFrame } from "@moela/kv-transfer";
import { PushRequest } from "@moela/proto-gen";

/** [3, 5] rows with awkward values: signs, zero, subnormal, large, inexact in bf16. */
const ROWS = new Float32Array([0, -0, 1, -1, 1.00390625, 3.14159, -2.5e-39, 6.5e4, 1e30, -7.25, 0.1, 0.2, 0.3, 123.456, -9.87e-5]);

describe("KV row codec", () => {
  it.each([
    ["f32", 4],
    ["bf16", 2],
  ] as [KvDtype, number][])("%s: %d bytes per value, little-endian, decodes to the dtype's rounding of each value", (dtype, width) => {
    const bytes = encodeRows(ROWS, dtype);
    expect(bytes.length).toBe(ROWS.length * width);
    const out = new Float32Array(ROWS.length + 2);
    decodeRows(bytes, dtype, out, 2);
    const expected = Array.from(ROWS, (v) => (dtype === "f32" ? v : roundBf16(v)));
    expect(Array.from(out.subarray(2))).toEqual(expected);
    // Little-endian on the wire whatever the host: the first value of row 0 after 0 and -0 is 1.0.
    const one = dtype === "f32" ? [0x00, 0x00, 0x80, 0x3f] : [0x80, 0x3f];
    expect(Array.from(bytes.subarray(2 * width, 3 * width))).toEqual(one);
  });

  it("bf16 is lossless for rows the engine already rounded through bf16 (the paper profile's cache)", () => {
    const rounded = ROWS.map((v) => roundBf16(v));
    const out = new Float32Array(rounded.length);
    decodeRows(encodeRows(rounded, "bf16"), "bf16", out);
    expect(Array.from(out)).toEqual(Array.from(rounded));
  });

  it("decodes from an unaligned buffer", () => {
    const bytes = encodeRows(ROWS, "f32");
    const shifted = new Uint8Array(bytes.length + 1).subarray(1);
    shifted.set(bytes);
    const out = new Float32Array(ROWS.length);
    decodeRows(shifted, "f32", out);
    expect(Array.from(out)).toEqual(Array.from(ROWS));
  });

  it.each([
    ["a ragged byte count", new Uint8Array(7), "f32", /not a whole number of f32 values/],
    ["more values than the output holds", new Uint8Array(4 * 20), "f32", /do not fit/],
  ] as [string, Uint8Array, KvDtype, RegExp][])("refuses %s", (_n, bytes, dtype, msg) => {
    expect(() => decodeRows(bytes, dtype, new Float32Array(15))).toThrow(msg);
  });
});

describe("checksums", () => {
  it("sha256 of a chunk is the standard SHA-256", () => {
    expect(Buffer.from(sha256(new TextEncoder().encode("abc"))).toString("hex")).toBe("ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
  });

  it("the running checksum is SHA-256 over the concatenated chunk digests, in order", () => {
    const chunks = [new Uint8Array([1, 2, 3]), new Uint8Array([4]), new Uint8Array(0)];
    const digests = chunks.map(sha256);
    const run = new RunningChecksum();
    for (const d of digests) run.add(d);
    expect(run.count).toBe(3);
    const expected = createHash("sha256").update(Buffer.concat(digests)).digest();
    expect(Buffer.from(run.digest())).toEqual(expected);
    const swapped = new RunningChecksum();
    for (const d of [digests[1]!, digests[0]!, digests[2]!]) swapped.add(d);
    expect(Buffer.from(swapped.digest())).not.toEqual(expected);
  });
});

describe("frames on the wire (PushRequest)", () => {
  const probs = new Float32Array([0.25, 0.5, 0.125, 0.125]);
  const frames: [string, KvFrame][] = [
    [
      "begin",
      {
        kind: "begin",
        transferId: "t-1",
        requestId: "req-1",
        modelId: "m",
        promptTokenIds: [5, 6, 7],
        numLayers: 4,
        numTokens: 3,
        kvLoraRank: 32,
        qkRopeHeadDim: 16,
        kvDtype: "bf16",
        params: { temperature: 0.5, topP: 0.75, topK: 40, seed: 2 ** 40 + 3, maxTokens: 9, stopTokenIds: [1, 2], ignoreEos: true, topLogprobs: 3 },
        logprobs: true,
        cachedPromptTokens: 0,
        deadlineUnixMs: 1_900_000_000_000,
      },
    ],
    [
      "layer",
      {
        kind: "layer",
        layer: 3,
        tokenStart: 2,
        tokenCount: 1,
        dtype: "f32",
        shape: [1, 4],
        data: encodeRows(new Float32Array([1, 2, 3, 4]), "f32"),
        sha256: sha256(new Uint8Array([9])),
      },
    ],
    [
      "end with a sampled draft",
      {
        kind: "end",
        numChunks: 12,
        sha256: sha256(new Uint8Array([1])),
        firstToken: {
          id: 42,
          logprob: -0.5,
          top: [
            [42, -0.5],
            [7, -1.25],
          ],
        },
        draft: { token: 3, probs },
        rngState: [1, 0xffffffff, 0, 77],
        drafted: 0,
        accepted: 0,
      },
    ],
    [
      "end, greedy, no logprobs asked, no draft",
      {
        kind: "end",
        numChunks: 1,
        sha256: sha256(new Uint8Array([2])),
        firstToken: { id: 0, logprob: -2, top: null },
        draft: null,
        rngState: [9, 9, 9, 9],
        drafted: 4,
        accepted: 3,
      },
    ],
  ];

  it.each(frames)("%s survives encode and decode", (_name, frame) => {
    const bytes = PushRequest.encode(frameToWire(frame)).finish();
    const back = frameFromWire(PushRequest.decode(bytes));
    // Buffers and typed arrays compare by content.
    const plain = (v: unknown): unknown =>
      v instanceof Uint8Array || v instanceof Float32Array
        ? Array.from(v)
        : Array.isArray(v)
          ? v.map(plain)
          : typeof v === "object" && v !== null
            ? Object.fromEntries(Object.entries(v).map(([k, x]) => [k, plain(x)]))
            : v;
    expect(plain(back)).toEqual(plain(frame));
  });

  it("a begin with penalties, logit_bias, min_p, min_tokens and prior output survives encode and decode exactly", () => {
    const begin = frames[0]![1] as Extract<KvFrame, { kind: "begin" }>;
    // float32-representable penalties and biases (the wire's float), and a double min_p.
    const params = {
      ...begin.params,
      presencePenalty: -1.5,
      frequencyPenalty: 0.25,
      repetitionPenalty: 1.125,
      logitBias: [
        [3, -100],
        [9, 2.5],
      ] as const,
      minP: 0.05,
      minTokens: 4,
      priorOutputTokens: 2,
    };
    const back = frameFromWire(PushRequest.decode(PushRequest.encode(frameToWire({ ...begin, params })).finish()));
    expect(back.kind === "begin" && back.params).toEqual(params);
    // Absent on the sender: absent on the receiver (the engine's "off").
    const plain = frameFromWire(PushRequest.decode(PushRequest.encode(frameToWire(begin)).finish()));
    expect(plain.kind === "begin" && Object.keys(plain.params).sort()).toEqual(Object.keys(begin.params).sort());
  });

  it("a request with logprobs unset reports none and asks for no top alternatives", () => {
    const begin = frames[0]![1] as Extract<KvFrame, { kind: "begin" }>;
    const wire = frameToWire({ ...begin, logprobs: false, params: { ...begin.params, topLogprobs: 0 } });
    const back = frameFromWire(PushRequest.decode(PushRequest.encode(wire).finish()));
    expect(back.kind === "begin" && [back.logprobs, back.params.topLogprobs]).toEqual([false, 0]);
  });

  it.each([
    ["an empty message", {}, /none of begin, layer, end/],
    [
      "a layer without its tensor",
      { chunk: { $case: "layer", value: { layer: 0, tokenStart: 0, tokenCount: 1, sha256: Buffer.alloc(32) } } },
      /no latent tensor/,
    ],
    ["a begin without sampling", { chunk: { $case: "begin", value: { transferId: "t", kvDtype: 1 } } }, /KvBegin.sampling is missing/],
    ["a begin in FP8", { chunk: { $case: "begin", value: { transferId: "t", kvDtype: 4, sampling: {} } } }, /kv_dtype DTYPE_F8_E4M3 is not F32 or BF16/],
    ["an end without the first token's logprobs", { chunk: { $case: "end", value: { firstTokenId: 1 } } }, /first_token_logprobs is missing/],
  ])("refuses %s, naming the field", (_n, partial, msg) => {
    expect(() => frameFromWire(PushRequest.fromPartial(partial as never))).toThrow(msg);
  });
});
