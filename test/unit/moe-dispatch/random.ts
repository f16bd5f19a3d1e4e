/** Seeded randomness for the moe-dispatch tests (mulberry32 + Box-Muller), so failures reproduce. */
export function rng(seed: number): () => number {
  let s = seed | 0;
  return () => {
    s = (s + 0x6d2b79f5) | 0;
    let t = Math.imul(s ^ (s >>> 15), 1 | s);
    t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t;
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

export function gaussian(rand: () => number): () => number {
  return () => {
    let u = 0;
    while (u === 0) u = rand();
    return Math.sqrt(-2 * Math.log(u)) * Math.cos(2 * Math.PI * rand());
  };
}

/** [rows * cols] standard normal values, row r scaled by rowScale(r). */
export function gaussianMatrix(seed: number, rows: number, cols: number, rowScale: (r: number) => number = () => 1): Float32Array {
  const g = gaussian(rng(seed));
  const x = new Float32Array(rows * cols);
  for (let r = 0; r < rows; r++) for (let c = 0; c < cols; c++) x[r * cols + c] = g() * rowScale(r);
  return x;
}

/** Bit patterns of a float32 array, for exact (NaN- and -0-aware) equality. */
export function bits(x: Float32Array): Uint32Array {
  return new Uint32Array(x.buffer, x.byteOffset, x.length);
}
