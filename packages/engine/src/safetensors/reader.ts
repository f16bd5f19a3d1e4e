/**
 * Reader for the safetensors format (https://github.com/huggingface/safetensors):
 *   [u64 little-endian header length N][N bytes of JSON header][data section]
 * The header maps tensor names to {dtype, shape, data_offsets: [begin, end]} (offsets relative to the
 * data section) plus an optional "__metadata__" string->string map.
 *
 * Every malformed file gets a CheckpointError naming the file (and the tensor where one is at fault);
 * nothing here may throw a RangeError, read out of bounds or loop on hostile input.
 *
 * Size limits: Node cannot hold more than buffer.constants.MAX_LENGTH bytes (4 GiB on 64-bit Node 20)
 * in one Buffer and fs.readFileSync stops at 2 GiB, so the data is read with positioned reads in
 * chunks. A file that fits in one Buffer is read into one Buffer and every tensor's bytes are a view
 * into it; a bigger file (e.g. a 4.3 GB DeepSeek-V3 shard) is read tensor by tensor, each tensor in its
 * own Buffer. Only a single tensor larger than MAX_LENGTH is refused (with a CheckpointError).
 */
import * as fs from "node:fs";
import { constants as bufferConstants } from "node:buffer";
import { CheckpointError, errorMessage } from "@moela/core";
import { BF16_TO_F32, DTYPE_BYTES, F16_TO_F32, F8_E4M3_TO_F32, isDType, type DType } from "../tensor/dtype.js";

/** One tensor of a checkpoint with its raw little-endian bytes. */
export interface TensorInfo {
  readonly name: string;
  /** Path of the file the tensor was read from. */
  readonly file: string;
  readonly dtype: DType;
  readonly shape: readonly number[];
  /** Exactly numel * DTYPE_BYTES[dtype] bytes; a view into the file's Buffer (not necessarily aligned). */
  readonly bytes: Uint8Array;
}

/** A tensor's header entry, before its bytes are read. Offsets are relative to the data section. */
export interface TensorEntry {
  readonly name: string;
  readonly file: string;
  readonly dtype: DType;
  readonly shape: readonly number[];
  readonly begin: number;
  readonly end: number;
}

export interface SafetensorsHeader {
  readonly file: string;
  readonly fileSize: number;
  /** Absolute file offset of the data section: 8 + header length. */
  readonly dataStart: number;
  readonly metadata: Readonly<Record<string, string>> | null;
  /** In header order. */
  readonly tensors: ReadonlyMap<string, TensorEntry>;
}

export interface SafetensorsFile {
  readonly header: SafetensorsHeader;
  readonly tensors: Map<string, TensorInfo>;
}

/** The safetensors library refuses headers above 100 MB (MAX_HEADER_SIZE); so do we. */
export const MAX_HEADER_BYTES = 100_000_000;

/** Positioned reads are done in pieces well below the 2 GiB limit of one read(2) call in Node. */
const READ_CHUNK_BYTES = 1 << 30;

/** Dtype names the safetensors format defines, so an unsupported one can be told from garbage. */
const KNOWN_SAFETENSORS_DTYPES = new Set([
  "BOOL",
  "F4",
  "F6_E2M3",
  "F6_E3M2",
  "U8",
  "I8",
  "F8_E5M2",
  "F8_E4M3",
  "F8_E8M0",
  "I16",
  "U16",
  "F16",
  "BF16",
  "I32",
  "U32",
  "F32",
  "C64",
  "F64",
  "I64",
  "U64",
]);
const SUPPORTED = Object.keys(DTYPE_BYTES).join(", ");

export interface ReadOptions {
  /**
   * Largest Buffer to allocate for a whole file; bigger files are read tensor by tensor.
   * Defaults to buffer.constants.MAX_LENGTH; tests lower it to exercise the piecewise path.
   */
  readonly maxBufferBytes?: number;
}

function isPlainObject(v: unknown): v is Record<string, unknown> {
  return typeof v === "object" && v !== null && !Array.isArray(v);
}

function fsError(file: string, what: string, e: unknown): CheckpointError {
  const code = (e as NodeJS.ErrnoException)?.code;
  const msg = code === "ENOENT" ? "file does not exist" : `${what}: ${(e as Error)?.message ?? String(e)}`;
  return new CheckpointError(file, msg, undefined, { cause: e });
}

/** Read exactly `length` bytes at `position` into `target[offset..]`, failing on a short file. */
function readFully(fd: number, file: string, target: Uint8Array, offset: number, length: number, position: number): void {
  let done = 0;
  while (done < length) {
    const want = Math.min(READ_CHUNK_BYTES, length - done);
    let n: number;
    try {
      n = fs.readSync(fd, target, offset + done, want, position + done);
    } catch (e) {
      throw fsError(file, "read failed", e);
    }
    if (n === 0) throw new CheckpointError(file, `file ended after ${position + done} bytes while reading ${length} bytes at ${position} (truncated?)`);
    done += n;
  }
}

function allocate(file: string, bytes: number, tensor?: string): Buffer {
  if (bytes > bufferConstants.MAX_LENGTH) {
    throw new CheckpointError(file, `needs a single buffer of ${bytes} bytes, more than Node's limit of ${bufferConstants.MAX_LENGTH}`, tensor);
  }
  try {
    return Buffer.allocUnsafeSlow(bytes); // not from the shared pool: each read owns its ArrayBuffer
  } catch (e) {
    throw new CheckpointError(file, `cannot allocate ${bytes} bytes: ${errorMessage(e)}`, tensor, { cause: e });
  }
}

function nonNegInt(v: unknown): v is number {
  return typeof v === "number" && Number.isSafeInteger(v) && v >= 0;
}

/**
 * Validate a parsed header against the size of the data section. Pure; exported for tests and for
 * readers that get the bytes from elsewhere.
 */
export function parseSafetensorsHeader(file: string, json: unknown, dataSize: number, fileSize: number, dataStart: number): SafetensorsHeader {
  if (!isPlainObject(json)) {
    throw new CheckpointError(file, `header must be a JSON object, got ${Array.isArray(json) ? "an array" : json === null ? "null" : typeof json}`);
  }
  let metadata: Record<string, string> | null = null;
  const tensors = new Map<string, TensorEntry>();
  for (const [name, raw] of Object.entries(json)) {
    if (name === "__metadata__") {
      if (!isPlainObject(raw) || !Object.values(raw).every((v) => typeof v === "string")) {
        throw new CheckpointError(file, "__metadata__ must be an object mapping strings to strings");
      }
      metadata = raw as Record<string, string>;
      continue;
    }
    if (!isPlainObject(raw)) throw new CheckpointError(file, "header entry is not an object", name);
    const dtype = raw["dtype"];
    if (typeof dtype !== "string") throw new CheckpointError(file, `dtype must be a string, got ${JSON.stringify(dtype)}`, name);
    if (!isDType(dtype)) {
      const kind = KNOWN_SAFETENSORS_DTYPES.has(dtype) ? "unsupported" : "unknown";
      throw new CheckpointError(file, `${kind} dtype '${dtype}' (the engine reads ${SUPPORTED})`, name);
    }
    const shape = raw["shape"];
    if (!Array.isArray(shape) || !shape.every(nonNegInt)) {
      throw new CheckpointError(file, `shape must be an array of non-negative integers, got ${JSON.stringify(shape)}`, name);
    }
    let numel = 1;
    for (const d of shape as number[]) {
      numel *= d;
      if (!Number.isSafeInteger(numel)) throw new CheckpointError(file, `shape ${JSON.stringify(shape)} has too many elements`, name);
    }
    const offsets = raw["data_offsets"];
    if (!Array.isArray(offsets) || offsets.length !== 2 || !nonNegInt(offsets[0]) || !nonNegInt(offsets[1])) {
      throw new CheckpointError(file, `data_offsets must be two non-negative integers, got ${JSON.stringify(offsets)}`, name);
    }
    const [begin, end] = offsets as [number, number];
    if (begin > end) throw new CheckpointError(file, `data_offsets [${begin}, ${end}] begin after they end`, name);
    if (end > dataSize) {
      throw new CheckpointError(file, `data_offsets [${begin}, ${end}] run past the end of the data section (${dataSize} bytes)`, name);
    }
    const nbytes = numel * DTYPE_BYTES[dtype];
    if (!Number.isSafeInteger(nbytes) || nbytes !== end - begin) {
      throw new CheckpointError(
        file,
        `shape ${JSON.stringify(shape)} of ${dtype} needs ${nbytes} bytes but data_offsets [${begin}, ${end}] hold ${end - begin}`,
        name,
      );
    }
    tensors.set(name, { name, file, dtype, shape: Object.freeze([...(shape as number[])]), begin, end });
  }
  // The Python library writes tensors back to back and also rejects gaps; we only reject overlaps,
  // which are what would make two tensors alias each other's bytes.
  const byStart = [...tensors.values()].filter((t) => t.end > t.begin).sort((a, b) => a.begin - b.begin || a.end - b.end);
  for (let i = 1; i < byStart.length; i++) {
    const prev = byStart[i - 1]!;
    const cur = byStart[i]!;
    if (cur.begin < prev.end) {
      throw new CheckpointError(file, `data_offsets [${cur.begin}, ${cur.end}] overlap those of '${prev.name}' [${prev.begin}, ${prev.end}]`, cur.name);
    }
  }
  return { file, fileSize, dataStart, metadata, tensors };
}

function withFile<T>(file: string, fn: (fd: number, size: number) => T): T {
  let fd: number;
  try {
    fd = fs.openSync(file, "r");
  } catch (e) {
    throw fsError(file, "cannot open", e);
  }
  try {
    let size: number;
    try {
      const st = fs.fstatSync(fd);
      if (!st.isFile()) throw new CheckpointError(file, "not a regular file");
      size = st.size;
    } catch (e) {
      if (e instanceof CheckpointError) throw e;
      throw fsError(file, "cannot stat", e);
    }
    return fn(fd, size);
  } finally {
    fs.closeSync(fd);
  }
}

function readHeaderFrom(fd: number, file: string, size: number): SafetensorsHeader {
  if (size < 8) throw new CheckpointError(file, `file is ${size} bytes, shorter than the 8-byte header length`);
  const lenBuf = Buffer.alloc(8);
  readFully(fd, file, lenBuf, 0, 8, 0);
  const headerLen = lenBuf.readBigUInt64LE(0);
  if (headerLen > BigInt(MAX_HEADER_BYTES)) {
    throw new CheckpointError(file, `header length ${headerLen} is absurd (limit ${MAX_HEADER_BYTES} bytes); not a safetensors file?`);
  }
  const n = Number(headerLen);
  if (8 + n > size) throw new CheckpointError(file, `header length ${n} runs past the end of the file (${size} bytes)`);
  const headerBytes = Buffer.alloc(n);
  readFully(fd, file, headerBytes, 0, n, 8);
  let text: string;
  try {
    text = new TextDecoder("utf-8", { fatal: true }).decode(headerBytes);
  } catch {
    throw new CheckpointError(file, "header is not valid UTF-8");
  }
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch (e) {
    throw new CheckpointError(file, `header is not valid JSON: ${errorMessage(e)}`);
  }
  return parseSafetensorsHeader(file, json, size - 8 - n, size, 8 + n);
}

/** Read and validate only the header of a safetensors file (cheap: the data is not read). */
export function readSafetensorsHeader(file: string): SafetensorsHeader {
  return withFile(file, (fd, size) => readHeaderFrom(fd, file, size));
}

function readData(fd: number, header: SafetensorsHeader, names: Iterable<string> | null, opts: ReadOptions): Map<string, TensorInfo> {
  const { file } = header;
  const wanted =
    names === null
      ? [...header.tensors.values()]
      : [...names].map((n) => {
          const e = header.tensors.get(n);
          if (!e) throw new CheckpointError(file, "missing tensor", n);
          return e;
        });
  const out = new Map<string, TensorInfo>();
  const dataSize = header.fileSize - header.dataStart;
  const maxBuffer = Math.min(opts.maxBufferBytes ?? bufferConstants.MAX_LENGTH, bufferConstants.MAX_LENGTH);
  if (names === null && dataSize <= maxBuffer) {
    const data = allocate(file, dataSize);
    readFully(fd, file, data, 0, dataSize, header.dataStart);
    for (const e of wanted) {
      out.set(e.name, { name: e.name, file, dtype: e.dtype, shape: e.shape, bytes: data.subarray(e.begin, e.end) });
    }
    return out;
  }
  for (const e of wanted) {
    const bytes = allocate(file, e.end - e.begin, e.name);
    readFully(fd, file, bytes, 0, e.end - e.begin, header.dataStart + e.begin);
    out.set(e.name, { name: e.name, file, dtype: e.dtype, shape: e.shape, bytes });
  }
  return out;
}

/** Read a safetensors file: header, metadata and every tensor's bytes. */
export function readSafetensors(file: string, opts: ReadOptions = {}): SafetensorsFile {
  return withFile(file, (fd, size) => {
    const header = readHeaderFrom(fd, file, size);
    return { header, tensors: readData(fd, header, null, opts) };
  });
}

/** Read every tensor of a safetensors file, keyed by name (header order). */
export function readSafetensorsFile(file: string, opts: ReadOptions = {}): Map<string, TensorInfo> {
  return readSafetensors(file, opts).tensors;
}

/**
 * Read the bytes of some tensors of a file whose header was read before. Each tensor gets its own
 * Buffer, so this suits picking a few tensors (e.g. one expert) out of a large shard.
 */
export function readTensorsFrom(header: SafetensorsHeader, names: Iterable<string>): Map<string, TensorInfo> {
  return withFile(header.file, (fd, size) => {
    if (size !== header.fileSize) {
      throw new CheckpointError(header.file, `file changed size since its header was read (${header.fileSize} -> ${size} bytes)`);
    }
    return readData(fd, header, names, {});
  });
}

function numel(shape: readonly number[]): number {
  let n = 1;
  for (const d of shape) n *= d;
  return n;
}

const LITTLE_ENDIAN_HOST = new Uint8Array(new Uint16Array([1]).buffer)[0] === 1;

/**
 * Decode a tensor to float32, element by element (a fresh array the caller owns).
 * F64 values are rounded to float32. The bytes may sit at any offset of their Buffer (safetensors
 * does not promise alignment to the element size), so typed-array views are used only when aligned.
 */
export function toFloat32(t: TensorInfo): Float32Array {
  const n = numel(t.shape);
  const { bytes } = t;
  if (bytes.length !== n * DTYPE_BYTES[t.dtype]) {
    throw new CheckpointError(t.file, `holds ${bytes.length} bytes, ${t.dtype}${JSON.stringify(t.shape)} needs ${n * DTYPE_BYTES[t.dtype]}`, t.name);
  }
  const out = new Float32Array(n);
  const off = bytes.byteOffset;
  switch (t.dtype) {
    case "F32": {
      if (LITTLE_ENDIAN_HOST && off % 4 === 0) {
        out.set(new Float32Array(bytes.buffer, off, n));
      } else {
        const dv = new DataView(bytes.buffer, off, bytes.length);
        for (let i = 0; i < n; i++) out[i] = dv.getFloat32(i * 4, true);
      }
      return out;
    }
    case "F64": {
      if (LITTLE_ENDIAN_HOST && off % 8 === 0) {
        const src = new Float64Array(bytes.buffer, off, n);
        for (let i = 0; i < n; i++) out[i] = src[i]!;
      } else {
        const dv = new DataView(bytes.buffer, off, bytes.length);
        for (let i = 0; i < n; i++) out[i] = dv.getFloat64(i * 8, true);
      }
      return out;
    }
    case "BF16":
    case "F16": {
      const table = t.dtype === "BF16" ? BF16_TO_F32 : F16_TO_F32;
      if (LITTLE_ENDIAN_HOST && off % 2 === 0) {
        const src = new Uint16Array(bytes.buffer, off, n);
        for (let i = 0; i < n; i++) out[i] = table[src[i]!]!;
      } else {
        for (let i = 0; i < n; i++) out[i] = table[bytes[2 * i]! | (bytes[2 * i + 1]! << 8)]!;
      }
      return out;
    }
    case "F8_E4M3": {
      for (let i = 0; i < n; i++) out[i] = F8_E4M3_TO_F32[bytes[i]!]!;
      return out;
    }
  }
}
