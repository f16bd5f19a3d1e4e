/**
 * What the machine itself can do, measured in the same run as a benchmark so its numbers have something to be
 * compared with: python3 + numpy one-liners in a child process (nothing of ours is involved).
 *
 *   - read bandwidth: `x.sum()` over a 256 MB float32 array, best of at least 5, GB/s, on ONE thread
 *     (OPENBLAS_NUM_THREADS, OMP_NUM_THREADS and MKL_NUM_THREADS = 1; sum does not use BLAS anyway). What a
 *     memory-bound kernel on one thread (a matmul at T = 1, a decode step) can hope for.
 *   - float32 GEMM: a 1024 x 1024 x 1024 matmul, best of at least 5, GFLOP/s = 2 * 1024^3 / s, with numpy's
 *     defaults (its BLAS on all the cores it wants): OPENBLAS_CORETYPE and OPENBLAS_L2_SIZE are removed from the
 *     child's environment for this command only. What a compute-bound kernel (prefill, large T) can hope for.

 * "Best of at least 5": 5 timings, then more until 0.5 s have passed (at most 100): on a machine shared with other
 * work the best of many is the machine's, the best of 5 often not.
 *
 * Without python3 or numpy the result says why (`error`) and the benchmarks go on without ratios.
 */
import { spawnSync } from "node:child_process";

export interface Yardsticks {
  /** Single-thread read bandwidth, GB/s (1e9 bytes/s); null when it could not be measured. */
  readonly readGBs: number | null;
  /** float32 GEMM 1024^3 with numpy's defaults, GFLOP/s; null when it could not be measured. */
  readonly gemmGFlops: number | null;
  readonly numpy: string | null;
  /** numpy's BLAS as it describes itself (name and version), when it says. */
  readonly blas: string | null;
  readonly readBytes: number;
  readonly gemmN: number;
  /** Timings each best was taken from. */
  readonly readSamples: number | null;
  readonly gemmSamples: number | null;
  /** What went wrong, when a yardstick is missing. */
  readonly error: string | null;
}

const READ_MB = 256;
const GEMM_N = 1024;
const MIN_SAMPLES = 5;
/** Keep sampling until this long has passed (seconds), up to MAX_SAMPLES. */
const MIN_SECONDS = 0.5;
const MAX_SAMPLES = 100;
const BEST_PY = `
def best(f):
    f()
    ts = []
    end = time.perf_counter() + ${MIN_SECONDS}
    while len(ts) < ${MIN_SAMPLES} or (time.perf_counter() < end and len(ts) < ${MAX_SAMPLES}):
        t0 = time.perf_counter(); f(); ts.append(time.perf_counter() - t0)
    return min(ts), len(ts)
`;

const READ_PY = `
import json, time, numpy as np
${BEST_PY}
x = np.ones(${READ_MB} * 2**20 // 4, dtype=np.float32)
t, n = best(lambda: x.sum())
blas = None
try:
    b = np.show_config(mode="dicts")["Build Dependencies"]["blas"]
    blas = f"{b.get('name')} {b.get('version')}"
except Exception:
    pass
print(json.dumps({"gbs": x.nbytes / t / 1e9, "samples": n, "numpy": np.__version__, "blas": blas}))
`;

const GEMM_PY = `
import json, time, numpy as np
${BEST_PY}
N = ${GEMM_N}
rng = np.random.default_rng(0)
a = rng.random((N, N), dtype=np.float32); b = rng.random((N, N), dtype=np.float32)
t, n = best(lambda: a @ b)
print(json.dumps({"gflops": 2 * N**3 / t / 1e9, "samples": n}))
`;

function runPython(code: string, env: NodeJS.ProcessEnv): { ok: true; out: Record<string, unknown> } | { ok: false; why: string } {
  const r = spawnSync("python3", ["-c", code], { env, encoding: "utf8", timeout: 180_000 });
  if (r.error) return { ok: false, why: (r.error as NodeJS.ErrnoException).code === "ENOENT" ? "python3 not found" : r.error.message };
  if (r.status !== 0) {
    const err = r.stderr.trim().split("\n").pop() ?? "";
    return {
      ok: false,
      why: /No module named .?numpy/.test(r.stderr) ? "numpy is not installed for python3" : `python3 exited ${r.status ?? r.signal}: ${err}`,
    };
  }
  try {
    return { ok: true, out: JSON.parse(r.stdout.trim().split("\n").pop() ?? "") as Record<string, unknown> };
  } catch {
    return { ok: false, why: `unexpected output from python3: ${r.stdout.slice(0, 200)}` };
  }
}

/** Measure both yardsticks (a few seconds). Never throws: a missing one is null, with `error` saying why. */
export function measureYardsticks(): Yardsticks {
  const single: NodeJS.ProcessEnv = { ...process.env, OPENBLAS_NUM_THREADS: "1", OMP_NUM_THREADS: "1", MKL_NUM_THREADS: "1" };
  const defaults: NodeJS.ProcessEnv = { ...process.env };
  delete defaults.OPENBLAS_CORETYPE;
  delete defaults.OPENBLAS_L2_SIZE;
  const errors: string[] = [];
  const read = runPython(READ_PY, single);
  // Without python3 or numpy the GEMM fails the same way: say it once, without a second try.
  const missing = !read.ok && /python3 not found|numpy is not installed/.test(read.why);
  if (!read.ok) errors.push(missing ? read.why : `read bandwidth: ${read.why}`);
  const gemm = missing ? null : runPython(GEMM_PY, defaults);
  if (gemm !== null && !gemm.ok) errors.push(`GEMM: ${gemm.why}`);
  const num = (v: unknown): number | null => (typeof v === "number" && Number.isFinite(v) ? v : null);
  const str = (v: unknown): string | null => (typeof v === "string" ? v : null);
  return {
    readGBs: read.ok ? num(read.out.gbs) : null,
    gemmGFlops: gemm?.ok ? num(gemm.out.gflops) : null,
    numpy: read.ok ? str(read.out.numpy) : null,
    blas: read.ok ? str(read.out.blas) : null,
    readBytes: READ_MB * 2 ** 20,
    gemmN: GEMM_N,
    readSamples: read.ok ? num(read.out.samples) : null,
    gemmSamples: gemm?.ok ? num(gemm.out.samples) : null,
    error: errors.length > 0 ? errors.join("; ") : null,
  };
}

/** One line for a report's header. */
export function describeYardsticks(y: Yardsticks): string {
  const parts = [
    y.readGBs === null
      ? "read bandwidth: n/a"
      : `read bandwidth (numpy x.sum(), ${y.readBytes / 2 ** 20} MB float32, 1 thread, best of ${y.readSamples}): ${y.readGBs.toFixed(1)} GB/s`,
    y.gemmGFlops === null
      ? "GEMM: n/a"
      : `float32 GEMM (numpy ${y.gemmN}^3, its default threads, best of ${y.gemmSamples}): ${y.gemmGFlops.toFixed(1)} GFLOP/s`,
  ];
  const src = y.numpy === null ? "" : ` [numpy ${y.numpy}${y.blas === null ? "" : `, ${y.blas}`}]`;
  const err = y.error === null ? "" : `\n  yardsticks missing (${y.error}): no ratios for them`;
  return `yardsticks: ${parts.join("; ")}${src}${err}`;
}

/**
 * The scripts' start: measure the yardsticks when asked (progress through `log`), or none. Returns the two rates
 * (null where not measured) and the full result for the report.
 */
export function yardsticksFor(wanted: boolean, log: (line: string) => void): { yard: Yardsticks | null; readGBs: number | null; gemmGFlops: number | null } {
  let yard: Yardsticks | null = null;
  if (wanted) {
    log("measuring the yardsticks (numpy) ...");
    yard = measureYardsticks();
    if (yard.error !== null) log(`  ${yard.error}: continuing without those ratios`);
  }
  return { yard, readGBs: yard?.readGBs ?? null, gemmGFlops: yard?.gemmGFlops ?? null };
}
