/**
 * Kernel benchmark (a script, not a test): the linear kernel (matmul) of each backend on FP8 (128 x 128 block
 * scales), BF16 and F32 weights of DeepSeek-ish shapes at T = 1 .. 256 tokens, next to what this machine
 * measures in the same run with numpy (scripts/lib/yardsticks.ts): GB/s of weight bytes against the
 * single-thread read bandwidth (what matters at small T, where a matmul streams its weights once) and
 * GFLOP/s (2 * rows * cols * T / s) against a float32 GEMM (what matters at large T). Then, briefly, matmulT
 * (MLA's query absorption through W_UK) and attend (absorbed decode attention over the cached latents).
 *
 *   npx tsx scripts/bench/kernels.ts [--threads N] [--repeats 5] [--shapes 2816x1024,...] [--tokens 1,4,16,64,256]
 *        [--kinds fp8,bf16,f32] [--isas avx512,avx2,portable] [--backends fast,portable] [--no-yardsticks] [--out bench-results]
 *        [--thread-sweep]
 *
 * Configurations: the `fast` backend once per instruction set the addon supports on this CPU, on 1 thread and
 * on --threads N (default: all cores; the process-wide native pool, its default minWork), and the `portable`
 * TypeScript backend on 1 thread. Each measurement is the median over --repeats rounds; within a round every
 * configuration runs once, in an order rotated round by round, so background load hits them alike. A round
 * repeats calls for at least --round-ms. The weights are cycled through copies totalling --working-set-mb
 * (default 256, the read yardstick's size), so a call finds its weights as cold as x.sum() finds its array and as
 * a forward pass finds a layer's weights, not hot in cache from the previous call.
 * A configuration whose call would take longer than --max-call-ms (predicted from its time at the previous T)
 * is skipped ("-"), which keeps the slow portable kernels from dominating: the default run takes about
 * a minute or two.
 *
 * --thread-sweep adds the earlier benchmark's sweep of where threads start to pay (BF16, T 1, products from 64 x 128
 * to 1024 x 1024, cache-hot, 1 thread against --threads threads splitting everything), for the TypeScript
 * MatmulPool (what DEFAULT_PARALLEL_MIN_WORK in tensor/parallel.ts was set from) and the native pool.
 *
 * Prints tables to stdout (progress to stderr); writes bench-results/kernels.json and bench-results/kernels.html.
 */
import { availableParallelism } from "node:os";
import { Command } from "commander";
import {
  absorbedAttendArgs,
  DEFAULT_PARALLEL_MIN_WORK,
  MatmulPool,
  kernelsByName,
  matmul,
  nativeKernelsAddon,
  weightBytes,
  type AttendArgs,
  type KernelBackend,
  type WeightMatrix,
} from "@moela/engine";
import { commaList, fmt, fmtX, log, median, parseWithReportOptions, ratio, textTable, type Bar, type BarChart } from "../lib/bench-report.js";
import { gemmRef, measureSetting, readBandwidthRef, settingLines, writeBenchReport } from "../lib/bench-setting.js";
import { activations, makeWeight, weightCopies, type BenchWeightKind, V3_HEADS } from "../lib/bench-weights.js";

const program = new Command("bench-kernels")
  .option("--threads <n>", "threads of the fast backend's multi-thread configurations", (v) => Number(v), availableParallelism())
  .option("--repeats <n>", "rounds per measurement (median reported)", (v) => Number(v), 5)
  .option("--shapes <list>", "weight shapes, rows x cols (out x in)", "2816x1024,1024x2816,384x1024,16384x1024")
  .option("--tokens <list>", "token counts T", "1,4,16,64,256")
  .option("--kinds <list>", "weight kinds", "fp8,bf16,f32")
  .option("--isas <list>", "the fast backend's instruction sets (default: all this CPU supports)")
  .option("--backends <list>", "fast and/or portable", "fast,portable")
  .option("--round-ms <ms>", "shortest round: calls repeat until it is reached", (v) => Number(v), 10)
  .option("--max-call-ms <ms>", "skip a configuration whose call would take longer (predicted from the previous T)", (v) => Number(v), 150)
  .option("--working-set-mb <n>", "weight copies cycled through, in MB (0: one copy, cache-hot)", (v) => Number(v), 256)
  .option("--no-extras", "skip matmulT and attend")
  .option(
    "--thread-sweep",
    "also the old sweep of where threads start to pay (1 vs --threads threads, BF16, T 1, growing products; what DEFAULT_PARALLEL_MIN_WORK was set from)",
  );
parseWithReportOptions(program);
const opts = program.opts<{
  threads: number;
  repeats: number;
  shapes: string;
  tokens: string;
  kinds: string;
  isas?: string;
  backends: string;
  roundMs: number;
  maxCallMs: number;
  workingSetMb: number;
  extras: boolean;
  threadSweep?: boolean;
  yardsticks: boolean;
  out: string;
}>();
for (const k of ["threads", "repeats"] as const) {
  if (!(Number.isInteger(opts[k]) && opts[k] >= 1)) throw new Error(`--${k} must be a positive integer, got ${opts[k]}`);
}
for (const k of ["roundMs", "maxCallMs", "workingSetMb"] as const) {
  if (!(Number.isFinite(opts[k]) && opts[k] >= 0))
    throw new Error(`--${k.replace(/[A-Z]/g, (c) => `-${c.toLowerCase()}`)} must be a number >= 0, got ${opts[k]}`);
}
const SHAPES = commaList(opts.shapes).map((s) => {
  const m = /^(\d+)x(\d+)$/.exec(s);
  if (!m) throw new Error(`--shapes: '${s}' is not ROWSxCOLS`);
  return { rows: Number(m[1]), cols: Number(m[2]) };
});
const TOKENS = commaList(opts.tokens)
  .map(Number)
  .sort((a, b) => a - b);
if (TOKENS.some((t) => !(Number.isInteger(t) && t >= 1))) throw new Error(`--tokens must be positive integers, got ${opts.tokens}`);
type Kind = BenchWeightKind;
const KINDS = commaList(opts.kinds) as Kind[];
for (const k of KINDS) if (!["fp8", "bf16", "f32"].includes(k)) throw new Error(`--kinds: '${k}' is not fp8, bf16 or f32`);
const BACKENDS = commaList(opts.backends);
for (const b of BACKENDS) if (b !== "fast" && b !== "portable") throw new Error(`--backends: '${b}' is not fast or portable`);

// ---- configurations ---------------------------------------------------------------------------------

interface Config {
  /** Column label: the ISA (or "ts" for the TypeScript backend) and the threads. */
  readonly label: string;
  readonly backend: "fast" | "portable";
  readonly isa: string;
  readonly threads: number;
  readonly k: KernelBackend;
}

const native = nativeKernelsAddon;
const configs: Config[] = [];
const notes: string[] = [];
if (BACKENDS.includes("fast")) {
  if (native === null) notes.push("the native kernels did not load: no fast-backend configurations");
  else {
    const supported = native.supportedIsas();
    const isas = opts.isas === undefined ? supported : commaList(opts.isas);
    for (const isa of isas) if (!supported.includes(isa)) throw new Error(`--isas: '${isa}' is not supported here (supported: ${supported.join(", ")})`);
    const fast = kernelsByName("fast");
    const threadCounts = opts.threads === 1 ? [1] : [1, opts.threads];
    for (const isa of isas) for (const threads of threadCounts) configs.push({ label: `${isa} ${threads}t`, backend: "fast", isa, threads, k: fast });
  }
}
if (BACKENDS.includes("portable")) configs.push({ label: "ts 1t", backend: "portable", isa: "typescript", threads: 1, k: kernelsByName("portable") });
if (configs.length === 0) throw new Error("no configurations to run");
const initialIsa = native?.isa();

function apply(c: Config): void {
  if (c.backend !== "fast" || native === null) return;
  native.selectIsa(c.isa);
  native.setThreads(c.threads);
}

// ---- data ------------------------------------------------------------------------------------------

const WORKING_SET = opts.workingSetMb * 2 ** 20;
/** Copies of something of `bytes` bytes so that cycling through them covers the working set. */
const copiesFor = (bytes: number): number => Math.max(1, Math.ceil(WORKING_SET / bytes));

// ---- timing ----------------------------------------------------------------------------------------

interface Timing {
  /** Median ms per call, null when skipped. */
  readonly ms: number | null;
  readonly callsPerRound: number;
  readonly skipped?: string;
}

/**
 * Median ms per call of `call` for every configuration. `call(k, i)` runs the i-th call (it picks its copy of the
 * data from i); `predictMs(c)` is a guess from an earlier measurement, used to skip configurations that would
 * take too long.
 */
function timeConfigs(call: (k: KernelBackend, i: number) => void, predictMs: (c: Config) => number | null): Map<Config, Timing> {
  const out = new Map<Config, Timing>();
  const live: { c: Config; calls: number; warm: boolean; times: number[] }[] = [];
  let i = 0;
  for (const c of configs) {
    const p = predictMs(c);
    if (p !== null && p > opts.maxCallMs) {
      out.set(c, { ms: null, callsPerRound: 0, skipped: `predicted ${fmt(p, 0)} ms per call > --max-call-ms ${opts.maxCallMs}` });
      continue;
    }
    apply(c);
    const t0 = performance.now();
    call(c.k, i++);
    const est = Math.max(1e-3, performance.now() - t0);
    live.push({ c, calls: Math.max(1, Math.min(100_000, Math.round(opts.roundMs / est))), warm: est < opts.roundMs, times: [] });
  }
  for (let r = 0; r < opts.repeats; r++) {
    for (let j = 0; j < live.length; j++) {
      const m = live[(j + r) % live.length]!;
      apply(m.c);
      // A short call is warmed up after the switch (the pool's threads wake, the code is hot); a long one need not.
      if (m.warm) call(m.c.k, i++);
      const t0 = performance.now();
      for (let n = 0; n < m.calls; n++) call(m.c.k, i++);
      m.times.push((performance.now() - t0) / m.calls);
    }
  }
  for (const m of live) out.set(m.c, { ms: median(m.times), callsPerRound: m.calls });
  return out;
}

// ---- results ---------------------------------------------------------------------------------------

interface Result {
  readonly op: "matmul" | "matmulT" | "attend";
  /** e.g. "fp8 2816x1024" */
  readonly what: string;
  readonly kind: string;
  readonly T: number;
  readonly config: string;
  readonly backend: string;
  readonly isa: string;
  readonly threads: number;
  readonly ms: number | null;
  readonly callsPerRound: number;
  readonly skipped?: string;
  /** Bytes a call reads (weights, or for attend the cached latent rows). */
  readonly bytes: number;
  readonly flops: number;
  readonly gbs: number | null;
  readonly gflops: number | null;
  /** gbs / the single-thread read-bandwidth yardstick. */
  readonly gbsOverRead: number | null;
  /** gflops / the GEMM yardstick. */
  readonly gflopsOverGemm: number | null;
}

const setting = measureSetting(opts.yardsticks);
const { readGBs, gemmGFlops } = setting;

const results: Result[] = [];
function record(op: Result["op"], what: string, kind: string, T: number, bytes: number, flops: number, timings: Map<Config, Timing>): void {
  for (const c of configs) {
    const t = timings.get(c)!;
    const gbs = t.ms === null ? null : bytes / (t.ms / 1e3) / 1e9;
    const gflops = t.ms === null ? null : flops / (t.ms / 1e3) / 1e9;
    results.push({
      op,
      what,
      kind,
      T,
      config: c.label,
      backend: c.backend,
      isa: c.isa,
      threads: c.threads,
      ms: t.ms,
      callsPerRound: t.callsPerRound,
      ...(t.skipped === undefined ? {} : { skipped: t.skipped }),
      bytes,
      flops,
      gbs,
      gflops,
      gbsOverRead: ratio(gbs, readGBs),
      gflopsOverGemm: ratio(gflops, gemmGFlops),
    });
  }
}

const started = performance.now();
log(`configurations: ${configs.map((c) => c.label).join(", ")}; ${opts.repeats} rounds each; working set ${opts.workingSetMb} MB`);

// ---- matmul ----------------------------------------------------------------------------------------

const maxT = TOKENS[TOKENS.length - 1]!;
let seed = 1;
for (const kind of KINDS) {
  for (const { rows, cols } of SHAPES) {
    const ws = weightCopies(makeWeight(kind, rows, cols, seed++), WORKING_SET);
    const bytes = weightBytes(ws[0]!);
    const x = activations(maxT * cols, seed++);
    const y = new Float32Array(maxT * rows);
    const what = `${kind} ${rows}x${cols}`;
    log(`matmul ${what} (${fmt(bytes / 2 ** 20, 2)} MiB, ${ws.length} copies): T ${TOKENS.join(", ")} ...`);
    let prev: { T: number; t: Map<Config, Timing> } | null = null;
    for (const T of TOKENS) {
      const p: { T: number; t: Map<Config, Timing> } | null = prev;
      const timings = timeConfigs(
        (k, i) => k.matmul(ws[i % ws.length]!, x, T, y),
        (c) => {
          const ms = p?.t.get(c)?.ms;
          // Skipped at a smaller T: skipped here too. Otherwise linear in T (an upper bound: larger T only amortises more).
          if (p !== null && (ms === null || ms === undefined)) return Infinity;
          return p === null ? null : ms! * (T / p.T);
        },
      );
      record("matmul", what, kind, T, bytes, 2 * rows * cols * T, timings);
      prev = { T, t: timings };
    }
  }
}

// ---- matmulT and attend ------------------------------------------------------------------------------

const { H, DN, DR, DV, R } = V3_HEADS;
const DQ = DN + DR;
const D = R + DR;
if (opts.extras) {
  for (const kind of KINDS.filter((k) => k !== "f32")) {
    const ws = weightCopies(makeWeight(kind, H * (DN + DV), R, seed++), WORKING_SET);
    // matmulT reads the W_UK rows (dn of every head's dn + dv) of kv_b_proj.
    const bytes = (weightBytes(ws[0]!) * DN) / (DN + DV);
    const what = `${kind} kv_b ${H * (DN + DV)}x${R}, W_UK`;
    for (const T of [1, 16]) {
      log(`matmulT ${what} T ${T} ...`);
      const v = activations(T * H * DQ, seed++);
      const out = new Float32Array(T * H * R);
      const timings = timeConfigs(
        (k, i) => k.matmulT(ws[i % ws.length]!, v, T, out, { vStride: H * DQ, n: DN, outStride: H * R, groups: H, rowStep: DN + DV, vStep: DQ, outStep: R }),
        () => null,
      );
      record("matmulT", what, kind, T, bytes, 2 * T * H * DN * R, timings);
    }
  }
  for (const L of [512, 4096]) {
    const n = 1;
    const ctxs = Array.from({ length: copiesFor(L * D * 4) }, (_, i) => (i === 0 ? activations(L * D, seed++) : null));
    for (let i = 1; i < ctxs.length; i++) ctxs[i] = ctxs[0]!.slice();
    const qa = activations(n * H * R, seed++);
    const qb = activations(n * H * DQ, seed++);
    const out = new Float32Array(n * H * R);
    const what = `decode ${H} heads, ${L} positions`;
    log(`attend ${what} ...`);
    const args = (ctx: Float32Array): AttendArgs =>
      absorbedAttendArgs({ H, R, dn: DN, dr: DR }, { latents: ctx, qAbs: qa, q: qb, out, row: 0, n, start: L - n, scale: 1 / Math.sqrt(DQ) });
    const prepared = ctxs.map((c) => args(c!));
    const timings = timeConfigs(
      (k, i) => k.attend(prepared[i % prepared.length]!),
      () => null,
    );
    // Scores over [R | rope] and the weighted sum over R, per head and position; the cached rows are read once per call.
    record("attend", what, "f32", n, L * D * 4, n * H * L * (2 * (R + DR) + 2 * R), timings);
  }
}

// ---- where threads pay (opt-in) ------------------------------------------------------------------------

interface SweepRow {
  readonly rows: number;
  readonly cols: number;
  readonly backend: string;
  readonly us1: number;
  readonly usN: number;
}
const sweep: SweepRow[] = [];
if (opts.threadSweep && opts.threads > 1) {
  // The TypeScript pool's workers read weights and activations in place: shared memory, as the engine's.
  const sharedCopy = <A extends Float32Array | Uint16Array>(a: A): A => {
    const out = new (a.constructor as new (b: SharedArrayBuffer) => A)(new SharedArrayBuffer(a.byteLength));
    out.set(a);
    return out;
  };
  const pool = new MatmulPool({ threads: opts.threads, minWork: 0 });
  if (!(await pool.ready())) throw new Error(`the matmul pool did not start: ${pool.error?.message}`);
  for (const [r, c] of [
    [64, 128],
    [128, 256],
    [256, 256],
    [256, 512],
    [512, 512],
    [512, 1024],
    [1024, 1024],
  ] as const) {
    log(`thread sweep ${r} x ${c} ...`);
    const base = makeWeight("bf16", r, c, seed++);
    const w: WeightMatrix = { ...base, data: sharedCopy(base.data as Uint16Array) } as WeightMatrix;
    const x = sharedCopy(activations(c, seed++));
    const y = new Float32Array(new SharedArrayBuffer(4 * r));
    const calls = Math.max(3, Math.round(2e6 / (r * c)));
    /** One round: microseconds per call (after two warm-up calls). */
    const once = (f: () => void): number => {
      for (let i = 0; i < 2; i++) f();
      const t0 = performance.now();
      for (let i = 0; i < calls; i++) f();
      return ((performance.now() - t0) / calls) * 1000;
    };
    // 1 thread and N threads alternate round by round.
    const ts1: number[] = [];
    const tsN: number[] = [];
    for (let k = 0; k < opts.repeats; k++) {
      ts1.push(once(() => matmul(w, x, 1, y)));
      tsN.push(once(() => pool.matmul(w, x, 1, y)));
    }
    sweep.push({ rows: r, cols: c, backend: "ts (MatmulPool)", us1: median(ts1), usN: median(tsN) });
    if (native !== null) {
      const fast = kernelsByName("fast");
      const f1: number[] = [];
      const fN: number[] = [];
      for (let k = 0; k < opts.repeats; k++) {
        native.setThreads(1);
        f1.push(once(() => fast.matmul(w, x, 1, y)));
        native.setThreads(opts.threads, 0);
        fN.push(once(() => fast.matmul(w, x, 1, y)));
      }
      sweep.push({ rows: r, cols: c, backend: `fast ${native.isa()} (native pool)`, us1: median(f1), usN: median(fN) });
    }
  }
  await pool.close();
  // The native pool's documented default split threshold, back.
  native?.setThreads(1, 65536);
}
if (native !== null && initialIsa !== undefined) native.selectIsa(initialIsa);
const elapsedS = (performance.now() - started) / 1000;
log(`done in ${fmt(elapsedS, 0)} s`);

// ---- report ----------------------------------------------------------------------------------------

const cell = (v: number | null, r: number | null): string => (v === null ? "-" : r === null ? fmt(v) : `${fmt(v)} ${fmtX(r)}`);
const lines: string[] = [
  ...settingLines(setting),
  `kernels: ${configs.map((c) => c.label).join(", ")} (avx512/avx2/portable = the fast backend's native instruction set; ts = the portable TypeScript backend; Nt = threads)`,
  `medians of ${opts.repeats} rounds, configurations interleaved; weights cycled through ${opts.workingSetMb} MB of copies; "-" = skipped (call predicted over ${opts.maxCallMs} ms)`,
  ...notes,
  "",
];
const matmuls = results.filter((r) => r.op === "matmul");
const keys = [...new Set(matmuls.map((r) => `${r.what}|${r.T}`))];
const get = (rs: Result[], what: string, T: number, config: string): Result | undefined => rs.find((r) => r.what === what && r.T === T && r.config === config);
const matmulTable = (metric: "gbs" | "gflops"): string[] =>
  textTable(
    ["matmul", "T", ...configs.map((c) => c.label)],
    keys.map((key) => {
      const [what, T] = key.split("|") as [string, string];
      return [
        what,
        T,
        ...configs.map((c) => {
          const r = get(matmuls, what, Number(T), c.label);
          return r === undefined ? "-" : metric === "gbs" ? cell(r.gbs, r.gbsOverRead) : cell(r.gflops, r.gflopsOverGemm);
        }),
      ];
    }),
  );
lines.push(`matmul: GB/s of weight bytes read${readGBs === null ? "" : ` and x the read bandwidth (${fmt(readGBs)} GB/s, 1 thread)`}`);
lines.push(...matmulTable("gbs"), "");
lines.push(`matmul: GFLOP/s (2 * rows * cols * T / s)${gemmGFlops === null ? "" : ` and x the GEMM yardstick (${fmt(gemmGFlops)} GFLOP/s)`}`);
lines.push(...matmulTable("gflops"), "");
const extras = results.filter((r) => r.op !== "matmul");
const extrasTable = (metric: "gbs" | "gflops"): string[] => {
  const ekeys = [...new Set(extras.map((r) => `${r.op}|${r.what}|${r.T}`))];
  return textTable(
    ["op", "T", ...configs.map((c) => c.label)],
    ekeys.map((key) => {
      const [op, what, T] = key.split("|") as [string, string, string];
      return [
        `${op} ${what}`,
        T,
        ...configs.map((c) => {
          const r = extras.find((e) => e.op === op && e.what === what && e.T === Number(T) && e.config === c.label);
          return r === undefined ? "-" : metric === "gbs" ? cell(r.gbs, r.gbsOverRead) : cell(r.gflops, r.gflopsOverGemm);
        }),
      ];
    }),
  );
};
if (extras.length > 0) {
  lines.push(`matmulT (the W_UK rows of kv_b_proj, ${H} heads) and attend (absorbed decode over the cached latent rows, ${D} floats per position):`);
  lines.push(`GFLOP/s${gemmGFlops === null ? "" : " and x GEMM"}`, ...extrasTable("gflops"), "");
  lines.push(`GB/s read (weights; for attend the latent rows)${readGBs === null ? "" : " and x read bandwidth"}`, ...extrasTable("gbs"), "");
}
// The headline: the best fast configuration per kind, at the smallest T (bandwidth) and the largest (compute).
const fastMm = matmuls.filter((r) => r.backend === "fast" && r.ms !== null);
if (fastMm.length > 0) {
  lines.push("best fast configuration per weight kind (over the shapes):");
  const minT = TOKENS[0]!;
  for (const kind of KINDS) {
    for (const threads of [...new Set(configs.filter((c) => c.backend === "fast").map((c) => c.threads))]) {
      const at = (T: number, key: "gbs" | "gflops"): Result | undefined =>
        fastMm.filter((r) => r.kind === kind && r.T === T && r.threads === threads).sort((a, b) => (b[key] ?? 0) - (a[key] ?? 0))[0];
      const b = at(minT, "gbs");
      const c = at(maxT, "gflops");
      if (b === undefined || c === undefined) continue;
      lines.push(
        `  ${kind.padEnd(4)} ${threads} thread${threads === 1 ? " " : "s"}: T ${minT} ${fmt(b.gbs)} GB/s${b.gbsOverRead === null ? "" : ` = ${fmtX(b.gbsOverRead)} read bw`} (${b.config}, ${b.what}); ` +
          `T ${maxT} ${fmt(c.gflops)} GFLOP/s${c.gflopsOverGemm === null ? "" : ` = ${fmtX(c.gflopsOverGemm)} GEMM`} (${c.config}, ${c.what})`,
      );
    }
  }
  lines.push("");
}
if (sweep.length > 0) {
  lines.push(
    `where threads pay: BF16, T 1, 1 thread vs ${opts.threads} threads splitting every product (minWork 0); DEFAULT_PARALLEL_MIN_WORK = ${DEFAULT_PARALLEL_MIN_WORK}`,
  );
  lines.push(
    ...textTable(
      ["product", "work", "kernels", "1 thread us", `${opts.threads} threads us`, "speed-up"],
      sweep.map((r) => [
        `${r.rows} x ${r.cols}`,
        String(r.rows * r.cols),
        r.backend,
        fmt(r.us1, r.us1 < 10 ? 1 : 0),
        fmt(r.usN, r.usN < 10 ? 1 : 0),
        fmtX(r.us1 / r.usN),
      ]),
    ),
    "",
  );
}
lines.push(`total ${fmt(elapsedS, 0)} s`);
process.stdout.write(`${lines.join("\n")}\n`);

const bars = (rs: Result[], metric: "gbs" | "gflops"): Bar[] =>
  rs
    .filter((r) => r[metric] !== null)
    .map((r) => {
      const rel = metric === "gbs" ? r.gbsOverRead : r.gflopsOverGemm;
      return {
        group: r.op === "matmul" ? r.what : `${r.op} ${r.what} T ${r.T}`,
        label: r.config,
        value: r[metric]!,
        ...(rel === null ? {} : { note: fmtX(rel) }),
      };
    });
const charts: BarChart[] = [
  {
    title: `matmul at T ${TOKENS[0]}: GB/s of weights read (dashed: the single-thread read bandwidth)`,
    unit: "GB/s",
    bars: bars(
      matmuls.filter((r) => r.T === TOKENS[0]),
      "gbs",
    ),
    ...readBandwidthRef(setting),
  },
  {
    title: `matmul at T ${maxT}: GFLOP/s (dashed: numpy's float32 GEMM)`,
    unit: "GFLOP/s",
    bars: bars(
      matmuls.filter((r) => r.T === maxT),
      "gflops",
    ),
    ...gemmRef(setting),
  },
];
if (extras.length > 0) charts.push({ title: "matmulT and attend: GFLOP/s", unit: "GFLOP/s", bars: bars(extras, "gflops") });
const [jsonPath, htmlPath] = writeBenchReport(setting, opts.out, "kernels", "moela kernel benchmark", lines, charts, 1, {
  options: { ...opts, configs: configs.map((c) => c.label) },
  elapsedS,
  results,
  threadSweep: sweep,
});
log(`wrote ${jsonPath} and ${htmlPath}`);
