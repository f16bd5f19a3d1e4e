/**
 * Block-wise FP8 (e4m3fn) weights as released for DeepSeek-V3: a 2-D weight [rows, cols] is stored as
 * float8 e4m3 bytes plus `<weight name>_scale_inv`, one float32 per blockRows x blockCols block
 * (128 x 128), grid shape [ceil(rows/blockRows), ceil(cols/blockCols)]; edge blocks may be partial.
 * The real value is f8 * scale_inv (the name is historical: it is the inverse of the quantization
 * scale, i.e. the dequantization multiplier).
 */
import { CheckpointError, InvalidArgumentError } from "@moela/core";
import { F8_E4M3_MAX, F8_E4M3_TO_F32, f32ToF8E4M3Bits } from "../tensor/dtype.js";
import { toFloat32, type TensorInfo } from "../safetensors/reader.js";

/** Name of the scale tensor of a block-quantized weight: "x.weight" -> "x.weight_scale_inv". */
export function scaleInvName(weightName: string): string {
  return `${weightName}_scale_inv`;
}

function checkDims(rows: number, cols: number, blockRows: number, blockCols: number): void {
  for (const [k, v] of [
    ["rows", rows],
    ["cols", cols],
  ] as const) {
    if (!Number.isSafeInteger(v) || v < 0) throw new InvalidArgumentError(`${k} must be a non-negative integer, got ${v}`);
  }
  for (const [k, v] of [
    ["blockRows", blockRows],
    ["blockCols", blockCols],
  ] as const) {
    if (!Number.isSafeInteger(v) || v <= 0) throw new InvalidArgumentError(`${k} must be a positive integer, got ${v}`);
  }
}

/** Shape of the scale grid of a [rows, cols] weight: [ceil(rows/blockRows), ceil(cols/blockCols)]. */
export function expectedScaleShape(rows: number, cols: number, blockRows = 128, blockCols = 128): [number, number] {
  checkDims(rows, cols, blockRows, blockCols);
  return [Math.ceil(rows / blockRows), Math.ceil(cols / blockCols)];
}

/**
 * Dequantize: out[r][c] = F8_E4M3_TO_F32[data[r*cols+c]] * scaleInv[floor(r/blockRows)][floor(c/blockCols)].
 * The product of an e4m3 value (4 significant bits) and a float32 scale is exact in a double and is
 * rounded once into the float32 output, so the result is bit-identical to torch's float32 multiply.
 */
export function dequantFp8Block(data: Uint8Array, scaleInv: Float32Array, rows: number, cols: number, blockRows = 128, blockCols = 128): Float32Array {
  const [gr, gc] = expectedScaleShape(rows, cols, blockRows, blockCols);
  if (data.length !== rows * cols) throw new InvalidArgumentError(`fp8 data has ${data.length} bytes, [${rows}, ${cols}] needs ${rows * cols}`);
  if (scaleInv.length !== gr * gc)
    throw new InvalidArgumentError(`scale grid has ${scaleInv.length} values, [${rows}, ${cols}] in ${blockRows}x${blockCols} blocks needs [${gr}, ${gc}]`);
  const out = new Float32Array(rows * cols); // [rows, cols]
  for (let r = 0; r < rows; r++) {
    const srow = Math.floor(r / blockRows) * gc;
    const base = r * cols;
    for (let bc = 0; bc < gc; bc++) {
      const s = scaleInv[srow + bc]!;
      const c1 = Math.min(cols, (bc + 1) * blockCols);
      for (let c = bc * blockCols; c < c1; c++) out[base + c] = F8_E4M3_TO_F32[data[base + c]!]! * s;
    }
  }
  return out;
}

/**
 * Quantize like DeepSeek: per block, scale = amax / 448 in float32 (a block of zeros gets scale 1),
 * q = e4m3(w / scale) with the division in float32 and round-to-nearest-even, saturating at +-448.
 * Returns the e4m3 bytes [rows, cols] and scaleInv (= scale) [ceil(rows/br), ceil(cols/bc)].
 */
export function quantizeFp8Block(w: Float32Array, rows: number, cols: number, blockRows = 128, blockCols = 128): { data: Uint8Array; scaleInv: Float32Array } {
  const [gr, gc] = expectedScaleShape(rows, cols, blockRows, blockCols);
  if (w.length !== rows * cols) throw new InvalidArgumentError(`weight has ${w.length} values, [${rows}, ${cols}] needs ${rows * cols}`);
  const data = new Uint8Array(rows * cols); // [rows, cols]
  const scaleInv = new Float32Array(gr * gc); // [gr, gc]
  for (let br = 0; br < gr; br++) {
    const r0 = br * blockRows;
    const r1 = Math.min(rows, r0 + blockRows);
    for (let bc = 0; bc < gc; bc++) {
      const c0 = bc * blockCols;
      const c1 = Math.min(cols, c0 + blockCols);
      let amax = 0;
      for (let r = r0; r < r1; r++) {
        for (let c = c0; c < c1; c++) {
          const v = w[r * cols + c]!;
          if (!Number.isFinite(v)) throw new InvalidArgumentError(`weight[${r}][${c}] is ${v}; cannot quantize a non-finite value`);
          const a = Math.abs(v);
          if (a > amax) amax = a;
        }
      }
      const scale = amax === 0 ? 1 : Math.fround(amax / F8_E4M3_MAX);
      scaleInv[br * gc + bc] = scale;
      for (let r = r0; r < r1; r++) {
        for (let c = c0; c < c1; c++) data[r * cols + c] = f32ToF8E4M3Bits(Math.fround(w[r * cols + c]! / scale));
      }
    }
  }
  return { data, scaleInv };
}

type TensorMeta = Pick<TensorInfo, "name" | "file" | "dtype" | "shape">;

/**
 * Check that `scale` is a valid scale tensor for the block-quantized `weight` (2-D F8_E4M3 weight,
 * 2-D float scale of the expected grid shape). Throws a CheckpointError naming both tensors.
 */
export function validateFp8ScaleTensor(weight: TensorMeta, scale: TensorMeta, blockRows = 128, blockCols = 128): void {
  if (weight.dtype !== "F8_E4M3")
    throw new CheckpointError(weight.file, `has a scale tensor '${scale.name}' but dtype ${weight.dtype}, not F8_E4M3`, weight.name);
  if (weight.shape.length !== 2)
    throw new CheckpointError(weight.file, `block-quantized weight must be 2-D, got shape ${JSON.stringify(weight.shape)}`, weight.name);
  if (scale.dtype === "F8_E4M3") throw new CheckpointError(scale.file, `scale tensor of '${weight.name}' must be a float type, got F8_E4M3`, scale.name);
  const [rows, cols] = weight.shape as [number, number];
  const want = expectedScaleShape(rows, cols, blockRows, blockCols);
  if (scale.shape.length !== 2 || scale.shape[0] !== want[0] || scale.shape[1] !== want[1]) {
    throw new CheckpointError(
      scale.file,
      `scale shape ${JSON.stringify(scale.shape)} does not fit weight '${weight.name}' of shape [${rows}, ${cols}] ` +
        `with ${blockRows}x${blockCols} blocks (expected [${want[0]}, ${want[1]}])`,
      scale.name,
    );
  }
}

/** Validate and dequantize a checkpoint weight with its `_scale_inv` tensor to float32 [rows, cols]. */
export function dequantFp8Tensor(weight: TensorInfo, scale: TensorInfo, blockRows = 128, blockCols = 128): Float32Array {
  validateFp8ScaleTensor(weight, scale, blockRows, blockCols);
  const [rows, cols] = weight.shape as [number, number];
  return dequantFp8Block(weight.bytes, toFloat32(scale), rows, cols, blockRows, blockCols);
}
