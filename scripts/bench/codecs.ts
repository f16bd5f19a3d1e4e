/**
 * The dispatch codecs' own speed (a script, not a test): nanoseconds per value of every registered codec's
 * encode, decode and round trip (the in-process rounding), for the row counts decode and prefill send (a batch-1
 * layer, a 16-row micro-batch, a 512-token prefill chunk), on gaussian activations with a per-row scale.
 * Dispatch encodes once per MoE layer and a host decodes once, so at the paper profile's fp8-tile these are
 * per-layer costs on both sides of the wire. fp8-tile encodes in the native addon when it is built; the row
 * "fp8-tile (TypeScript)" times float8-tiles.ts's loops, which give the same bits, in the same run.
 *
 *   npx tsx scripts/bench/codecs.ts [--hidden 7168] [--rounds 5] [--codecs f32,bf16,fp8-tile,logfmt8] [--out bench-results]
 *
 * Prints a table; writes <out>/codecs.json and codecs.html (a bar chart per operation).
 */
import { Command } from "commander";
import {
  commandLine,
  commaList,
  describeMachine,
  fmt,
  log,
  machineInfo,
  median,
  nsPerCallRounds,
  textTable,
  writeReport,
  type BarChart,
} from "../lib/bench-report.js";
import { nativeKernels } from "@moela/engine-native";
import {
  DISPATCH_CODECS,
  FP8_E4M3_FORMAT,
  FP8_TILE,
  decodeFloat8TilesInto,
  encodeFloat8Tiles,
  getDispatchCodec,
  roundTripFloat8Tiles,
  type DispatchCodec,
} from "@moela/moe-dispatch";

const opts = new Command("bench-codecs")
  .option("--hidden <n>", "values per row (DeepSeek-V3: 7168)", (v) => Number(v), 7168)
  .option("--rounds <n>", "timed rounds per case; the median is reported", (v) => Number(v), 5)
  .option("--codecs <list>", "codecs to time", Object.keys(DISPATCH_CODECS).join(","))
  .option("--out <dir>", "where the JSON and HTML go", "bench-results")
  .parse()
  .opts<{ hidden: number; rounds: number; codecs: string; out: string }>();

/** Median over rounds of nanoseconds per call of `fn`. */
const time = (fn: () => unknown): number => median(nsPerCallRounds(fn, opts.rounds));

/** Seeded gaussian-like activations (sum of uniforms), row r scaled by 2^(r mod 9 - 4) so tiles differ in range. */
function activations(rows: number, cols: number): Float32Array {
  let s = 12345;
  const u = (): number => (s = (Math.imul(s, 1103515245) + 12345) >>> 0) / 2 ** 32;
  const x = new Float32Array(rows * cols);
  for (let r = 0; r < rows; r++) for (let c = 0; c < cols; c++) x[r * cols + c] = (u() + u() + u() - 1.5) * 2 ** ((r % 9) - 4);
  return x;
}

const H = opts.hidden;
const machine = machineInfo();
log(`dispatch codecs at hidden ${H}, ${opts.rounds} rounds per case ...`);
/** fp8-tile on float8-tiles.ts's TypeScript loops, whether or not the addon is built. */
const fp8TileTypeScript: DispatchCodec = {
  ...getDispatchCodec("fp8-tile"),
  encode(x, rows, cols) {
    const { data, scales } = encodeFloat8Tiles(FP8_E4M3_FORMAT, x, rows, cols, FP8_TILE);
    return { codec: "fp8-tile", rows, cols, data, meta: scales };
  },
  decode: (enc, out) => decodeFloat8TilesInto(FP8_E4M3_FORMAT, { data: enc.data, scales: enc.meta }, enc.rows, enc.cols, out!, FP8_TILE),
  roundTrip: (x, rows, cols, out = x) => roundTripFloat8Tiles(FP8_E4M3_FORMAT, x, rows, cols, out, FP8_TILE),
};
const names = commaList(opts.codecs);
const cases: Array<[string, DispatchCodec]> = names.map((name) => [name, getDispatchCodec(name)]);
if (names.includes("fp8-tile")) cases.push(["fp8-tile (TypeScript)", fp8TileTypeScript]);

interface Result {
  codec: string;
  rows: number;
  /** Nanoseconds per value. */
  encode: number;
  decode: number;
  roundTrip: number;
}
const results: Result[] = [];
for (const [name, codec] of cases) {
  for (const rows of [1, 16, 512]) {
    log(`  ${name}, ${rows} rows ...`);
    const x = activations(rows, H);
    const out = new Float32Array(rows * H);
    const enc = codec.encode(x, rows, H);
    const n = rows * H;
    results.push({
      codec: name,
      rows,
      encode: time(() => codec.encode(x, rows, H)) / n,
      decode: time(() => codec.decode(enc, out)) / n,
      roundTrip: time(() => codec.roundTrip(x, rows, H, out)) / n,
    });
  }
}

/** Nanoseconds per value, with the MB/s of float32 activations that makes. */
const cell = (ns: number): string => `${fmt(ns, 2)} (${fmt(4 / ns / 1e-3, 0)})`;
const lines = [
  `$ ${commandLine()}`,
  describeMachine(machine),
  `native addon: ${typeof nativeKernels?.fp8Tiles === "function" ? "built, fp8-tile encodes there" : "not built"}`,
  `dispatch codecs, hidden ${H}: nanoseconds per value (median of ${opts.rounds} rounds); MB/s of float32 activations in brackets`,
  ...textTable(
    ["codec", "rows", "encode", "decode", "round trip"],
    results.map((r) => [r.codec, String(r.rows), cell(r.encode), cell(r.decode), cell(r.roundTrip)]),
  ),
];
console.log(lines.join("\n"));
const charts: BarChart[] = (["encode", "decode", "roundTrip"] as const).map((op) => ({
  title: `${op === "roundTrip" ? "round trip" : op}, nanoseconds per value (shorter is faster)`,
  unit: "ns per value",
  bars: results.map((r) => ({ label: `${r.rows} rows`, value: r[op], group: r.codec })),
}));
const [json, html] = writeReport(opts.out, "codecs", `Dispatch codecs at hidden ${H}`, lines, charts, { hidden: H, rounds: opts.rounds, machine, results });
log(`wrote ${json} and ${html}`);
