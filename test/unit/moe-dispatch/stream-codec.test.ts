/**
 * DispatchStream's hand-written codec against the generated one: the same bytes out, the same
 * messages back, any valid encoding read (unpacked repeated fields, other field orders, unknown
 * fields), and bytes that are not a message refused with ProtobufDecodeError, never a crash.
 */
import { describe, expect, it } from "vitest";
import { BinaryWriter } from "@bufbuild/protobuf/wire";
import { DispatchStreamRequest, DispatchStreamResponse, DType, type Tensor } from "@moela/proto-gen";
import {
  decodeDispatchStreamRequest,
  decodeDispatchStreamResponse,
  encodeDispatchStreamRequest,
  encodeDispatchStreamResponse,
  getDispatchCodec,
  ProtobufDecodeError,
  toTensor,
  type DispatchCodecName,
} from "@moela/moe-dispatch";

function tensor(codec: DispatchCodecName, rows: number, cols: number): Tensor {
  const x = Float32Array.from({ length: rows * cols }, (_, i) => Math.sin(i * 0.37) * (1 + (i % 7)));
  return toTensor(getDispatchCodec(codec).encode(x, rows, cols));
}

const requests: DispatchStreamRequest[] = [
  {
    callId: 1,
    request: { layer: 3, activations: tensor("f32", 1, 64), expertIds: [5], tokenExpertCounts: [1], weights: [0.75], requestId: "", sharedExpertRows: [] },
  },
  {
    callId: 2 ** 40 + 17,
    request: {
      layer: 0,
      activations: tensor("fp8-tile", 3, 300),
      expertIds: [1, 200, 3, 4, 127, 128, 16384],
      tokenExpertCounts: [2, 3, 2],
      weights: [0.5, -1.25, 3e-8, 1e30, 0, -0, 0.1],
      requestId: "req-ünïcode-✓",
      sharedExpertRows: [0, 2],
    },
  },
  {
    callId: 9,
    request: {
      layer: 61,
      activations: tensor("logfmt8", 2, 256),
      expertIds: [],
      tokenExpertCounts: [0, 0],
      weights: [],
      requestId: "batch-1",
      sharedExpertRows: [],
    },
  },
  { callId: 0, request: undefined },
  { callId: 5, request: { layer: 1, activations: undefined, expertIds: [], tokenExpertCounts: [], weights: [], requestId: "", sharedExpertRows: [] } },
];

const responses: DispatchStreamResponse[] = [
  { callId: 1, response: { output: tensor("f32", 1, 64) }, errorCode: 0, errorMessage: "" },
  { callId: 2 ** 33, response: { output: tensor("bf16", 4, 1024) }, errorCode: 0, errorMessage: "" },
  { callId: 3, response: undefined, errorCode: 3, errorMessage: "layer 9 is not an MoE layer — ✗" },
  { callId: 4, response: { output: undefined }, errorCode: 0, errorMessage: "" },
];

/** The generated encoding (ts-proto over @bufbuild/protobuf). */
const generatedRequest = (m: DispatchStreamRequest) => Buffer.from(DispatchStreamRequest.encode(m).finish());
const generatedResponse = (m: DispatchStreamResponse) => Buffer.from(DispatchStreamResponse.encode(m).finish());

/** A decoded message with Buffers as plain byte arrays, for toEqual across Buffer views and copies. */
function plain(v: unknown): unknown {
  if (v instanceof Uint8Array) return Array.from(v);
  if (Array.isArray(v)) return v.map(plain);
  if (v !== null && typeof v === "object") return Object.fromEntries(Object.entries(v).map(([k, x]) => [k, plain(x)]));
  return v;
}

describe("DispatchStream's hand-written codec", () => {
  it.each(requests.map((m, i) => [i, m] as const))("request %i: the generated code's bytes, and back", (_, m) => {
    const bytes = encodeDispatchStreamRequest(m);
    expect(bytes.equals(generatedRequest(m))).toBe(true);
    expect(plain(decodeDispatchStreamRequest(bytes))).toEqual(plain(DispatchStreamRequest.decode(bytes)));
  });

  it.each(responses.map((m, i) => [i, m] as const))("response %i: the generated code's bytes, and back", (_, m) => {
    const bytes = encodeDispatchStreamResponse(m);
    expect(bytes.equals(generatedResponse(m))).toBe(true);
    expect(plain(decodeDispatchStreamResponse(bytes))).toEqual(plain(DispatchStreamResponse.decode(bytes)));
  });

  it("decodes payloads as views of the received buffer, not copies", () => {
    const bytes = encodeDispatchStreamResponse(responses[1]!);
    const out = decodeDispatchStreamResponse(bytes).response!.output!;
    expect(out.data.buffer).toBe(bytes.buffer);
    expect(out.data.length).toBe(4 * 1024 * 2);
  });

  it("reads unpacked repeated fields, fields out of order and unknown fields", () => {
    const w = new BinaryWriter();
    w.uint32(18).fork(); // request, before call_id
    w.uint32((99 << 3) | 2).string("a field from a newer peer");
    for (const id of [7, 300]) w.uint32(24).uint32(id); // expert_ids, unpacked
    w.uint32(34).fork().uint32(2).join(); // token_expert_counts, packed
    for (const f of [0.5, 0.25]) w.uint32(45).float(f); // weights, unpacked (fixed32)
    w.uint32((2 << 3) | 2)
      .fork()
      .uint32(8)
      .int32(DType.DTYPE_F32)
      .uint32(18)
      .fork()
      .uint32(1)
      .uint32(2)
      .join()
      .uint32(26)
      .bytes(new Uint8Array(8))
      .join();
    w.uint32(8).uint32(4);
    w.uint32((100 << 3) | 0).uint64(123456789);
    w.uint32((101 << 3) | 5).fixed32(1);
    w.uint32((102 << 3) | 1).fixed64(1);
    w.join();
    w.uint32(8).uint64(42);
    const bytes = Buffer.from(w.finish());
    const mine = decodeDispatchStreamRequest(bytes);
    expect(plain(mine)).toEqual(plain(DispatchStreamRequest.decode(bytes)));
    expect(mine.callId).toBe(42);
    expect(mine.request?.expertIds).toEqual([7, 300]);
    expect(mine.request?.weights).toEqual([0.5, 0.25]);
    expect(mine.request?.activations?.shape).toEqual([1, 2]);
  });

  it("refuses bytes that are not a message with ProtobufDecodeError", () => {
    const good = encodeDispatchStreamRequest(requests[1]!);
    for (const cut of [1, 5, 40, good.length - 1]) {
      expect(() => decodeDispatchStreamRequest(good.subarray(0, cut)), `cut at ${cut}`).toThrow(ProtobufDecodeError);
    }
    expect(() => decodeDispatchStreamRequest(Buffer.from([0x08, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01]))).toThrow(
      ProtobufDecodeError,
    );
    expect(() => decodeDispatchStreamRequest(Buffer.from([0x12, 0x05, 0x08]))).toThrow(/runs past/);
    expect(() => decodeDispatchStreamRequest(Buffer.from([0x0b]))).toThrow(/wire type 3/);
    expect(() => decodeDispatchStreamRequest(Buffer.from([0x00]))).toThrow(/field number 0/);
    expect(() => decodeDispatchStreamResponse(Buffer.from([0x12, 0x02, 0x0a, 0x09]))).toThrow(ProtobufDecodeError);
  });
});
