/**
 * Where the cores go while a local cluster decodes (a script, not a test): which service's threads ran on which
 * CPU, how long a woken service waited for a core, and how much CPU went in slices too short to be work. It starts
 * a cluster through the launcher library, decodes --streams greedy streams through the router, and records the
 * scheduler with `perf sched record -a` for --seconds in the middle of them.
 *
 *   npx tsx scripts/bench/cluster-schedule.ts [--model /tmp/moela-large-v3] [--streams 1] [--seconds 0.5]
 *        [--window-ms 6] [--out bench-results/cluster-schedule.svg]
 *
 * Needs root (perf records every CPU) and tracefs, which it mounts at /sys/kernel/tracing when it is missing.
 * Prints, per service, its main thread's and its other threads' CPU per token; the part of that in slices of at
 * most 20 us (a kernel worker spinning and yielding between products); how long its threads waited for a core
 * after being woken, and for how much of that wait another CPU sat idle; and how long it ran with every other CPU
 * idle (the serial stretches that nothing runs beside). Then each CPU's idle share. This process (the streams'
 * client, and the launcher) is counted apart. Draws --window-ms of the trace, one lane per CPU, as an SVG.
 */
import { execFileSync, spawn } from "node:child_process";
import { existsSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { randomUUID } from "node:crypto";
import { Command } from "commander";
import { DEFAULT_MODEL, startCluster } from "../../services/cli/src/launcher.js";
import { streamArrivals } from "./stream-arrivals.js";
import { parseTimehist, sliceWindow, summarize, SHORT_SLICE_MS, type SchedSlice } from "./sched-trace.js";

const opts = new Command()
  .option("--model <dir>", "checkpoint folder", DEFAULT_MODEL)
  .option("--streams <n>", "concurrent greedy streams while the trace records", (v) => Number(v), 1)
  .option("--tokens <n>", "tokens per stream (enough to outlast the trace)", (v) => Number(v), 512)
  .option("--seconds <s>", "how long perf records", (v) => Number(v), 0.5)
  .option("--window-ms <ms>", "how much of the trace the SVG draws, from its middle", (v) => Number(v), 6)
  .option("--out <file>", "the SVG", "bench-results/cluster-schedule.svg")
  .option("--timehist <file>", "also write perf sched timehist's text (with wake-ups, -w) here, the services' pids first")
  .parse()
  .opts<{ model: string; streams: number; tokens: number; seconds: number; windowMs: number; out: string; timehist?: string }>();

const log = (s: string): void => void process.stderr.write(`${s}\n`);

for (const [flag, v, integer] of [
  ["--streams", opts.streams, true],
  ["--tokens", opts.tokens, true],
  ["--seconds", opts.seconds, false],
  ["--window-ms", opts.windowMs, false],
] as const) {
  if (!(Number.isFinite(v) && v > 0 && (!integer || Number.isInteger(v)))) {
    log(`cluster-schedule: ${flag} must be a positive ${integer ? "integer" : "number"}, got ${v}`);
    process.exit(2);
  }
}

function checkPerf(): void {
  try {
    execFileSync("perf", ["--version"], { stdio: "ignore" });
  } catch {
    throw new Error("perf is not installed (Debian: apt-get install linux-perf)");
  }
  if (!existsSync("/sys/kernel/tracing/events/sched")) {
    try {
      execFileSync("mount", ["-t", "tracefs", "nodev", "/sys/kernel/tracing"], { stdio: "ignore" });
    } catch {
      throw new Error("perf sched needs tracefs at /sys/kernel/tracing, and mounting it failed (run as root)");
    }
  }
}

/** Now on CLOCK_MONOTONIC, in seconds: the clock perf records with (-k monotonic). */
const monotonic = (): number => Number(process.hrtime.bigint()) / 1e9;

function record(file: string, seconds: number): Promise<void> {
  return new Promise((resolvePromise, reject) => {
    const perf = spawn("perf", ["sched", "record", "-k", "monotonic", "-a", "-o", file, "sleep", String(seconds)], { stdio: ["ignore", "ignore", "pipe"] });
    let err = "";
    perf.stderr.on("data", (d: Buffer) => (err += d.toString()));
    perf.on("error", reject);
    perf.on("exit", (code) => (code === 0 ? resolvePromise() : reject(new Error(`perf sched record exited with ${code}: ${err.trim()}`))));
  });
}

const COLORS: Record<string, string> = {
  decode: "#1f77b4",
  "expert-host 0": "#d62728",
  "expert-host 1": "#ff7f0e",
  router: "#2ca02c",
  prefill: "#9467bd",
  "client and launcher": "#8c564b",
};

function colorOf(label: string | undefined): string {
  if (label === undefined) return "#7f7f7f";
  return COLORS[label] ?? COLORS[label.replace(/ \d+$/, "")] ?? (label.startsWith("expert-host") ? "#e377c2" : "#7f7f7f");
}

const esc = (t: string): string => t.replace(/&/g, "&amp;").replace(/</g, "&lt;").replace(/>/g, "&gt;");

/** One lane per CPU: a service's main thread solid, its other threads pale, anything else grey, idle blank. */
function timelineSvg(slices: ReadonlyArray<SchedSlice & { start: number }>, from: number, to: number, labels: ReadonlyMap<number, string>): string {
  const cpus = [...new Set(slices.map((s) => s.cpu))].sort((a, b) => a - b);
  const W = 1100;
  const left = 60;
  const lane = 40;
  const top = 30;
  const x = (t: number): number => left + ((t - from) / (to - from)) * (W - left - 20);
  const parts: string[] = [];
  for (const s of slices) {
    if (s.tid === 0) continue;
    const y = top + cpus.indexOf(s.cpu) * (lane + 10);
    const label = labels.get(s.pid);
    const opacity = label !== undefined && s.tid !== s.pid ? 0.4 : 1;
    parts.push(
      `<rect x="${x(s.start).toFixed(1)}" y="${y}" width="${Math.max(0.5, x(s.end) - x(s.start)).toFixed(1)}" height="${lane}" fill="${colorOf(label)}" fill-opacity="${opacity}"><title>${esc(label ?? s.comm)} ${s.tid === s.pid ? "main" : `thread ${s.tid}`}: ${(s.runMs * 1000).toFixed(0)} us</title></rect>`,
    );
  }
  cpus.forEach((c, i) => parts.push(`<text x="5" y="${top + i * (lane + 10) + lane / 2 + 4}" font-size="12">CPU ${c}</text>`));
  const axisY = top + cpus.length * (lane + 10) + 5;
  const spanMs = (to - from) * 1000;
  for (let ms = 0; ms <= spanMs + 1e-9; ms += 1)
    parts.push(`<text x="${x(from + ms / 1000).toFixed(1)}" y="${axisY + 12}" font-size="10" text-anchor="middle">${ms} ms</text>`);
  const legend = [...new Set([...labels.values()])].sort();
  legend.forEach((l, i) =>
    parts.push(
      `<rect x="${left + i * 150}" y="${axisY + 24}" width="12" height="12" fill="${colorOf(l)}"/><text x="${left + i * 150 + 16}" y="${axisY + 34}" font-size="11">${esc(l)}</text>`,
    ),
  );
  const note = "solid: a service's main thread; pale: its other threads (kernel workers, libuv, V8); grey: other processes; blank: idle";
  parts.push(`<text x="${left}" y="${axisY + 56}" font-size="11">${note}</text>`);
  return `<svg xmlns="http://www.w3.org/2000/svg" width="${W}" height="${axisY + 70}" font-family="sans-serif"><text x="${left}" y="18" font-size="13">Where the cores went over ${spanMs.toFixed(1)} ms of a cluster decoding (perf sched)</text>${parts.join("")}</svg>\n`;
}

async function main(): Promise<void> {
  checkPerf();
  const stateDir = mkdtempSync(join(tmpdir(), "moela-schedule-"));
  const traceFile = join(stateDir, "perf-sched.data");
  log(`starting a cluster on ${opts.model} ...`);
  const cluster = await startCluster({ model: resolve(opts.model), port: 0, stateDir, queuePrefix: `schedule-${randomUUID().slice(0, 8)}`, logLevel: "warn" });
  try {
    const base = cluster.info.openai_base_url;
    const model = cluster.info.served_model_name;
    log("warming up: one stream of 256 tokens ...");
    await streamArrivals({ base, model, seed: 1, tokens: 256, now: monotonic }, []);
    log(`${opts.streams} stream(s) of ${opts.tokens} tokens; perf records ${opts.seconds} s once they all decode ...`);
    const live = Array.from({ length: opts.streams }, (): number[] => []);
    const running = live.map((arrivals, i) => streamArrivals({ base, model, seed: 100 + i, tokens: opts.tokens, now: monotonic }, arrivals));
    let failed: unknown;
    for (const r of running) r.catch((err: unknown) => (failed ??= err));
    // Once every stream decodes (no prompt left in prefill), and a little after.
    while (live.some((a) => a.length === 0)) {
      if (failed !== undefined) throw failed;
      await new Promise((r) => setTimeout(r, 20));
    }
    await new Promise((r) => setTimeout(r, 300));
    await record(traceFile, opts.seconds);
    const arrivals = await Promise.all(running);
    const labels = new Map<number, string>([...cluster.processes.map((p): [number, string] => [p.pid!, p.label]), [process.pid, "client and launcher"]]);
    const timehist = execFileSync("perf", ["sched", "timehist", "-w", "-i", traceFile], { maxBuffer: 1 << 28, stdio: ["ignore", "pipe", "ignore"] }).toString();
    if (opts.timehist !== undefined) writeFileSync(opts.timehist, [...labels].map(([pid, label]) => `# pid ${pid}: ${label}\n`).join("") + timehist);
    const slices = parseTimehist(timehist);
    const sum = summarize(slices, labels);
    // The tokens that reached the client within the trace: both clocks are CLOCK_MONOTONIC.
    const tokens = arrivals.flat().filter((t) => t >= sum.from && t < sum.from + sum.seconds).length;
    if (tokens === 0) throw new Error("no token arrived while perf recorded: raise --tokens");
    const perToken = (ms: number): string => (ms / tokens).toFixed(3);
    console.log(
      `perf sched over ${(sum.seconds * 1000).toFixed(0)} ms of ${opts.streams} stream(s) on ${opts.model}: ${tokens} tokens reached the client (${(tokens / sum.seconds).toFixed(1)} tok/s)`,
    );
    console.log(
      `${"threads".padEnd(34)}${"CPU ms/token".padStart(14)}${"in slices <= 20 us".padStart(20)}${"waited for a core, ms/token".padStart(30)}${"of which beside an idle CPU".padStart(30)}${"ran alone".padStart(12)}`,
    );
    for (const g of sum.groups) {
      if (g.name === "idle") continue;
      console.log(
        `${g.name.padEnd(34)}${perToken(g.runMs).padStart(14)}${perToken(g.shortMs).padStart(20)}${perToken(g.delayMs).padStart(30)}${perToken(g.delayBesideIdleMs).padStart(30)}${perToken(g.aloneMs).padStart(12)}`,
      );
    }
    console.log(`idle: ${[...sum.idleShare].map(([cpu, share]) => `CPU ${cpu} ${(share * 100).toFixed(1)}%`).join(", ")} of the trace`);
    console.log(`(a slice of at most ${SHORT_SLICE_MS * 1000} us is a thread that ran and gave the core up again at once: a spin that yields)`);
    const mid = sum.from + sum.seconds / 2;
    const from = mid - opts.windowMs / 2000;
    const to = mid + opts.windowMs / 2000;
    mkdirSync(dirname(opts.out), { recursive: true });
    writeFileSync(opts.out, timelineSvg(sliceWindow(slices, from, to), from, to, labels));
    log(`wrote ${opts.out}`);
  } finally {
    await cluster.stop();
    rmSync(stateDir, { recursive: true, force: true });
  }
}

await main().catch((err: unknown) => {
  log(`cluster-schedule: ${err instanceof Error ? err.message : String(err)}`);
  process.exitCode = 1;
});
