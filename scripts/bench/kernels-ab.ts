/**
 * Two builds of the native kernels' addon in one process, alternating: each product's GFLOP/s with each, their
 * ratio, and whether the two give the same bits. For a kernel change, A/B in one sitting on one noisy VM.
 *
 *   git worktree add /tmp/moela-before <rev> && (cd /tmp/moela-before/packages/engine-native && node scripts/build.cjs)
 *   npx tsx scripts/bench/kernels-ab.ts --addon /tmp/moela-before/packages/engine-native/build/Release/moela_kernels.node \
 *     --addon packages/engine-native/build/Release/moela_kernels.node [--ops matmul,matmulT,attend] [--isa avx2]
 *     [--threads 1] [--kinds fp8] [--tokens 1,2,16,256] [--shapes 2816x1024,1024x2816,384x1024,384x192] [--rounds 7]
 *     [--round-ms 60] [--out bench-results]
 *
 * matmul runs --kinds x --shapes x --tokens; matmulT the W_UK rows of a kv_b_proj of 16 DeepSeek-V3 heads (--kinds
 * other than f32, at --tokens); attend MLA's absorbed attention of 16 heads at decode (1 token over 512 and 4,096
 * positions) and a prefill block (64 tokens after 448), and of brown's 6 heads (9 tokens, two per item); and the
 * decompressed attention of prefill (a 512-token prompt, a 128-token chunk after 384; V3-like 16 heads and brown's 6).
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
import { absorbedAttendArgs, decompressedAttendArgs, fastBackendOver, type AttendArgs, type KernelBackend, type WeightMatrix } from "@moela/engine";
import type { NativeKernels } from "@moela/engine-native";
import { commaList, commandLine, describeMachine, fmt, log, machineInfo, median, textTable, writeReport, type Bar } from "../lib/bench-report.js";
import { activations, makeWeight, weightCopies, type BenchWeightKind, V3_HEADS } from "../lib/bench-weights.js";

const program = new Command()
  .description("matmul, matmulT and attend with two builds of the native kernels' addon, alternating in one process")
  .option("--addon <path>", "a moela_kernels.node (give exactly two: A, then B)", (v: string, acc: string[]) => [...acc, v], [] as string[])
  .option("--ops <list>", "products: matmul, matmulT, attend", "matmul")
  .option("--isa <name>", "the instruction set both addons use (default: the best this CPU has)")
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
  ops: string;
  isa?: string;
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
const OPS = ["matmul", "matmulT", "attend"] as const;
type Op = (typeof OPS)[number];
const ops = commaList(opts.ops).map((o) => {
  if (!(OPS as readonly string[]).includes(o)) throw new Error(`--ops: unknown product '${o}' (known: ${OPS.join(", ")})`);
  return o as Op;
});
const tokens = commaList(opts.tokens).map((t) => {
  const n = Number(t);
  if (!(Number.isInteger(n) && n >= 1)) throw new Error(`--tokens: expected positive integers, got '${t}'`);
  return n;
});

const require = createRequire(import.meta.url);
const addons = opts.addon.map((p) => require(resolve(p)) as NativeKernels);
// Each addon holds its own thread pool; both get the same size.
for (const a of addons) {
  a.setThreads(opts.threads);
  if (opts.isa !== undefined) a.selectIsa(opts.isa);
}
const isas = addons.map((a) => a.isa());
if (isas[0] !== isas[1]) throw new Error(`the two addons chose different instruction sets (${isas.join(", ")})`);
const backends: KernelBackend[] = addons.map(fastBackendOver);

interface Row {
  readonly op: Op;
  readonly what: string;
  readonly T: number;
  readonly gflops: readonly [number, number];
  readonly sameBits: boolean;
}
const results: Row[] = [];

/**
 * One configuration: `call(backend, i, out)` with the i-th input copy, alternating the addons round by round; the
 * bits compared on copy 0; `flops` per call.
 */
function measure(op: Op, what: string, T: number, flops: number, outLength: number, call: (b: KernelBackend, i: number, out: Float32Array) => void): void {
  log(`${op} ${what}, T ${T} ...`);
  const outs = backends.map(() => new Float32Array(outLength));
  const times: number[][] = [[], []];
  for (let round = 0; round < opts.rounds; round++) {
    backends.forEach((b, k) => {
      const out = outs[k]!;
      let calls = 0;
      const t0 = performance.now();
      while (performance.now() - t0 < opts.roundMs) call(b, calls++, out);
      times[k]!.push((performance.now() - t0) / calls);
    });
  }
  backends.forEach((b, k) => call(b, 0, outs[k]!));
  const a = new Uint32Array(outs[0]!.buffer);
  const b = new Uint32Array(outs[1]!.buffer);
  const sameBits = a.every((v, i) => v === b[i]);
  const gflops = times.map((t) => flops / median(t) / 1e6) as unknown as readonly [number, number];
  results.push({ op, what, T, gflops, sameBits });
}

const WORKING_SET = opts.workingSetMb * 2 ** 20;
if (ops.includes("matmul")) {
  for (const kind of kinds) {
    for (const [rows, cols] of shapes) {
      const ws = weightCopies(makeWeight(kind, rows, cols, rows + cols), WORKING_SET);
      for (const T of tokens) {
        const x = activations(T * cols, T);
        measure("matmul", `${kind} ${rows}x${cols}`, T, 2 * rows * cols * T, T * rows, (b, i, y) => b.matmul(ws[i % ws.length]!, x, T, y));
      }
    }
  }
}

const { H, DN, DR, DV, R } = V3_HEADS;
const DQ = DN + DR;
if (ops.includes("matmulT")) {
  for (const kind of kinds.filter((k) => k !== "f32")) {
    const ws: WeightMatrix[] = weightCopies(makeWeight(kind, H * (DN + DV), R, 7), WORKING_SET);
    const layout = { vStride: H * DQ, n: DN, outStride: H * R, groups: H, rowStep: DN + DV, vStep: DQ, outStep: R };
    for (const T of tokens) {
      const v = activations(T * H * DQ, T + 1);
      measure("matmulT", `${kind} kv_b ${H * (DN + DV)}x${R}, W_UK`, T, 2 * T * H * DN * R, T * H * R, (b, i, out) =>
        b.matmulT(ws[i % ws.length]!, v, T, out, layout),
      );
    }
  }
}
if (ops.includes("attend")) {
  // [heads, latent rank, rope dims, tokens, positions before them]: decode at two lengths, a prefill block, brown.
  const cases = [
    [H, R, DR, 1, 511],
    [H, R, DR, 1, 4095],
    [H, R, DR, 64, 448],
    [6, 128, 16, 9, 200],
  ] as const;
  for (const [heads, rank, dr, n, start] of cases) {
    const L = start + n;
    const ctxs = activationCopies(activations(L * (rank + dr), L), WORKING_SET);
    const qa = activations(n * heads * rank, 3);
    const qb = activations(n * heads * dr, 4);
    const args = (ctx: Float32Array, out: Float32Array): AttendArgs =>
      absorbedAttendArgs({ H: heads, R: rank, dn: 0, dr }, { latents: ctx, qAbs: qa, q: qb, out, row: 0, n, start, scale: 1 / Math.sqrt(rank + dr) });
    // Per token, head and position seen: the score over [R | rope] and the weighted sum over R.
    const seen = n * start + (n * (n + 1)) / 2;
    measure(
      "attend",
      `${heads} heads x ${rank}+${dr}, ${n} token(s) after ${start}`,
      n,
      heads * seen * (2 * (rank + dr) + 2 * rank),
      n * heads * rank,
      (b, i, out) => b.attend(args(ctxs[i % ctxs.length]!, out)),
    );
  }
  // Decompressed attention (prefill): [heads, nope, rope, value dims, tokens, positions before them].
  const prefills = [
    [H, DN, DR, DV, 512, 0],
    [H, DN, DR, DV, 128, 384],
    [6, 32, 16, 32, 512, 0],
  ] as const;
  for (const [heads, dn, dr, dv, n, start] of prefills) {
    const L = start + n;
    const kvs = activationCopies(activations(heads * L * (dn + dv), L), WORKING_SET); // head-major, as the engine's
    const latents = activations(L * (R + dr), 5);
    const q = activations(n * heads * (dn + dr), 3);
    const args = (kv: Float32Array, out: Float32Array): AttendArgs =>
      decompressedAttendArgs({ H: heads, R, dn, dr, dv }, { latents, kv, q, out, row: 0, n, start, scale: 1 / Math.sqrt(dn + dr) });
    const seen = n * start + (n * (n + 1)) / 2;
    measure(
      "attend",
      `decompressed ${heads} heads x ${dn}+${dr}, values ${dv}, ${n} tokens after ${start}`,
      n,
      heads * seen * (2 * (dn + dr) + 2 * dv),
      n * heads * dv,
      (b, i, out) => b.attend(args(kvs[i % kvs.length]!, out)),
    );
  }
}

/** Copies of an activation array filling about `bytes` (at least one), as weightCopies does for weights. */
function activationCopies(a: Float32Array, bytes: number): Float32Array[] {
  const n = Math.max(1, Math.floor(bytes / a.byteLength));
  return Array.from({ length: n }, (_, i) => (i === 0 ? a : a.slice()));
}

const text = [
  `$ ${commandLine()}`,
  describeMachine(machineInfo()),
  `A: ${opts.addon[0]}`,
  `B: ${opts.addon[1]}`,
  `instruction set ${addons[0]!.isa()}, ${opts.threads} kernel thread(s), medians of ${opts.rounds} alternating rounds of ${opts.roundMs} ms, weights cycled through ${opts.workingSetMb} MB`,
  "",
  ...textTable(
    ["product", "T", "A GFLOP/s", "B GFLOP/s", "B / A", "bits"],
    results.map((r) => [
      `${r.op} ${r.what}`,
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
  label: `${r.op} ${r.what} T ${r.T}`,
  value: r.gflops[1] / r.gflops[0],
  note: `${(r.gflops[1] / r.gflops[0]).toFixed(2)}x`,
  group: r.op,
}));
const [json, html] = writeReport(
  opts.out,
  "kernels-ab",
  "moela kernels: addon B against addon A",
  text,
  [{ title: "B over A (above 1: B is faster)", unit: "x", bars, refs: [{ value: 1, label: "A" }] }],
  {
    command: commandLine(),
    machine: machineInfo(),
    addons: opts.addon,
    isa: addons[0]!.isa(),
    threads: opts.threads,
    results,
  },
);
log(`wrote ${json} and ${html}`);
if (results.some((r) => !r.sameBits)) process.exitCode = 1;
