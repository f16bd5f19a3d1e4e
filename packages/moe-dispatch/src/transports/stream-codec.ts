/**
 * DispatchStream's messages (proto/moela/v1/expert.proto: DispatchStreamRequest and
 * DispatchStreamResponse) encoded and decoded by hand, for the one call that runs once per MoE layer
 * and micro-batch. The bytes are the protobuf encoding that the generated code writes (the tests
 * compare them byte for byte) and the decoders read any valid encoding of the same messages (fields in
 * any order, packed or unpacked repeated scalars, unknown fields skipped), so a peer built on
 * generated code in any language interoperates.
 *
 * Why by hand: the generated encoder writes into a growing buffer (several reallocations and copies
 * of a 4 KiB-4 MiB activation matrix per message) and its decoder copies every bytes field. Here the
 * encoder sizes the message first and writes it into one buffer, copying the activations once, and
 * the decoder returns views of the received buffer (no copy of the payload), the "cheap wire" of the
 * cluster-speed issue. Everything else about the messages (the types, validation: wire.ts) is the
 * generated code's.
 */
import { makeGenericClientConstructor } from "@grpc/grpc-js";
import { ExpertHostClient, ExpertHostService } from "@moela/proto-gen";
import type { DispatchRequest, DispatchStreamRequest, DispatchStreamResponse, Tensor } from "@moela/proto-gen";

/** Protobuf wire types. */
const VARINT = 0;
const FIXED64 = 1;
const LEN = 2;
const FIXED32 = 5;

const EMPTY = Buffer.alloc(0);

/** Thrown for bytes that are not a valid encoding; the gRPC layer answers it as INTERNAL / a broken stream. */
export class ProtobufDecodeError extends Error {
  override readonly name = "ProtobufDecodeError";
}

function varintSize(v: number): number {
  let n = 1;
  while (v >= 128) {
    v = Math.floor(v / 128);
    n++;
  }
  return n;
}

function packedVarintSize(vs: ArrayLike<number>): number {
  let n = 0;
  for (let i = 0; i < vs.length; i++) n += varintSize(vs[i]!);
  return n;
}

/** A length-delimited field's size: tag, length, body. */
function lenFieldSize(body: number): number {
  return 1 + varintSize(body) + body;
}

/** Writes protobuf fields into one pre-sized buffer. */
class Writer {
  pos = 0;
  constructor(readonly buf: Buffer) {}

  varint(v: number): void {
    // Unsigned values up to 2^53 (call ids, lengths, codes, dimensions).
    while (v >= 128) {
      this.buf[this.pos++] = (v % 128) | 128;
      v = Math.floor(v / 128);
    }
    this.buf[this.pos++] = v;
  }

  tag(field: number, wireType: number): void {
    this.varint((field << 3) | wireType);
  }

  /** A non-zero scalar, as proto3 writes it (zero is the default and is left out). */
  uintField(field: number, v: number): void {
    if (v === 0) return;
    this.tag(field, VARINT);
    this.varint(v);
  }

  bytesField(field: number, bytes: Uint8Array): void {
    if (bytes.length === 0) return;
    this.tag(field, LEN);
    this.varint(bytes.length);
    this.buf.set(bytes, this.pos);
    this.pos += bytes.length;
  }

  stringField(field: number, s: string, byteLength: number): void {
    if (byteLength === 0) return;
    this.tag(field, LEN);
    this.varint(byteLength);
    this.pos += this.buf.write(s, this.pos, byteLength, "utf8");
  }

  packedVarints(field: number, vs: ArrayLike<number>, bodySize: number): void {
    if (vs.length === 0) return;
    this.tag(field, LEN);
    this.varint(bodySize);
    for (let i = 0; i < vs.length; i++) this.varint(vs[i]!);
  }

  packedFloats(field: number, vs: ArrayLike<number>): void {
    if (vs.length === 0) return;
    this.tag(field, LEN);
    this.varint(4 * vs.length);
    for (let i = 0; i < vs.length; i++) this.pos = this.buf.writeFloatLE(vs[i]!, this.pos);
  }
}

interface TensorSize {
  readonly shape: number;
  readonly body: number;
}

function tensorSize(t: Tensor): TensorSize {
  const shape = packedVarintSize(t.shape);
  let body = 0;
  if (t.dtype !== 0) body += 1 + varintSize(t.dtype);
  if (t.shape.length > 0) body += lenFieldSize(shape);
  if (t.data.length > 0) body += lenFieldSize(t.data.length);
  if (t.scales.length > 0) body += lenFieldSize(t.scales.length);
  if (t.tileSize !== 0) body += 1 + varintSize(t.tileSize);
  return { shape, body };
}

function writeTensor(w: Writer, field: number, t: Tensor, size: TensorSize): void {
  w.tag(field, LEN);
  w.varint(size.body);
  w.uintField(1, t.dtype);
  w.packedVarints(2, t.shape, size.shape);
  w.bytesField(3, t.data);
  w.bytesField(4, t.scales);
  w.uintField(5, t.tileSize);
}

/** DispatchStreamRequest's protobuf bytes, in one buffer sized up front. */
export function encodeDispatchStreamRequest(msg: DispatchStreamRequest): Buffer {
  const r = msg.request;
  let body = msg.callId !== 0 ? 1 + varintSize(msg.callId) : 0;
  let req = 0;
  let tensor: TensorSize | undefined;
  let ids = 0;
  let counts = 0;
  let shared = 0;
  let idBytes = 0;
  if (r !== undefined) {
    ids = packedVarintSize(r.expertIds);
    counts = packedVarintSize(r.tokenExpertCounts);
    shared = packedVarintSize(r.sharedExpertRows);
    idBytes = Buffer.byteLength(r.requestId, "utf8");
    if (r.layer !== 0) req += 1 + varintSize(r.layer);
    if (r.activations !== undefined) {
      tensor = tensorSize(r.activations);
      req += lenFieldSize(tensor.body);
    }
    if (r.expertIds.length > 0) req += lenFieldSize(ids);
    if (r.tokenExpertCounts.length > 0) req += lenFieldSize(counts);
    if (r.weights.length > 0) req += lenFieldSize(4 * r.weights.length);
    if (idBytes > 0) req += lenFieldSize(idBytes);
    if (r.sharedExpertRows.length > 0) req += lenFieldSize(shared);
    body += lenFieldSize(req);
  }
  const w = new Writer(Buffer.allocUnsafe(body));
  w.uintField(1, msg.callId);
  if (r !== undefined) {
    w.tag(2, LEN);
    w.varint(req);
    w.uintField(1, r.layer);
    if (r.activations !== undefined) writeTensor(w, 2, r.activations, tensor!);
    w.packedVarints(3, r.expertIds, ids);
    w.packedVarints(4, r.tokenExpertCounts, counts);
    w.packedFloats(5, r.weights);
    w.stringField(6, r.requestId, idBytes);
    w.packedVarints(7, r.sharedExpertRows, shared);
  }
  return finish(w);
}

/** DispatchStreamResponse's protobuf bytes, in one buffer sized up front. */
export function encodeDispatchStreamResponse(msg: DispatchStreamResponse): Buffer {
  let body = msg.callId !== 0 ? 1 + varintSize(msg.callId) : 0;
  const output = msg.response?.output;
  let tensor: TensorSize | undefined;
  let res = 0;
  if (msg.response !== undefined) {
    if (output !== undefined) {
      tensor = tensorSize(output);
      res = lenFieldSize(tensor.body);
    }
    body += lenFieldSize(res);
  }
  if (msg.errorCode !== 0) body += 1 + varintSize(msg.errorCode);
  const messageBytes = Buffer.byteLength(msg.errorMessage, "utf8");
  if (messageBytes > 0) body += lenFieldSize(messageBytes);
  const w = new Writer(Buffer.allocUnsafe(body));
  w.uintField(1, msg.callId);
  if (msg.response !== undefined) {
    w.tag(2, LEN);
    w.varint(res);
    if (output !== undefined) writeTensor(w, 1, output, tensor!);
  }
  w.uintField(3, msg.errorCode);
  w.stringField(4, msg.errorMessage, messageBytes);
  return finish(w);
}

function finish(w: Writer): Buffer {
  if (w.pos !== w.buf.length) throw new Error(`stream-codec: wrote ${w.pos} of ${w.buf.length} bytes (a sizing bug)`);
  return w.buf;
}

/** Reads protobuf fields from [pos, end) of a buffer; every read is bounds-checked. */
class Reader {
  pos: number;
  constructor(
    readonly buf: Buffer,
    start: number,
    readonly end: number,
  ) {
    this.pos = start;
  }

  get done(): boolean {
    return this.pos >= this.end;
  }

  varint(): number {
    let v = 0;
    let scale = 1;
    for (let i = 0; i < 10; i++) {
      if (this.pos >= this.end) throw new ProtobufDecodeError("truncated varint");
      const b = this.buf[this.pos++]!;
      v += (b & 127) * scale;
      if (b < 128) {
        if (!Number.isSafeInteger(v)) throw new ProtobufDecodeError("varint beyond 2^53");
        return v;
      }
      scale *= 128;
    }
    throw new ProtobufDecodeError("varint longer than 10 bytes");
  }

  /** A length-delimited field's [start, end), advancing past it. */
  span(): [number, number] {
    const len = this.varint();
    const start = this.pos;
    if (len > this.end - start) throw new ProtobufDecodeError(`a field of ${len} bytes runs past the message's end`);
    this.pos = start + len;
    return [start, this.pos];
  }

  /** A view of a bytes field (no copy). */
  bytes(): Buffer {
    const [s, e] = this.span();
    return this.buf.subarray(s, e);
  }

  string(): string {
    const [s, e] = this.span();
    return this.buf.toString("utf8", s, e);
  }

  /** Skips a field of an unknown number (forward compatibility). */
  skip(wireType: number): void {
    if (wireType === VARINT) this.varint();
    else if (wireType === LEN) this.span();
    else if (wireType === FIXED64 || wireType === FIXED32) {
      const n = wireType === FIXED64 ? 8 : 4;
      if (this.pos + n > this.end) throw new ProtobufDecodeError("truncated fixed-width field");
      this.pos += n;
    } else throw new ProtobufDecodeError(`wire type ${wireType} is not one proto3 writes`);
  }

  /** A repeated uint32 field: packed (LEN) or one element (VARINT), appended to `into`. */
  repeatedVarint(wireType: number, into: number[]): void {
    if (wireType === VARINT) {
      into.push(this.uint32());
      return;
    }
    if (wireType !== LEN) throw new ProtobufDecodeError(`wire type ${wireType} for a repeated uint32`);
    const [s, e] = this.span();
    const inner = new Reader(this.buf, s, e);
    while (!inner.done) into.push(inner.uint32());
  }

  /** A repeated float field: packed (LEN) or one element (FIXED32), appended to `into`. */
  repeatedFloat(wireType: number, into: number[]): void {
    if (wireType === FIXED32) {
      if (this.pos + 4 > this.end) throw new ProtobufDecodeError("truncated float");
      into.push(this.buf.readFloatLE(this.pos));
      this.pos += 4;
      return;
    }
    if (wireType !== LEN) throw new ProtobufDecodeError(`wire type ${wireType} for a repeated float`);
    const [s, e] = this.span();
    if ((e - s) % 4 !== 0) throw new ProtobufDecodeError(`packed floats of ${e - s} bytes`);
    for (let p = s; p < e; p += 4) into.push(this.buf.readFloatLE(p));
  }

  /** uint32 (and an enum's int32) as protobuf reads it: the low 32 bits of a varint of up to 10 bytes. */
  uint32(): number {
    let v = 0;
    for (let i = 0; i < 10; i++) {
      if (this.pos >= this.end) throw new ProtobufDecodeError("truncated varint");
      const b = this.buf[this.pos++]!;
      if (i < 5) v += (b & 127) * 2 ** (7 * i);
      if (b < 128) return v % 2 ** 32;
    }
    throw new ProtobufDecodeError("varint longer than 10 bytes");
  }

  /** Calls `field` with each field's number and wire type; a field it does not take (false) is skipped. */
  fields(field: (no: number, wireType: number) => boolean): void {
    while (!this.done) {
      const key = this.varint();
      const no = Math.floor(key / 8);
      const wireType = key % 8;
      if (no === 0) throw new ProtobufDecodeError("field number 0");
      if (!field(no, wireType)) this.skip(wireType);
    }
  }
}

function expectWireType(got: number, want: number, what: string): void {
  if (got !== want) throw new ProtobufDecodeError(`${what} has wire type ${got}, expected ${want}`);
}

function readTensor(r: Reader): Tensor {
  const [s, e] = r.span();
  const t: Tensor = { dtype: 0, shape: [], data: EMPTY, scales: EMPTY, tileSize: 0 };
  const m = new Reader(r.buf, s, e);
  m.fields((no, wt) => {
    switch (no) {
      case 1:
        expectWireType(wt, VARINT, "Tensor.dtype");
        // An enum is an int32 on the wire (a negative one is ten bytes long); wire.ts refuses unknown dtypes.
        t.dtype = m.uint32() | 0;
        return true;
      case 2:
        m.repeatedVarint(wt, t.shape);
        return true;
      case 3:
        expectWireType(wt, LEN, "Tensor.data");
        t.data = m.bytes();
        return true;
      case 4:
        expectWireType(wt, LEN, "Tensor.scales");
        t.scales = m.bytes();
        return true;
      case 5:
        expectWireType(wt, VARINT, "Tensor.tile_size");
        t.tileSize = m.uint32();
        return true;
      default:
        return false;
    }
  });
  return t;
}

function readDispatchRequest(r: Reader): DispatchRequest {
  const [s, e] = r.span();
  const req: DispatchRequest = { layer: 0, activations: undefined, expertIds: [], tokenExpertCounts: [], weights: [], requestId: "", sharedExpertRows: [] };
  const m = new Reader(r.buf, s, e);
  m.fields((no, wt) => {
    switch (no) {
      case 1:
        expectWireType(wt, VARINT, "DispatchRequest.layer");
        req.layer = m.uint32();
        return true;
      case 2:
        expectWireType(wt, LEN, "DispatchRequest.activations");
        req.activations = readTensor(m);
        return true;
      case 3:
        m.repeatedVarint(wt, req.expertIds);
        return true;
      case 4:
        m.repeatedVarint(wt, req.tokenExpertCounts);
        return true;
      case 5:
        m.repeatedFloat(wt, req.weights);
        return true;
      case 6:
        expectWireType(wt, LEN, "DispatchRequest.request_id");
        req.requestId = m.string();
        return true;
      case 7:
        m.repeatedVarint(wt, req.sharedExpertRows);
        return true;
      default:
        return false;
    }
  });
  return req;
}

/** A DispatchStreamRequest from its bytes; tensor payloads are views of `buf`. */
export function decodeDispatchStreamRequest(buf: Buffer): DispatchStreamRequest {
  const msg: DispatchStreamRequest = { callId: 0, request: undefined };
  const r = new Reader(buf, 0, buf.length);
  r.fields((no, wt) => {
    if (no === 1) {
      expectWireType(wt, VARINT, "DispatchStreamRequest.call_id");
      msg.callId = r.varint();
      return true;
    }
    if (no === 2) {
      expectWireType(wt, LEN, "DispatchStreamRequest.request");
      msg.request = readDispatchRequest(r);
      return true;
    }
    return false;
  });
  return msg;
}

/** A DispatchStreamResponse from its bytes; the output tensor's payload is a view of `buf`. */
export function decodeDispatchStreamResponse(buf: Buffer): DispatchStreamResponse {
  const msg: DispatchStreamResponse = { callId: 0, response: undefined, errorCode: 0, errorMessage: "" };
  const r = new Reader(buf, 0, buf.length);
  r.fields((no, wt) => {
    switch (no) {
      case 1:
        expectWireType(wt, VARINT, "DispatchStreamResponse.call_id");
        msg.callId = r.varint();
        return true;
      case 2: {
        expectWireType(wt, LEN, "DispatchStreamResponse.response");
        const [s, e] = r.span();
        const response: { output: Tensor | undefined } = { output: undefined };
        const m = new Reader(buf, s, e);
        m.fields((n2, wt2) => {
          if (n2 !== 1) return false;
          expectWireType(wt2, LEN, "DispatchResponse.output");
          response.output = readTensor(m);
          return true;
        });
        msg.response = response;
        return true;
      }
      case 3:
        expectWireType(wt, VARINT, "DispatchStreamResponse.error_code");
        msg.errorCode = r.uint32();
        return true;
      case 4:
        expectWireType(wt, LEN, "DispatchStreamResponse.error_message");
        msg.errorMessage = r.string();
        return true;
      default:
        return false;
    }
  });
  return msg;
}

/**
 * ExpertHostService with DispatchStream's messages (de)serialized by this module; the other methods keep
 * the generated code. Servers register it (services/expert-host) and GrpcExpertHostTransport's client is
 * built from it: same method paths, same bytes on the wire.
 */
export const ExpertHostWireService = {
  ...ExpertHostService,
  dispatchStream: {
    ...ExpertHostService.dispatchStream,
    requestSerialize: encodeDispatchStreamRequest,
    requestDeserialize: decodeDispatchStreamRequest,
    responseSerialize: encodeDispatchStreamResponse,
    responseDeserialize: decodeDispatchStreamResponse,
  },
} as const satisfies typeof ExpertHostService;

/** A client of ExpertHostWireService, typed as the generated ExpertHostClient. */
export const ExpertHostWireClient = makeGenericClientConstructor(ExpertHostWireService, "moela.v1.ExpertHost") as unknown as typeof ExpertHostClient;
