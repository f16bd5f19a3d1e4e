/**
 * Start-up benchmark (a script, not a test): how long the CLI and its services take to start from compiled
 * JavaScript (bin/moela.js's default, services/cli/bin/compiled-js.mjs) against from the TypeScript sources
 * through tsx (MOELA_TSX=1), alternating the two in every round so that both meet the same machine.
 *
 *   npx tsx scripts/bench/startup.ts [--rounds 5] [--model models/tiny-v3] [--out bench-results]
 *
 * Per round and way:
 *   1. `moela --version`: the CLI alone;
 *   2. `moela generate --max-tokens 1`: load the model, one token, exit;
 *   3. `moela serve --role expert-host` (shard 0 of 2, no Redis): spawn to its ready line;
 *   4. `moela cluster --json --port 0` (the default topology: 2 expert-hosts, prefill, decode, router): spawn to
 *      cluster.json's line, then SIGTERM and the launcher's exit.
 * Prints each measurement's median per way and their ratio, and writes bench-results/startup.json and
 * startup.html (a bar chart of the medians). The first compiled run compiles whatever changed since the last; it
 * happens before the rounds, unmeasured.
 */
import { spawn, execFile } from "node:child_process";
import { mkdtempSync, rmSync } from "node:fs";
import { loadavg, tmpdir } from "node:os";
import { join } from "node:path";
import { randomUUID } from "node:crypto";
import { createInterface } from "node:readline";
import { promisify } from "node:util";
import { Command } from "commander";
import { MOELA_BIN, REPO_ROOT, TINY_MODEL } from "../../services/cli/src/paths.js";
import { commandLine, describeMachine, log, machineInfo, median, textTable, writeReport, type Bar } from "../lib/bench-report.js";

const program = new Command("bench-startup")
  .option("--rounds <n>", "rounds, each running every measurement both ways", (v) => Number(v), 5)
  .option("--model <dir>", "checkpoint folder", TINY_MODEL)
  .option("--out <dir>", "where the JSON goes", "bench-results")
  .parse();
const opts = program.opts<{ rounds: number; model: string; out: string }>();
if (!(Number.isInteger(opts.rounds) && opts.rounds >= 1)) throw new Error(`--rounds must be a positive integer, got ${opts.rounds}`);

const execFileAsync = promisify(execFile);
const WAYS = { compiled: { MOELA_TSX: "" }, tsx: { MOELA_TSX: "1" } } as const;
type Way = keyof typeof WAYS;

/** Milliseconds from spawning `moela <args>` to its exit (it must exit 0). */
async function untilExit(args: readonly string[], env: NodeJS.ProcessEnv): Promise<number> {
  const t0 = performance.now();
  await execFileAsync(process.execPath, [MOELA_BIN, ...args], { cwd: REPO_ROOT, env: { ...process.env, ...env }, maxBuffer: 64 << 20 });
  return performance.now() - t0;
}

/** Milliseconds from spawning `moela <args>` to a stdout line matching `ready`; then SIGTERM and wait for its exit. */
async function untilLine(args: readonly string[], env: NodeJS.ProcessEnv, ready: RegExp): Promise<number> {
  const t0 = performance.now();
  const child = spawn(process.execPath, [MOELA_BIN, ...args], { cwd: REPO_ROOT, env: { ...process.env, ...env }, stdio: ["ignore", "pipe", "pipe"] });
  let stderr = "";
  child.stderr.on("data", (b: Buffer) => (stderr = (stderr + b.toString()).slice(-4000)));
  const exited = new Promise<number | null>((resolve) => child.once("exit", (code) => resolve(code)));
  const ms = await new Promise<number>((resolve, reject) => {
    createInterface({ input: child.stdout }).on("line", (line) => {
      if (ready.test(line)) resolve(performance.now() - t0);
    });
    void exited.then((code) => reject(new Error(`moela ${args[0]} exited (${code}) before it was ready:\n${stderr}`)));
  });
  child.kill("SIGTERM");
  await exited;
  return ms;
}

const stateDir = mkdtempSync(join(tmpdir(), "moela-bench-startup-"));
const MEASUREMENTS: Record<string, (env: NodeJS.ProcessEnv) => Promise<number>> = {
  "moela --version": (env) => untilExit(["--version"], env),
  "moela generate, 1 token": (env) =>
    untilExit(["generate", "--model", opts.model, "--prompt-ids", "0,399,332", "--max-tokens", "1", "--temperature", "0"], env),
  "one expert-host, spawn to ready": (env) =>
    untilLine(
      ["serve", "--role", "expert-host", "--model", opts.model, "--shard-index", "0", "--shard-count", "2", "--log-level", "warn"],
      env,
      /"event":"ready"/,
    ),
  "moela cluster (5 services), spawn to up": (env) =>
    untilLine(
      [
        "cluster",
        "--json",
        "--port",
        "0",
        "--model",
        opts.model,
        "--state-dir",
        stateDir,
        "--queue-prefix",
        `bench-${randomUUID().slice(0, 8)}`,
        "--log-level",
        "warn",
      ],
      env,
      /^\{/,
    ),
};

try {
  const machine = machineInfo();
  log(`startup: ${describeMachine(machine)}; compiling first (unmeasured) ...`);
  await untilExit(["--version"], WAYS.compiled);
  const samples: Record<string, Record<Way, number[]>> = {};
  for (const name of Object.keys(MEASUREMENTS)) samples[name] = { compiled: [], tsx: [] };
  for (let r = 0; r < opts.rounds; r++) {
    for (const [name, measure] of Object.entries(MEASUREMENTS)) {
      // Alternate which way goes first, so neither always meets the other's leftovers.
      const order: Way[] = r % 2 === 0 ? ["compiled", "tsx"] : ["tsx", "compiled"];
      for (const way of order) samples[name]![way].push(await measure(WAYS[way]));
    }
    log(`  round ${r + 1}/${opts.rounds} done`);
  }
  const rows = Object.entries(samples).map(([name, s]) => ({ name, compiledMs: median(s.compiled), tsxMs: median(s.tsx), compiled: s.compiled, tsx: s.tsx }));
  const lines = [
    commandLine(),
    describeMachine(machine),
    `medians of ${opts.rounds} rounds, ms (load average ${loadavg()[0]!.toFixed(2)} at the end)`,
    "",
    ...textTable(
      ["", "compiled JS", "tsx (MOELA_TSX=1)", "tsx / compiled"],
      rows.map((r) => [r.name, r.compiledMs.toFixed(0), r.tsxMs.toFixed(0), `${(r.tsxMs / r.compiledMs).toFixed(2)}x`]),
    ),
  ];
  console.log(`\n${lines.join("\n")}`);
  const bars: Bar[] = rows.flatMap((r) => [
    { label: "compiled JS", value: r.compiledMs, group: r.name },
    { label: "tsx", value: r.tsxMs, note: `${(r.tsxMs / r.compiledMs).toFixed(2)}x`, group: r.name },
  ]);
  const [json, html] = writeReport(
    opts.out,
    "startup",
    "Start-up: compiled JavaScript against tsx",
    lines,
    [{ title: "median start-up time", unit: "ms", bars }],
    {
      rounds: opts.rounds,
      model: opts.model,
      machine,
      rows,
    },
  );
  log(`\nwrote ${json} and ${html}`);
} finally {
  rmSync(stateDir, { recursive: true, force: true });
}
