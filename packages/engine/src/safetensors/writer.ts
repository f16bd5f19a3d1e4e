/**
 * Writer for safetensors files and Hugging Face style sharded checkpoints.
 *
 * Output is byte-for-byte deterministic and laid out the way the Rust `safetensors` crate (behind the
 * Python library) lays it out: tensors sorted by descending dtype (F64, F32, BF16, F16, F8_E4M3, the
 * crate's `Dtype` enum order, which keeps every tensor aligned to its element size) and then by name,
 * packed back to back; compact JSON header with "__metadata__" first and tensors in data order, padded
 * with spaces to a multiple of 8 bytes.
 */
import * as fs from "node:fs";
import * as path from "node:path";
import { InvalidArgumentError } from "@moela/core";
import { DTYPE_BYTES, isDType, type DType } from "../tensor/dtype.js";

export interface TensorToWrite {
  readonly name: string;
  readonly dtype: DType;
  readonly shape: readonly number[];
  /** Little-endian element bytes, numel * DTYPE_BYTES[dtype] long. */
  readonly data: Uint8Array;
}

/** Rank of each dtype in the safetensors crate's `Dtype` enum (files are sorted by it, descending). */
const DTYPE_ORDER: Readonly<Record<DType, number>> = { F8_E4M3: 0, F16: 1, BF16: 2, F32: 3, F64: 4 };

function validate(tensors: readonly TensorToWrite[]): void {
  const seen = new Set<string>();
  for (const t of tensors) {
    if (t.name === "__metadata__") throw new InvalidArgumentError("a tensor cannot be named __metadata__");
    if (seen.has(t.name)) throw new InvalidArgumentError(`duplicate tensor name '${t.name}'`);
    seen.add(t.name);
    if (!isDType(t.dtype)) throw new InvalidArgumentError(`tensor '${t.name}': unsupported dtype '${String(t.dtype)}'`);
    let n = 1;
    for (const d of t.shape) {
      if (!Number.isSafeInteger(d) || d < 0) throw new InvalidArgumentError(`tensor '${t.name}': bad shape ${JSON.stringify(t.shape)}`);
      n *= d;
    }
    if (t.data.length !== n * DTYPE_BYTES[t.dtype]) {
      throw new InvalidArgumentError(`tensor '${t.name}': ${t.dtype}${JSON.stringify(t.shape)} needs ${n * DTYPE_BYTES[t.dtype]} bytes, got ${t.data.length}`);
    }
  }
}

function byteCompare(a: string, b: string): number {
  // Rust compares Strings by UTF-8 bytes; for the ASCII names of checkpoints this is code-unit order.
  return a < b ? -1 : a > b ? 1 : 0;
}

/** Header bytes (length prefix included) and the tensors in the order their data follows. */
export function encodeSafetensorsHeader(
  tensors: readonly TensorToWrite[],
  metadata?: Readonly<Record<string, string>>,
): { header: Buffer; ordered: TensorToWrite[] } {
  validate(tensors);
  const ordered = [...tensors].sort((a, b) => DTYPE_ORDER[b.dtype] - DTYPE_ORDER[a.dtype] || byteCompare(a.name, b.name));
  const obj: Record<string, unknown> = {};
  if (metadata) {
    const meta: Record<string, string> = {};
    for (const k of Object.keys(metadata).sort(byteCompare)) {
      const v = metadata[k];
      if (typeof v !== "string") throw new InvalidArgumentError(`metadata '${k}' must be a string`);
      meta[k] = v;
    }
    obj["__metadata__"] = meta;
  }
  let offset = 0;
  for (const t of ordered) {
    obj[t.name] = { dtype: t.dtype, shape: [...t.shape], data_offsets: [offset, offset + t.data.length] };
    offset += t.data.length;
  }
  let json = Buffer.from(JSON.stringify(obj), "utf8");
  const pad = (8 - (json.length % 8)) % 8;
  if (pad > 0) json = Buffer.concat([json, Buffer.alloc(pad, 0x20)]);
  const header = Buffer.alloc(8 + json.length);
  header.writeBigUInt64LE(BigInt(json.length), 0);
  json.copy(header, 8);
  return { header, ordered };
}

/** Write one safetensors file (via a temporary file and a rename, so readers never see half a file). */
export function writeSafetensorsFile(file: string, tensors: readonly TensorToWrite[], metadata?: Readonly<Record<string, string>>): void {
  const { header, ordered } = encodeSafetensorsHeader(tensors, metadata);
  const tmp = `${file}.tmp-${process.pid}`;
  const fd = fs.openSync(tmp, "w");
  try {
    writeAll(fd, header);
    for (const t of ordered) writeAll(fd, t.data);
  } catch (e) {
    fs.closeSync(fd);
    fs.rmSync(tmp, { force: true });
    throw e;
  }
  fs.closeSync(fd);
  fs.renameSync(tmp, file);
}

function writeAll(fd: number, data: Uint8Array): void {
  let done = 0;
  while (done < data.length) {
    done += fs.writeSync(fd, data, done, Math.min(data.length - done, 1 << 30));
  }
}

export interface ShardOptions {
  /** Largest data size of one shard; a tensor bigger than this gets a shard of its own. */
  readonly maxShardBytes: number;
  /** safetensors "__metadata__" of every file; defaults to {format: "pt"} like transformers. */
  readonly metadata?: Readonly<Record<string, string>>;
}

export interface ShardedCheckpoint {
  /** File names written, relative to the folder. */
  readonly files: string[];
  /** "model.safetensors.index.json", or null when everything went into a single model.safetensors. */
  readonly indexFile: string | null;
  /** Sum of the tensors' data bytes (the index's metadata.total_size). */
  readonly totalSize: number;
}

export const SAFETENSORS_SINGLE_FILE = "model.safetensors";
export const SAFETENSORS_INDEX_FILE = "model.safetensors.index.json";
const SHARD_NAME = /^model-\d{5}-of-\d{5}\.safetensors$/;

/**
 * Write tensors the way transformers' save_pretrained does: greedily, in the given order, into shards
 * of at most maxShardBytes named model-0000i-of-0000N.safetensors plus model.safetensors.index.json
 * ({"metadata": {"total_size"}, "weight_map"} with sorted keys, 2-space indent), or a single
 * model.safetensors when everything fits. Checkpoint files left in the folder by an earlier write are
 * removed first so the folder never holds a mix of two checkpoints.
 */
export function writeShardedCheckpoint(dir: string, tensors: readonly TensorToWrite[], opts: ShardOptions): ShardedCheckpoint {
  if (!(opts.maxShardBytes > 0)) throw new InvalidArgumentError(`maxShardBytes must be positive, got ${opts.maxShardBytes}`);
  validate(tensors);
  const metadata = opts.metadata ?? { format: "pt" };
  const shards: TensorToWrite[][] = [];
  let current: TensorToWrite[] = [];
  let currentBytes = 0;
  for (const t of tensors) {
    if (current.length > 0 && currentBytes + t.data.length > opts.maxShardBytes) {
      shards.push(current);
      current = [];
      currentBytes = 0;
    }
    current.push(t);
    currentBytes += t.data.length;
  }
  if (current.length > 0 || shards.length === 0) shards.push(current);

  fs.mkdirSync(dir, { recursive: true });
  for (const f of fs.readdirSync(dir)) {
    if (f === SAFETENSORS_SINGLE_FILE || f === SAFETENSORS_INDEX_FILE || SHARD_NAME.test(f)) fs.rmSync(path.join(dir, f));
  }
  const totalSize = tensors.reduce((s, t) => s + t.data.length, 0);
  if (shards.length === 1) {
    writeSafetensorsFile(path.join(dir, SAFETENSORS_SINGLE_FILE), shards[0]!, metadata);
    return { files: [SAFETENSORS_SINGLE_FILE], indexFile: null, totalSize };
  }
  const n = shards.length;
  const pad = (i: number): string => String(i).padStart(5, "0");
  const files: string[] = [];
  const weightMap: Record<string, string> = {};
  shards.forEach((shard, i) => {
    const name = `model-${pad(i + 1)}-of-${pad(n)}.safetensors`;
    writeSafetensorsFile(path.join(dir, name), shard, metadata);
    files.push(name);
    for (const t of shard) weightMap[t.name] = name;
  });
  const sortedMap: Record<string, string> = {};
  for (const k of Object.keys(weightMap).sort(byteCompare)) sortedMap[k] = weightMap[k]!;
  const index = { metadata: { total_size: totalSize }, weight_map: sortedMap };
  fs.writeFileSync(path.join(dir, SAFETENSORS_INDEX_FILE), JSON.stringify(index, null, 2) + "\n");
  return { files, indexFile: SAFETENSORS_INDEX_FILE, totalSize };
}
