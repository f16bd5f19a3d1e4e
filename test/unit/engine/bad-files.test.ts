/**
 * One test per way a checkpoint can be malformed. Each bad file is made by writing a good one and
 * editing its bytes by hand, and each test checks that the error is a CheckpointError naming the file
 * (and the tensor, where one is at fault) rather than a crash.
 */
import * as fs from "node:fs";
import * as path from "node:path";
import { describe, expect, it } from "vitest";
import { CheckpointError } from "@moela/core";
import {
  CheckpointTensors,
  readSafetensorsFile,
  validateFp8ScaleTensor,
  writeSafetensorsFile,
  writeShardedCheckpoint,
  type TensorToWrite,
} from "@moela/engine";
import { tmpDirsForFile } from "../../helpers/tmp.js";

const tmpDir = tmpDirsForFile("moela-bad-");

const GOOD: TensorToWrite[] = [
  { name: "alpha", dtype: "F32", shape: [2, 2], data: new Uint8Array(16).fill(1) },
  { name: "beta", dtype: "F32", shape: [3], data: new Uint8Array(12).fill(2) },
];

function goodFile(): string {
  const file = path.join(tmpDir(), "model.safetensors");
  writeSafetensorsFile(file, GOOD);
  return file;
}

function headerOf(file: string): string {
  const b = fs.readFileSync(file);
  return b.subarray(8, 8 + Number(b.readBigUInt64LE(0))).toString("utf8");
}

/** Replace text inside the JSON header, keeping the file's layout; the length prefix is fixed up. */
function editHeader(file: string, from: string | RegExp, to: string): void {
  const b = fs.readFileSync(file);
  const n = Number(b.readBigUInt64LE(0));
  const text = b.subarray(8, 8 + n).toString("utf8");
  const edited = text.replace(from, to);
  expect(edited).not.toBe(text); // the edit must have hit something
  const json = Buffer.from(edited, "utf8");
  const len = Buffer.alloc(8);
  len.writeBigUInt64LE(BigInt(json.length));
  fs.writeFileSync(file, Buffer.concat([len, json, b.subarray(8 + n)]));
}

function expectCheckpointError(fn: () => unknown, file: string, tensor?: string, message?: RegExp): CheckpointError {
  let err: unknown;
  try {
    fn();
  } catch (e) {
    err = e;
  }
  expect(err).toBeInstanceOf(CheckpointError);
  const ce = err as CheckpointError;
  expect(ce.file).toBe(file);
  expect(ce.message).toContain(file);
  if (tensor !== undefined) {
    expect(ce.tensor).toBe(tensor);
    expect(ce.message).toContain(tensor);
  }
  if (message) expect(ce.message).toMatch(message);
  return ce;
}

describe("bad safetensors files", () => {
  it("file shorter than 8 bytes", () => {
    const file = goodFile();
    fs.writeFileSync(file, Buffer.from([1, 2, 3]));
    expectCheckpointError(() => readSafetensorsFile(file), file, undefined, /shorter than the 8-byte/);
  });

  it("file that does not exist", () => {
    const file = path.join(tmpDir(), "nope.safetensors");
    expectCheckpointError(() => readSafetensorsFile(file), file, undefined, /does not exist/);
  });

  it("header length past the end of the file", () => {
    const file = goodFile();
    const b = fs.readFileSync(file);
    b.writeBigUInt64LE(BigInt(b.length), 0);
    fs.writeFileSync(file, b);
    expectCheckpointError(() => readSafetensorsFile(file), file, undefined, /runs past the end of the file/);
  });

  it("absurd header length", () => {
    const file = goodFile();
    const b = fs.readFileSync(file);
    b.writeBigUInt64LE(0xffff_ffff_ffff_fff0n, 0);
    fs.writeFileSync(file, b);
    expectCheckpointError(() => readSafetensorsFile(file), file, undefined, /absurd/);
  });

  it("header that is not JSON", () => {
    const file = goodFile();
    editHeader(file, /^\{/, "[}");
    expectCheckpointError(() => readSafetensorsFile(file), file, undefined, /not valid JSON/);
  });

  it("header that is not valid UTF-8", () => {
    const file = goodFile();
    const b = fs.readFileSync(file);
    b[9] = 0xff; // inside the header, right after the opening brace
    fs.writeFileSync(file, b);
    expectCheckpointError(() => readSafetensorsFile(file), file, undefined, /UTF-8/);
  });

  it("header that is JSON but not an object", () => {
    const file = goodFile();
    const text = headerOf(file);
    editHeader(file, text, JSON.stringify([1, 2, 3]));
    expectCheckpointError(() => readSafetensorsFile(file), file, undefined, /must be a JSON object/);
  });

  it("unknown dtype", () => {
    const file = goodFile();
    editHeader(file, '"beta":{"dtype":"F32"', '"beta":{"dtype":"Q7"');
    expectCheckpointError(() => readSafetensorsFile(file), file, "beta", /unknown dtype 'Q7'/);
  });

  it("dtype the engine does not support", () => {
    const file = goodFile();
    editHeader(file, '"beta":{"dtype":"F32","shape":[3]', '"beta":{"dtype":"I32","shape":[3]');
    expectCheckpointError(() => readSafetensorsFile(file), file, "beta", /unsupported dtype 'I32'/);
  });

  it("data_offsets that are not two integers", () => {
    const file = goodFile();
    editHeader(file, /"beta":(.*)"data_offsets":\[16,28\]/, '"beta":$1"data_offsets":[16]');
    expectCheckpointError(() => readSafetensorsFile(file), file, "beta", /data_offsets must be two non-negative integers/);
  });

  it("negative data_offsets", () => {
    const file = goodFile();
    editHeader(file, '"data_offsets":[0,16]', '"data_offsets":[-4,12]');
    expectCheckpointError(() => readSafetensorsFile(file), file, "alpha", /non-negative/);
  });

  it("data_offsets that begin after they end", () => {
    const file = goodFile();
    editHeader(file, '"data_offsets":[16,28]', '"data_offsets":[28,16]');
    expectCheckpointError(() => readSafetensorsFile(file), file, "beta", /begin after they end/);
  });

  it("data_offsets outside the data section", () => {
    const file = goodFile();
    editHeader(file, '"beta":{"dtype":"F32","shape":[3],"data_offsets":[16,28]', '"beta":{"dtype":"F32","shape":[3],"data_offsets":[40,52]');
    expectCheckpointError(() => readSafetensorsFile(file), file, "beta", /past the end of the data section \(28 bytes\)/);
  });

  it("data section truncated", () => {
    const file = goodFile();
    const b = fs.readFileSync(file);
    fs.writeFileSync(file, b.subarray(0, b.length - 4));
    expectCheckpointError(() => readSafetensorsFile(file), file, "beta", /past the end of the data section/);
  });

  it("data_offsets overlapping another tensor", () => {
    const file = goodFile();
    editHeader(file, '"beta":{"dtype":"F32","shape":[3],"data_offsets":[16,28]', '"beta":{"dtype":"F32","shape":[3],"data_offsets":[8,20]');
    const e = expectCheckpointError(() => readSafetensorsFile(file), file, "beta", /overlap/);
    expect(e.message).toContain("alpha");
  });

  it("shape that is not an array of non-negative integers", () => {
    const file = goodFile();
    editHeader(file, '"shape":[2,2]', '"shape":[-2,-2]');
    expectCheckpointError(() => readSafetensorsFile(file), file, "alpha", /shape must be an array of non-negative integers/);
  });

  it("shape that is not an array", () => {
    const file = goodFile();
    editHeader(file, '"shape":[2,2]', '"shape":"2x2"');
    expectCheckpointError(() => readSafetensorsFile(file), file, "alpha", /shape must be an array/);
  });

  it("byte size that does not match the shape", () => {
    const file = goodFile();
    editHeader(file, '"shape":[2,2]', '"shape":[2,3]');
    expectCheckpointError(() => readSafetensorsFile(file), file, "alpha", /needs 24 bytes but data_offsets \[0, 16\] hold 16/);
  });

  it("shape whose element count overflows", () => {
    const file = goodFile();
    editHeader(file, '"shape":[2,2]', '"shape":[4294967296,4294967296]');
    expectCheckpointError(() => readSafetensorsFile(file), file, "alpha", /too many elements/);
  });

  it("__metadata__ that is not a string map", () => {
    const file = goodFile();
    editHeader(file, /^\{/, '{"__metadata__":{"format":1},');
    expectCheckpointError(() => readSafetensorsFile(file), file, undefined, /__metadata__/);
  });
});

describe("bad checkpoint folders", () => {
  function sharded(): string {
    const dir = tmpDir();
    writeShardedCheckpoint(dir, GOOD, { maxShardBytes: 16 });
    return dir;
  }
  const indexOf = (dir: string): string => path.join(dir, "model.safetensors.index.json");

  it("folder that does not exist", () => {
    const dir = path.join(tmpDir(), "missing-folder");
    expectCheckpointError(() => CheckpointTensors.open(dir), dir, undefined, /does not exist/);
  });

  it("folder with neither model.safetensors nor an index", () => {
    const dir = tmpDir();
    fs.writeFileSync(path.join(dir, "config.json"), "{}");
    expectCheckpointError(() => CheckpointTensors.open(dir), dir, undefined, /no model\.safetensors, model\.safetensors\.index\.json/);
  });

  it("index that is not JSON", () => {
    const dir = sharded();
    fs.writeFileSync(indexOf(dir), '{"weight_map": {');
    expectCheckpointError(() => CheckpointTensors.open(dir), indexOf(dir), undefined, /not valid JSON/);
  });

  it("index without a weight_map", () => {
    const dir = sharded();
    fs.writeFileSync(indexOf(dir), '{"metadata": {"total_size": 28}}');
    expectCheckpointError(() => CheckpointTensors.open(dir), indexOf(dir), undefined, /weight_map/);
  });

  it("index naming a shard outside the folder", () => {
    const dir = sharded();
    fs.writeFileSync(indexOf(dir), JSON.stringify({ weight_map: { alpha: "../elsewhere.safetensors" } }));
    expectCheckpointError(() => CheckpointTensors.open(dir), indexOf(dir), "alpha", /not a file inside the checkpoint folder/);
  });

  it("shard named in the index is missing", () => {
    const dir = sharded();
    const shard = path.join(dir, "model-00002-of-00002.safetensors");
    fs.rmSync(shard);
    expectCheckpointError(() => CheckpointTensors.open(dir), shard, undefined, /shard named in model\.safetensors\.index\.json is missing.*beta/);
  });

  it("shard that does not contain a tensor the index maps to it", () => {
    const dir = sharded();
    const index = JSON.parse(fs.readFileSync(indexOf(dir), "utf8"));
    index.weight_map["gamma"] = "model-00001-of-00002.safetensors";
    fs.writeFileSync(indexOf(dir), JSON.stringify(index));
    expectCheckpointError(() => CheckpointTensors.open(dir), path.join(dir, "model-00001-of-00002.safetensors"), "gamma", /does not contain it/);
  });

  it("same tensor in two shards", () => {
    const dir = sharded();
    const second = path.join(dir, "model-00002-of-00002.safetensors");
    writeSafetensorsFile(second, [GOOD[1]!, GOOD[0]!]); // shard 2 now also defines alpha
    const e = expectCheckpointError(() => CheckpointTensors.open(dir), second, "alpha", /duplicate tensor/);
    expect(e.message).toContain("model-00001-of-00002.safetensors");
  });

  it("bad shard is reported with its own path", () => {
    const dir = sharded();
    const second = path.join(dir, "model-00002-of-00002.safetensors");
    fs.writeFileSync(second, Buffer.from([0, 0]));
    expectCheckpointError(() => CheckpointTensors.open(dir), second, undefined, /shorter than the 8-byte/);
  });

  it("get of a missing tensor names the index and the tensor", () => {
    const dir = sharded();
    const ckpt = CheckpointTensors.open(dir);
    expectCheckpointError(() => ckpt.get("lm_head.weight"), indexOf(dir), "lm_head.weight", /missing tensor/);
  });

  it("get of a missing tensor in a single-file checkpoint names the folder", () => {
    const file = goodFile();
    const dir = path.dirname(file);
    expectCheckpointError(() => CheckpointTensors.open(dir).get("lm_head.weight"), dir, "lm_head.weight", /missing tensor/);
  });

  it("scale tensor whose shape does not fit its weight names both tensors", () => {
    const weight = { name: "model.layers.0.mlp.down_proj.weight", file: "/ckpt/a.safetensors", dtype: "F8_E4M3" as const, shape: [256, 130] };
    const scale = { name: "model.layers.0.mlp.down_proj.weight_scale_inv", file: "/ckpt/b.safetensors", dtype: "F32" as const, shape: [2, 1] };
    const e = expectCheckpointError(() => validateFp8ScaleTensor(weight, scale), "/ckpt/b.safetensors", scale.name, /expected \[2, 2\]/);
    expect(e.message).toContain(weight.name);
  });

  it("scale tensor on a weight that is not FP8 names both tensors", () => {
    const weight = { name: "w", file: "/ckpt/a.safetensors", dtype: "BF16" as const, shape: [128, 128] };
    const scale = { name: "w_scale_inv", file: "/ckpt/a.safetensors", dtype: "F32" as const, shape: [1, 1] };
    const e = expectCheckpointError(() => validateFp8ScaleTensor(weight, scale), "/ckpt/a.safetensors", "w", /not F8_E4M3/);
    expect(e.message).toContain("w_scale_inv");
  });
});
