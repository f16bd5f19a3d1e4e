/**
 * Two builds of the native kernels' addon in one process, alternating: matmul's GFLOP/s with each, their ratio,
 * and whether the two give the same bits. For a kernel change, A/B in one sitting on one noisy VM.
 *
 *   git worktree add /tmp/moela-before <rev> && (cd /tmp/moela-before/packages/engine-native && node scripts/build.cjs)
 *   npx tsx scripts/bench/kernels-ab.ts --addon /tmp/moela-before/packages/engine-native/build/Release/moela_kernels.node \
 *     --addon packages/engine-native/build/Release/moela_kernels.node [--threads 1] [--kinds fp8] [--tokens 1,2,16,256]
 *     [--shapes 2816x1024,1024x2816,384x1024,384x192] [--rounds 7] [--round-ms 60] [--out bench-results]
 *
 * Each configuration runs --rounds rounds, the addons taking turns within every round, each turn calling the product
 * for --round-ms with its weights cycled through copies (--working-set-mb in all), so each call reads its weights
 * from memory as a decode step does. Reported: the medians, and B over A (above 1: B is faster).
 *
 * The addon loaded second is at a disadvantage on products over more than 4 tokens (the widened-panel path): two
 * copies of one build gave B / A 0.87-0.88x there and 1.00-1.02x at 1 token (Zen 2, glibc; presumably its
 * thread-local scratch, reached through dynamic TLS in a second loaded module). Swap --addon to see both orders.
 */
import { createRequire } from "node:module";
import { resolve } from "node:path";
import { Command } from "commander";
import { fastBackendOver, type KernelBackend } from "@moela/engine";
import type { NativeKernels } from "@moela/engine-native";
import { commaList, commandLine, describeMachine, fmt, log, machineInfo, median, textTable, writeReport, type Bar } from "../lib/bench-report.js";
import { activations, makeWeight, weightCopies, type BenchWeightKind } from "../lib/bench-weights.js";

const program = new Command()
  .description("matmul with two builds of the native kernels' addon, alternating in one process")
  .option("--addon <path>", "a moela_kernels.node (give exactly two: A, then B)", (v: string, acc: string[]) => [...acc, v], [] as string[])
  .option("--kinds <list>", "weight kinds: fp8, bf16, f32", "fp8")
  .option("--shapes <list>", "rows x cols", "2816x1024,1024x2816,384x1024,384x192")
  .option("--tokens <list>", "token counts (T)", "1,2,4,16,256")
  .option("--threads <n>", "kernel threads", (v) => Number(v), 1)
  .option("--rounds <n>", "rounds (medians)", (v) => Number(v), 7)
  .option("--round-ms <ms>", "time per addon per round", (v) => Number(v), 60)
  .option("--working-set-mb <mb>", "weight copies cycled through", (v) => Number(v), 64)
  .option("--out <dir>", "where the JSON and HTML go", "bench-results")
  .parse();
const opts = program.opts<{
  addon: string[];
  kinds: string;
  shapes: string;
  tokens: string;
  threads: number;
  rounds: number;
  roundMs: number;
  workingSetMb: number;
  out: string;
}>();

if (opts.addon.length !== 2) throw new Error(`--addon must be given exactly twice (A and B), got ${opts.addon.length}`);
for (const k of ["threads", "rounds", "roundMs", "workingSetMb"] as const) {
  if (!(Number.isInteger(opts[k]) && opts[k] >= 1))
    throw new Error(`--${k.replace(/[A-Z]/g, (c) => `-${c.toLowerCase()}`)} must be a positive integer, got ${opts[k]}`);
}
const KINDS: readonly BenchWeightKind[] = ["fp8", "bf16", "f32"];
const kinds = commaList(opts.kinds).map((k) => {
  if (!(KINDS as readonly string[]).includes(k)) throw new Error(`--kinds: unknown kind '${k}' (known: ${KINDS.join(", ")})`);
  return k as BenchWeightKind;
});
const shapes = commaList(opts.shapes).map((s) => {
  const m = /^(\d+)x(\d+)$/.exec(s);
  if (!m) throw new Error(`--shapes: expected ROWSxCOLS, got '${s}'`);
  return [Number(m[1]), Number(m[2])] as const;
});
const tokens = commaList(opts.tokens).map((t) => {
  const n = Number(t);
  if (!(Number.isInteger(n) && n >= 1)) throw new Error(`--tokens: expected positive integers, got '${t}'`);
  return n;
});

const require = createRequire(import.meta.url);
const addons = opts.addon.map((p) => require(resolve(p)) as NativeKernels);
// Each addon holds its own thread pool; both get the same size.
for (const a of addons) a.setThreads(opts.threads);
const isas = addons.map((a) => a.isa());
if (isas[0] !== isas[1]) throw new Error(`the two addons chose different instruction sets (${isas.join(", ")})`);
const backends: KernelBackend[] = addons.map(fastBackendOver);

interface Row {
  readonly kind: BenchWeightKind;
  readonly rows: number;
  readonly cols: number;
  readonly T: number;
  readonly gflops: readonly [number, number];
  readonly sameBits: boolean;
}
const results: Row[] = [];
for (const kind of kinds) {
  for (const [rows, cols] of shapes) {
    const ws = weightCopies(makeWeight(kind, rows, cols, rows + cols), opts.workingSetMb * 2 ** 20);
    const copies = ws.length;
    for (const T of tokens) {
      log(`${kind} ${rows}x${cols}, T ${T} ...`);
      const x = activations(T * cols, T);
      const ys = backends.map(() => new Float32Array(T * rows));
      const times: number[][] = [[], []];
      for (let round = 0; round < opts.rounds; round++) {
        backends.forEach((b, k) => {
          const y = ys[k]!;
          let calls = 0;
          const t0 = performance.now();
          while (performance.now() - t0 < opts.roundMs) {
            b.matmul(ws[calls % copies]!, x, T, y);
            calls++;
          }
          times[k]!.push((performance.now() - t0) / calls);
        });
      }
      // The same bits: both addons on the first copy.
      backends.forEach((b, k) => b.matmul(ws[0]!, x, T, ys[k]!));
      const a = new Uint32Array(ys[0]!.buffer);
      const b = new Uint32Array(ys[1]!.buffer);
      const sameBits = a.every((v, i) => v === b[i]);
      const gflops = times.map((t) => (2 * rows * cols * T) / median(t) / 1e6) as unknown as readonly [number, number];
      results.push({ kind, rows, cols, T, gflops, sameBits });
    }
  }
}

const text = [
  `$ ${commandLine()}`,
  describeMachine(machineInfo()),
  `A: ${opts.addon[0]}`,
  `B: ${opts.addon[1]}`,
  `instruction set ${isas[0]}, ${opts.threads} kernel thread(s), medians of ${opts.rounds} alternating rounds of ${opts.roundMs} ms, weights cycled through ${opts.workingSetMb} MB`,
  "",
  ...textTable(
    ["matmul", "T", "A GFLOP/s", "B GFLOP/s", "B / A", "bits"],
    results.map((r) => [
      `${r.kind} ${r.rows}x${r.cols}`,
      String(r.T),
      fmt(r.gflops[0]),
      fmt(r.gflops[1]),
      `${(r.gflops[1] / r.gflops[0]).toFixed(2)}x`,
      r.sameBits ? "same" : "DIFFERENT",
    ]),
  ),
];
console.log(text.join("\n"));
const bars: Bar[] = results.map((r) => ({
  label: `${r.kind} ${r.rows}x${r.cols} T ${r.T}`,
  value: r.gflops[1] / r.gflops[0],
  note: `${(r.gflops[1] / r.gflops[0]).toFixed(2)}x`,
  group: r.kind,
}));
const [json, html] = writeReport(
  opts.out,
  "kernels-ab",
  "moela kernels: addon B against addon A",
  text,
  [{ title: "matmul, B over A (above 1: B is faster)", unit: "x", bars, refs: [{ value: 1, label: "A" }] }],
  {
    command: commandLine(),
    machine: machineInfo(),
    addons: opts.addon,
    isa: isas[0],
    threads: opts.threads,
    results,
  },
);
log(`wrote ${json} and ${html}`);
if (results.some((r) => !r.sameBits)) process.exitCode = 1;
