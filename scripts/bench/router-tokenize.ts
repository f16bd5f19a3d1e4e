/**
 * Router tokenizer benchmark (a script, not a test): how long small requests wait while the router is
 * busy with one huge text prompt, with the prompt tokenized on a worker thread (the default,
 * --tokenizer-threads 1) and on the event loop (--tokenizer-threads 0, the router before issue 10).
 *
 *   npx tsx scripts/bench/router-tokenize.ts [--size-mb 50] [--modes threads,event-loop] [--baseline 20]
 *        [--model models/tiny-v3] [--out bench-results]
 *
 * Per mode, a real local cluster (launcher library; router flags raised so the huge prompt is admitted:
 * --max-prompt-chars, --max-body-bytes) gets:
 *   1. `baseline` small completions one after another (a short text prompt, 2 tokens): their latency alone;
 *   2. one huge completion (`size-mb` MB of English text, max_tokens 1; the router tokenizes it, then
 *      refuses it as longer than the context, 400), and meanwhile small completions back to back until
 *      it is answered: their latency while the router is busy.
 * Prints, per mode, the small requests' latency P50 / P99 / max alone and during the huge one, how many
 * completed during it, the huge one's own time and status, and the machine's load. Writes
 * bench-results/router-tokenize.json. Progress goes to stderr.
 */
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { cpus, loadavg, tmpdir } from "node:os";
import { join } from "node:path";
import { randomUUID } from "node:crypto";
import { Command } from "commander";
import { DEFAULT_MODEL, startCluster, type Cluster } from "../../services/cli/src/launcher.js";

const MODES = ["threads", "event-loop"] as const;
type Mode = (typeof MODES)[number];

const program = new Command("bench-router-tokenize")
  .option("--model <dir>", "checkpoint folder (needs a tokenizer)", DEFAULT_MODEL)
  .option("--size-mb <n>", "size of the huge prompt in MB (10^6 characters)", (v) => Number(v), 50)
  .option("--modes <list>", "threads | event-loop, comma-separated", MODES.join(","))
  .option("--baseline <n>", "small requests measured alone", (v) => Number(v), 20)
  .option("--out <dir>", "where the JSON goes", "bench-results")
  .parse();
const opts = program.opts<{ model: string; sizeMb: number; modes: string; baseline: number; out: string }>();
if (!(opts.sizeMb > 0)) throw new Error(`--size-mb must be positive, got ${opts.sizeMb}`);
if (!(Number.isInteger(opts.baseline) && opts.baseline >= 1)) throw new Error(`--baseline must be a positive integer, got ${opts.baseline}`);
const modes = opts.modes.split(",").map((m) => m.trim()) as Mode[];
for (const m of modes) if (!MODES.includes(m)) throw new Error(`--modes: unknown mode "${m}" (${MODES.join(", ")})`);

const log = (msg: string): void => void process.stderr.write(`${msg}\n`);
const SENTENCE = "The quick brown fox jumps over the lazy dog. ";
const chars = Math.round(opts.sizeMb * 1_000_000);
const HUGE = SENTENCE.repeat(Math.ceil(chars / SENTENCE.length)).slice(0, chars);

interface Small {
  readonly ms: number;
  readonly status: number;
}

async function small(url: string, model: string): Promise<Small> {
  const t0 = performance.now();
  const res = await fetch(`${url}/completions`, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify({ model, prompt: "Hello there, how are you today?", max_tokens: 2, temperature: 0 }),
  });
  await res.text();
  return { ms: performance.now() - t0, status: res.status };
}

function quantile(xs: readonly number[], q: number): number {
  if (xs.length === 0) return NaN;
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.max(0, Math.ceil(q * s.length) - 1))]!;
}

interface ModeResult {
  readonly mode: Mode;
  readonly baselineMs: { p50: number; p99: number; max: number; n: number };
  readonly duringMs: { p50: number; p99: number; max: number; n: number; failed: number };
  readonly huge: { ms: number; status: number; message: string };
}

async function runMode(mode: Mode): Promise<ModeResult> {
  const stateDir = mkdtempSync(join(tmpdir(), "moela-bench-tokenize-"));
  let cluster: Cluster | undefined;
  try {
    log(`[${mode}] starting a cluster ...`);
    cluster = await startCluster({
      model: opts.model,
      expertHosts: 1,
      port: 0,
      stateDir,
      queuePrefix: `bench-tok-${randomUUID().slice(0, 8)}`,
      logLevel: "warn",
      serviceArgs: {
        router: [`--max-prompt-chars=${chars + 1000}`, `--max-body-bytes=${chars + 1_000_000}`, `--tokenizer-threads=${mode === "threads" ? 1 : 0}`],
      },
    });
    const url = cluster.info.openai_base_url;
    const model = cluster.info.served_model_name;
    for (let i = 0; i < 3; i++) await small(url, model); // warm-up
    const base: number[] = [];
    for (let i = 0; i < opts.baseline; i++) base.push((await small(url, model)).ms);
    log(`[${mode}] baseline P50 ${quantile(base, 0.5).toFixed(1)} ms`);

    log(`[${mode}] sending a ${opts.sizeMb} MB prompt, small requests back to back meanwhile ...`);
    const body = JSON.stringify({ model, prompt: HUGE, max_tokens: 1 });
    let hugeDone = false;
    const t0 = performance.now();
    const huge = fetch(`${url}/completions`, { method: "POST", headers: { "content-type": "application/json" }, body }).then(async (res) => {
      const text = await res.text();
      hugeDone = true;
      let message = "";
      try {
        message = (JSON.parse(text) as { error?: { message?: string } }).error?.message ?? "";
      } catch {
        message = text.slice(0, 200);
      }
      return { ms: performance.now() - t0, status: res.status, message: message.slice(0, 160) };
    });
    const during: number[] = [];
    let failed = 0;
    // Small requests start once the huge body is on its way, each sent when the previous one is answered;
    // every one sent before the huge one is answered counts (on the event loop, the first waits it out).
    while (!hugeDone) {
      const s = await small(url, model);
      if (s.status === 200) during.push(s.ms);
      else failed++;
    }
    const h = await huge;
    log(
      `[${mode}] huge prompt: ${h.status} after ${(h.ms / 1000).toFixed(1)} s; ${during.length} small requests during it, max ${quantile(during, 1).toFixed(0)} ms`,
    );
    return {
      mode,
      baselineMs: { p50: quantile(base, 0.5), p99: quantile(base, 0.99), max: quantile(base, 1), n: base.length },
      duringMs: { p50: quantile(during, 0.5), p99: quantile(during, 0.99), max: quantile(during, 1), n: during.length, failed },
      huge: h,
    };
  } finally {
    await cluster?.stop();
    rmSync(stateDir, { recursive: true, force: true });
  }
}

const results: ModeResult[] = [];
for (const mode of modes) results.push(await runMode(mode));

const f = (x: number): string => (Number.isFinite(x) ? x.toFixed(1) : "-");
const lines = [
  `router tokenizer benchmark: one ${opts.sizeMb} MB text prompt, small completions back to back meanwhile (${cpus().length} CPUs, load ${loadavg()[0]!.toFixed(2)})`,
  "",
  "mode        alone P50/P99/max ms      during P50/P99/max ms        n during  huge prompt",
  ...results.map(
    (r) =>
      `${r.mode.padEnd(11)} ${`${f(r.baselineMs.p50)} / ${f(r.baselineMs.p99)} / ${f(r.baselineMs.max)}`.padEnd(25)} ${`${f(r.duringMs.p50)} / ${f(r.duringMs.p99)} / ${f(r.duringMs.max)}`.padEnd(28)} ${String(r.duringMs.n).padEnd(9)} ${r.huge.status} after ${(r.huge.ms / 1000).toFixed(1)} s`,
  ),
  "",
  ...results.map((r) => `${r.mode}: worst small request while busy = ${f(r.duringMs.max / r.baselineMs.p50)} x its P50 alone`),
];
process.stdout.write(`${lines.join("\n")}\n`);
mkdirSync(opts.out, { recursive: true });
const file = join(opts.out, "router-tokenize.json");
writeFileSync(file, `${JSON.stringify({ sizeMb: opts.sizeMb, cpus: cpus().length, loadavg: loadavg(), results }, null, 2)}\n`);
log(`wrote ${file}`);
