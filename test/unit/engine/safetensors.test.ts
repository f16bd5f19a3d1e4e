import * as fs from "node:fs";
import * as path from "node:path";
import { describe, expect, it } from "vitest";
import {
  CheckpointTensors,
  F8_E4M3_TO_F32,
  dequantFp8Tensor,
  encodeSafetensorsHeader,
  f32ToBf16Bits,
  f32ToF16Bits,
  f32ToF8E4M3Bits,
  quantizeFp8Block,
  readSafetensors,
  readSafetensorsFile,
  readSafetensorsHeader,
  toFloat32,
  writeSafetensorsFile,
  writeShardedCheckpoint,
  type DType,
  type TensorToWrite,
} from "@moela/engine";
import { tmpDirsForFile } from "../../helpers/tmp.js";

const tmpDir = tmpDirsForFile("moela-st-");

/** Encode float values in a dtype, little-endian, the straightforward way (independent of the reader). */
function encode(dtype: DType, values: number[]): Uint8Array {
  const b = Buffer.alloc(values.length * { F64: 8, F32: 4, F16: 2, BF16: 2, F8_E4M3: 1 }[dtype]);
  values.forEach((v, i) => {
    if (dtype === "F64") b.writeDoubleLE(v, i * 8);
    else if (dtype === "F32") b.writeFloatLE(v, i * 4);
    else if (dtype === "F16") b.writeUInt16LE(f32ToF16Bits(v), i * 2);
    else if (dtype === "BF16") b.writeUInt16LE(f32ToBf16Bits(v), i * 2);
    else b[i] = f32ToF8E4M3Bits(v);
  });
  return new Uint8Array(b);
}

// Values exactly representable in every dtype, so decoding must give them back exactly.
const VALUES = [0, 1, -2, 0.5, 1.5, -0.25, 3, 448, -448, 0.125, 2 ** -6, 6];

describe("safetensors round trip", () => {
  const dtypes: DType[] = ["F64", "F32", "F16", "BF16", "F8_E4M3"];
  it.each(dtypes)("writes and reads %s exactly", (dtype) => {
    const file = path.join(tmpDir(), "x.safetensors");
    const data = encode(dtype, VALUES);
    writeSafetensorsFile(file, [{ name: "w", dtype, shape: [3, 4], data }]);
    const t = readSafetensorsFile(file).get("w")!;
    expect(t.dtype).toBe(dtype);
    expect(t.shape).toEqual([3, 4]);
    expect(t.file).toBe(file);
    expect(Buffer.from(t.bytes).equals(Buffer.from(data))).toBe(true);
    expect(Array.from(toFloat32(t))).toEqual(VALUES);
  });

  it("decodes every F8_E4M3 code through the table", () => {
    const file = path.join(tmpDir(), "f8.safetensors");
    const data = Uint8Array.from({ length: 256 }, (_, i) => i);
    writeSafetensorsFile(file, [{ name: "all", dtype: "F8_E4M3", shape: [16, 16], data }]);
    const f = toFloat32(readSafetensorsFile(file).get("all")!);
    for (let i = 0; i < 256; i++) expect(Object.is(f[i], F8_E4M3_TO_F32[i]) || (Number.isNaN(f[i]!) && Number.isNaN(F8_E4M3_TO_F32[i]!))).toBe(true);
  });

  it("rounds F64 to the nearest float32", () => {
    const file = path.join(tmpDir(), "f64.safetensors");
    writeSafetensorsFile(file, [{ name: "x", dtype: "F64", shape: [1], data: encode("F64", [0.1]) }]);
    expect(toFloat32(readSafetensorsFile(file).get("x")!)[0]).toBe(Math.fround(0.1));
  });

  it("writes the same bytes as the Python library for a one-tensor file", () => {
    const file = path.join(tmpDir(), "py.safetensors");
    writeSafetensorsFile(file, [{ name: "a", dtype: "F32", shape: [2], data: encode("F32", [1, 2]) }], { format: "pt" });
    // safetensors.torch.save_file({"a": torch.tensor([1., 2.])}, f, metadata={"format": "pt"})
    const json = '{"__metadata__":{"format":"pt"},"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}';
    const padded = json + " ".repeat((8 - (json.length % 8)) % 8);
    const expected = Buffer.concat([Buffer.alloc(8), Buffer.from(padded), Buffer.from(encode("F32", [1, 2]))]);
    expected.writeBigUInt64LE(BigInt(padded.length), 0);
    expect(fs.readFileSync(file).equals(expected)).toBe(true);
  });

  it("orders tensors by descending dtype then name, header padded to 8 bytes, output deterministic", () => {
    const tensors: TensorToWrite[] = [
      { name: "b8", dtype: "F8_E4M3", shape: [3], data: encode("F8_E4M3", [1, 2, 3]) },
      { name: "a16", dtype: "BF16", shape: [1], data: encode("BF16", [1]) },
      { name: "z32", dtype: "F32", shape: [1], data: encode("F32", [1]) },
      { name: "c32", dtype: "F32", shape: [1], data: encode("F32", [2]) },
      { name: "h16", dtype: "F16", shape: [1], data: encode("F16", [1]) },
      { name: "d64", dtype: "F64", shape: [1], data: encode("F64", [1]) },
    ];
    const { header, ordered } = encodeSafetensorsHeader(tensors, { b: "2", a: "1" });
    expect(ordered.map((t) => t.name)).toEqual(["d64", "c32", "z32", "a16", "h16", "b8"]);
    expect((header.length - 8) % 8).toBe(0);
    const text = header.subarray(8).toString("utf8");
    expect(text.startsWith('{"__metadata__":{"a":"1","b":"2"},"d64":')).toBe(true);
    const d1 = tmpDir();
    const d2 = tmpDir();
    writeSafetensorsFile(path.join(d1, "m.safetensors"), tensors, { b: "2", a: "1" });
    writeSafetensorsFile(path.join(d2, "m.safetensors"), [...tensors].reverse(), { a: "1", b: "2" });
    expect(fs.readFileSync(path.join(d1, "m.safetensors")).equals(fs.readFileSync(path.join(d2, "m.safetensors")))).toBe(true);
    const read = readSafetensors(path.join(d1, "m.safetensors"));
    expect(read.header.metadata).toEqual({ a: "1", b: "2" });
    expect(read.tensors.get("c32")!.bytes.byteOffset % 4).toBe(0);
  });

  it("reads tensors at unaligned offsets (copying instead of viewing)", () => {
    // Hand-built file: a 3-byte F8 tensor first, so the F32/F16/F64 tensors start at odd offsets,
    // and a header length that is not a multiple of 8.
    const f8 = encode("F8_E4M3", [1, 2, 3]);
    const f32 = encode("F32", [1.5, -2.25]);
    const f16 = encode("F16", [0.5, 3]);
    const f64 = encode("F64", [6]);
    const bf16 = encode("BF16", [-0.125]);
    const parts = [f8, f32, f16, f64, bf16];
    const names = ["a", "b", "c", "d", "e"];
    const dtypes = ["F8_E4M3", "F32", "F16", "F64", "BF16"];
    const shapes = [[3], [2], [2], [1], [1]];
    const header: Record<string, unknown> = {};
    let off = 0;
    parts.forEach((p, i) => {
      header[names[i]!] = { dtype: dtypes[i], shape: shapes[i], data_offsets: [off, off + p.length] };
      off += p.length;
    });
    const json = Buffer.from(JSON.stringify(header) + " "); // odd padding on purpose
    const len = Buffer.alloc(8);
    len.writeBigUInt64LE(BigInt(json.length));
    const file = path.join(tmpDir(), "unaligned.safetensors");
    fs.writeFileSync(file, Buffer.concat([len, json, ...parts]));
    const m = readSafetensorsFile(file);
    expect(m.get("b")!.bytes.byteOffset % 4).not.toBe(0);
    expect(Array.from(toFloat32(m.get("a")!))).toEqual([1, 2, 3]);
    expect(Array.from(toFloat32(m.get("b")!))).toEqual([1.5, -2.25]);
    expect(Array.from(toFloat32(m.get("c")!))).toEqual([0.5, 3]);
    expect(Array.from(toFloat32(m.get("d")!))).toEqual([6]);
    expect(Array.from(toFloat32(m.get("e")!))).toEqual([-0.125]);
  });

  it("reads tensor by tensor when the file exceeds the buffer limit", () => {
    const file = path.join(tmpDir(), "big.safetensors");
    writeSafetensorsFile(file, [
      { name: "x", dtype: "F32", shape: [4], data: encode("F32", [1, 2, 3, 4]) },
      { name: "y", dtype: "BF16", shape: [2], data: encode("BF16", [5, 6]) },
    ]);
    const whole = readSafetensorsFile(file);
    const pieces = readSafetensorsFile(file, { maxBufferBytes: 8 });
    expect(pieces.get("x")!.bytes.buffer).not.toBe(pieces.get("y")!.bytes.buffer);
    expect(whole.get("x")!.bytes.buffer).toBe(whole.get("y")!.bytes.buffer);
    expect(Array.from(toFloat32(pieces.get("x")!))).toEqual([1, 2, 3, 4]);
    expect(Array.from(toFloat32(pieces.get("y")!))).toEqual([5, 6]);
  });

  it("accepts zero-sized tensors and empty files", () => {
    const file = path.join(tmpDir(), "empty.safetensors");
    writeSafetensorsFile(file, [{ name: "e", dtype: "F32", shape: [0, 5], data: new Uint8Array(0) }]);
    expect(toFloat32(readSafetensorsFile(file).get("e")!).length).toBe(0);
    const none = path.join(tmpDir(), "none.safetensors");
    writeSafetensorsFile(none, []);
    expect(readSafetensorsFile(none).size).toBe(0);
  });
});

describe("checkpoint folders", () => {
  function fp8Pair(name: string, rows: number, cols: number, seed: number): { tensors: TensorToWrite[]; values: Float32Array } {
    const w = Float32Array.from({ length: rows * cols }, (_, i) => Math.sin(i * 0.37 + seed) * (1 + (i % 7)));
    const q = quantizeFp8Block(w, rows, cols);
    const grid = [Math.ceil(rows / 128), Math.ceil(cols / 128)];
    return {
      tensors: [
        { name, dtype: "F8_E4M3", shape: [rows, cols], data: q.data },
        { name: `${name}_scale_inv`, dtype: "F32", shape: grid, data: new Uint8Array(q.scaleInv.buffer) },
      ],
      values: w,
    };
  }

  it("writes a sharded checkpoint with a weight and its scale in different shards and reads it back", () => {
    const dir = tmpDir();
    const a = fp8Pair("model.layers.0.self_attn.o_proj.weight", 130, 129, 1);
    const norm: TensorToWrite = { name: "model.norm.weight", dtype: "BF16", shape: [4], data: encode("BF16", [1, 2, 3, 4]) };
    // o_proj is 16770 bytes, its scale 16: a 16780-byte limit closes the shard right after the weight.
    const res = writeShardedCheckpoint(dir, [...a.tensors, norm], { maxShardBytes: 16780 });
    expect(res.files).toEqual(["model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"]);
    expect(res.indexFile).toBe("model.safetensors.index.json");
    const index = JSON.parse(fs.readFileSync(path.join(dir, "model.safetensors.index.json"), "utf8"));
    expect(index).toEqual({
      metadata: { total_size: 130 * 129 + 16 + 8 },
      weight_map: {
        "model.layers.0.self_attn.o_proj.weight": "model-00001-of-00002.safetensors",
        "model.layers.0.self_attn.o_proj.weight_scale_inv": "model-00002-of-00002.safetensors",
        "model.norm.weight": "model-00002-of-00002.safetensors",
      },
    });
    expect(Object.keys(index.weight_map)).toEqual([...Object.keys(index.weight_map)].sort());
    expect(readSafetensorsHeader(path.join(dir, res.files[0]!)).metadata).toEqual({ format: "pt" });

    const ckpt = CheckpointTensors.open(dir);
    expect(ckpt.files).toEqual(res.files);
    expect(ckpt.names()).toEqual(Object.keys(index.weight_map));
    expect(ckpt.has("model.norm.weight")).toBe(true);
    expect(ckpt.has("lm_head.weight")).toBe(false);
    const w = ckpt.get("model.layers.0.self_attn.o_proj.weight");
    const s = ckpt.get("model.layers.0.self_attn.o_proj.weight_scale_inv");
    expect(path.basename(w.file)).not.toBe(path.basename(s.file));
    const deq = dequantFp8Tensor(w, s);
    let maxRel = 0;
    for (let i = 0; i < deq.length; i++) maxRel = Math.max(maxRel, Math.abs(deq[i]! - a.values[i]!) / 7);
    expect(maxRel).toBeLessThan(1 / 16 + 1e-6); // within half an e4m3 step of the block amax (7)
    expect(Array.from(toFloat32(ckpt.get("model.norm.weight")))).toEqual([1, 2, 3, 4]);
    const few = ckpt.getUncached(["model.norm.weight"]);
    expect(Array.from(toFloat32(few.get("model.norm.weight")!))).toEqual([1, 2, 3, 4]);
  });

  it("writes a single model.safetensors when everything fits, removing an older sharded checkpoint", () => {
    const dir = tmpDir();
    const t: TensorToWrite[] = [
      { name: "a", dtype: "F32", shape: [2], data: encode("F32", [1, 2]) },
      { name: "b", dtype: "F32", shape: [2], data: encode("F32", [3, 4]) },
    ];
    writeShardedCheckpoint(dir, t, { maxShardBytes: 8 });
    expect(fs.existsSync(path.join(dir, "model.safetensors.index.json"))).toBe(true);
    const res = writeShardedCheckpoint(dir, t, { maxShardBytes: 1 << 20 });
    expect(res).toEqual({ files: ["model.safetensors"], indexFile: null, totalSize: 16 });
    expect(fs.readdirSync(dir).sort()).toEqual(["model.safetensors"]);
    const ckpt = CheckpointTensors.open(dir);
    expect(ckpt.files).toEqual(["model.safetensors"]);
    expect(Array.from(toFloat32(ckpt.get("b")))).toEqual([3, 4]);
  });

  it("puts a tensor larger than maxShardBytes in a shard of its own", () => {
    const dir = tmpDir();
    const res = writeShardedCheckpoint(
      dir,
      [
        { name: "small1", dtype: "F32", shape: [1], data: encode("F32", [1]) },
        { name: "huge", dtype: "F32", shape: [8], data: encode("F32", [1, 2, 3, 4, 5, 6, 7, 8]) },
        { name: "small2", dtype: "F32", shape: [1], data: encode("F32", [2]) },
      ],
      { maxShardBytes: 16 },
    );
    expect(res.files.length).toBe(3);
    const ckpt = CheckpointTensors.open(dir);
    expect(path.basename(ckpt.get("huge").file)).toBe("model-00002-of-00003.safetensors");
  });

  it("reads a folder of several .safetensors files without an index", () => {
    const dir = tmpDir();
    writeSafetensorsFile(path.join(dir, "part-a.safetensors"), [{ name: "x", dtype: "F32", shape: [1], data: encode("F32", [7]) }]);
    writeSafetensorsFile(path.join(dir, "part-b.safetensors"), [{ name: "y", dtype: "F32", shape: [1], data: encode("F32", [8]) }]);
    const ckpt = CheckpointTensors.open(dir);
    expect(ckpt.files).toEqual(["part-a.safetensors", "part-b.safetensors"]);
    expect(ckpt.indexFile).toBeNull();
    expect(toFloat32(ckpt.get("y"))[0]).toBe(8);
  });
});
