/**
 * Library types <-> moela.v1 wire types for the ExpertHost service (proto/moela/v1/expert.proto).
 * Used by the gRPC transport (client side) and services/expert-host/src/handlers.ts (server side);
 * nothing else in the platform sees the wire types.
 *
 * A matrix travels as a Tensor: dtype from the codec (f32 -> F32, bf16 -> BF16, fp8-tile ->
 * F8_E4M3, logfmt8 -> LOGFMT8), shape [rows, cols], data = the codec's payload bytes, scales = its
 * per-tile float32 metadata (little-endian), tile_size 128 for the tiled dtypes and 0 otherwise.
 * Everything received is checked before use: a malformed tensor is an InvalidArgumentError naming
 * the field, never a crash.
 */
import { InvalidArgumentError } from "@moela/core";
import { DType, Precision, type DispatchRequest, type InfoResponse, type Tensor } from "@moela/proto-gen";
import type { DispatchCodecName, EncodedActivations } from "../codec/index.js";
import type { ExpertDispatchRequest, HostInfo } from "../host.js";
import { DISPATCH_TILE, encodedLayout } from "../layout.js";
import { PRECISION_NAMES, type PrecisionName } from "../profile.js";

const DTYPE_OF_CODEC: Readonly<Record<DispatchCodecName, DType>> = {
  f32: DType.DTYPE_F32,
  bf16: DType.DTYPE_BF16,
  "fp8-tile": DType.DTYPE_F8_E4M3,
  logfmt8: DType.DTYPE_LOGFMT8,
};

const CODEC_OF_DTYPE: ReadonlyMap<DType, DispatchCodecName> = new Map((Object.entries(DTYPE_OF_CODEC) as [DispatchCodecName, DType][]).map(([c, d]) => [d, c]));

const TILED: ReadonlySet<DispatchCodecName> = new Set(["fp8-tile", "logfmt8"]);

const HOST_LITTLE_ENDIAN = new Uint8Array(new Uint32Array([1]).buffer)[0] === 1;

/** A Buffer viewing `bytes` without copying. */
function asBuffer(bytes: Uint8Array): Buffer {
  return Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength);
}

function floatsToBytes(v: Float32Array): Buffer {
  if (HOST_LITTLE_ENDIAN) return Buffer.from(v.buffer, v.byteOffset, v.byteLength);
  const b = Buffer.alloc(4 * v.length);
  for (let i = 0; i < v.length; i++) b.writeFloatLE(v[i]!, 4 * i);
  return b;
}

function bytesToFloats(b: Uint8Array): Float32Array {
  const n = b.byteLength / 4;
  const out = new Float32Array(n);
  // Copy through a DataView: the bytes may sit at any offset of the received message.
  const dv = new DataView(b.buffer, b.byteOffset, b.byteLength);
  for (let i = 0; i < n; i++) out[i] = dv.getFloat32(4 * i, true);
  return out;
}

/** An encoded matrix as a wire Tensor (no copy of the payload on little-endian hosts). */
export function toTensor(enc: EncodedActivations): Tensor {
  return {
    dtype: DTYPE_OF_CODEC[enc.codec],
    shape: [enc.rows, enc.cols],
    data: asBuffer(enc.data),
    scales: floatsToBytes(enc.meta),
    tileSize: TILED.has(enc.codec) ? DISPATCH_TILE : 0,
  };
}

/**
 * A received Tensor as an encoded [rows, cols] matrix, checked: present, a dispatch dtype, two
 * dimensions, the tile size of its dtype, and data and scales exactly as long as the shape needs.
 * `field` names the field in errors ("activations", "output").
 */
export function fromTensor(t: Tensor | undefined, field: string): EncodedActivations {
  if (t === undefined) throw new InvalidArgumentError(`${field} is missing`);
  const codec = CODEC_OF_DTYPE.get(t.dtype);
  if (codec === undefined) {
    throw new InvalidArgumentError(`${field}.dtype ${DType[t.dtype] ?? t.dtype} is not a dispatch format (F32, BF16, F8_E4M3, LOGFMT8)`);
  }
  if (t.shape.length !== 2) throw new InvalidArgumentError(`${field}.shape must be [tokens, hidden], got [${t.shape.join(", ")}]`);
  const [rows, cols] = t.shape as [number, number];
  if (cols < 1) throw new InvalidArgumentError(`${field}.shape [${rows}, ${cols}] has no columns`);
  const wantTile = TILED.has(codec) ? DISPATCH_TILE : 0;
  if (t.tileSize !== wantTile) {
    throw new InvalidArgumentError(`${field}.tile_size is ${t.tileSize}, ${DType[t.dtype]} needs ${wantTile}`);
  }
  const { dataBytesPerRow, metaPerRow } = encodedLayout(codec, cols);
  if (t.data.length !== rows * dataBytesPerRow) {
    throw new InvalidArgumentError(`${field}.data has ${t.data.length} bytes, [${rows}, ${cols}] in ${DType[t.dtype]} needs ${rows * dataBytesPerRow}`);
  }
  if (t.scales.length !== 4 * rows * metaPerRow) {
    throw new InvalidArgumentError(`${field}.scales has ${t.scales.length} bytes, [${rows}, ${cols}] in ${DType[t.dtype]} needs ${4 * rows * metaPerRow}`);
  }
  return { codec, rows, cols, data: t.data, meta: bytesToFloats(t.scales) };
}

/** A library dispatch request as the wire message. */
export function toDispatchRequest(req: ExpertDispatchRequest): DispatchRequest {
  return {
    layer: req.layer,
    activations: toTensor(req.activations),
    expertIds: Array.from(req.expertIds),
    tokenExpertCounts: Array.from(req.tokenExpertCounts),
    weights: Array.from(req.weights),
    requestId: req.requestId ?? "",
    sharedExpertRows: req.sharedExpertRows === undefined ? [] : Array.from(req.sharedExpertRows),
  };
}

/**
 * A received DispatchRequest as the library's request. Checks the tensor (fromTensor); the host
 * core checks everything that needs the model (layer, ownership, counts, weights).
 */
export function fromDispatchRequest(msg: DispatchRequest): ExpertDispatchRequest {
  const activations = fromTensor(msg.activations, "activations");
  return {
    layer: msg.layer,
    rows: activations.rows,
    cols: activations.cols,
    activations,
    tokenExpertCounts: msg.tokenExpertCounts,
    expertIds: msg.expertIds,
    weights: msg.weights,
    ...(msg.requestId === "" ? {} : { requestId: msg.requestId }),
    ...(msg.sharedExpertRows.length === 0 ? {} : { sharedExpertRows: msg.sharedExpertRows }),
  };
}

const PRECISION_OF_NAME: Readonly<Record<PrecisionName, Precision>> = {
  exact: Precision.PRECISION_EXACT,
  paper: Precision.PRECISION_PAPER,
  "paper-logfmt8": Precision.PRECISION_PAPER_LOGFMT8,
};

export function toWirePrecision(p: PrecisionName): Precision {
  return PRECISION_OF_NAME[p];
}

export function fromWirePrecision(p: Precision): PrecisionName {
  for (const [name, wire] of Object.entries(PRECISION_OF_NAME) as [PrecisionName, Precision][]) if (wire === p) return name;
  throw new InvalidArgumentError(`precision ${Precision[p] ?? p} is not one this build serves (${PRECISION_NAMES.join(", ")})`);
}

export function toInfoResponse(info: HostInfo): InfoResponse {
  return {
    shardIndex: info.shardIndex,
    shardCount: info.shardCount,
    layers: info.layers.map((l) => ({ layer: l.layer, expertIds: [...l.expertIds] })),
    modelId: info.modelId,
    precision: toWirePrecision(info.precision),
    hiddenSize: info.hiddenSize,
    sharedExpert: info.sharedExpert,
  };
}

export function fromInfoResponse(msg: InfoResponse): HostInfo {
  return {
    shardIndex: msg.shardIndex,
    shardCount: msg.shardCount,
    layers: msg.layers.map((l) => ({ layer: l.layer, expertIds: l.expertIds })),
    modelId: msg.modelId,
    precision: fromWirePrecision(msg.precision),
    hiddenSize: msg.hiddenSize,
    sharedExpert: msg.sharedExpert,
  };
}
