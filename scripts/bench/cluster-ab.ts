/**
 * One change to the cluster's scheduling against the default, measured side by side in one run (a script, not a
 * test). On these 2-vCPU VMs the cluster's tokens/s moves by 20% between runs minutes apart, so alternating whole
 * runs cannot show an effect of a few percent. Here every service flips the A/B switch --switch together, on in
 * every odd --window-ms of the wall clock (@moela/core's ab-switch.ts), and the client sorts each interval between
 * two tokens of a stream by the window it fell in: both sides see the same noise.
 *
 *   npx tsx scripts/bench/cluster-ab.ts --switch decode-keep-cores [--model /tmp/moela-large-v3] [--streams 1]
 *        [--tokens 1000] [--rounds 3] [--window-ms 100] [--guard-ms 2] [--out bench-results]
 *
 * `--switch none` flips nothing and sorts the intervals all the same: the noise floor of the method (an A/A
 * run), which a real effect has to stand out from. Prints, per round and over all rounds, each side's intervals,
 * median and mean, and on/off: below 1 means the switch's side is faster. Writes <out>/cluster-ab.json and .html.
 */
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { randomUUID } from "node:crypto";
import { Command } from "commander";
import { AB_MIN_WINDOW_MS, AB_SWITCHES, isAbSwitch } from "@moela/core";
import { DEFAULT_MODEL, startCluster } from "../../services/cli/src/launcher.js";
import { commandLine, describeMachine, fmt, log, machineInfo, textTable, writeReport, type Bar } from "../lib/bench-report.js";
import { classifyIntervals, summarizeAb, type AbSummary } from "./ab-intervals.js";
import { streamArrivals } from "./stream-arrivals.js";

/** "low-high" of a summary's paired ratio, or "n/a" with too few windows for one. */
function interval(s: AbSummary): string {
  const [low, high] = s.pairedInterval;
  return Number.isNaN(low) ? "n/a" : `${fmt(low, 3)}-${fmt(high, 3)}x`;
}

const opts = new Command()
  .requiredOption("--switch <name>", `the A/B switch to flip: ${Object.keys(AB_SWITCHES).join(", ")}, or none (the noise floor)`)
  .option("--model <dir>", "checkpoint folder", DEFAULT_MODEL)
  .option("--streams <n>", "concurrent greedy streams", (v) => Number(v), 1)
  .option("--tokens <n>", "tokens per stream per round", (v) => Number(v), 1000)
  .option("--rounds <n>", "rounds of --streams streams", (v) => Number(v), 3)
  .option("--window-ms <ms>", "how long the switch stays on or off; several decode steps", (v) => Number(v), 100)
  .option("--guard-ms <ms>", "an interval counts only if it and this much before it lie in one window", (v) => Number(v), 2)
  .option("--out <dir>", "where the JSON and HTML go", "bench-results")
  .parse()
  .opts<{ switch: string; model: string; streams: number; tokens: number; rounds: number; windowMs: number; guardMs: number; out: string }>();

const checks: ReadonlyArray<readonly [string, number, boolean, number]> = [
  ["--streams", opts.streams, true, 1],
  ["--tokens", opts.tokens, true, 2],
  ["--rounds", opts.rounds, true, 1],
  ["--window-ms", opts.windowMs, true, AB_MIN_WINDOW_MS],
  ["--guard-ms", opts.guardMs, false, 0],
];
for (const [flag, v, integer, least] of checks) {
  if (!(Number.isFinite(v) && v >= least && (!integer || Number.isInteger(v)))) {
    log(`cluster-ab: ${flag} must be ${integer ? "an integer" : "a number"} >= ${least}, got ${v}`);
    process.exit(2);
  }
}
if (opts.switch !== "none" && !isAbSwitch(opts.switch)) {
  log(`cluster-ab: --switch "${opts.switch}" is not a switch; the switches are: ${Object.keys(AB_SWITCHES).join(", ")}, or none`);
  process.exit(2);
}
if (opts.guardMs >= opts.windowMs / 2) {
  log(`cluster-ab: --guard-ms ${opts.guardMs} leaves little of a ${opts.windowMs} ms window: keep it under half of --window-ms`);
  process.exit(2);
}

/** Milliseconds since the epoch with sub-millisecond digits: the services' Date.now() scale. */
const epochMs = (): number => performance.timeOrigin + performance.now();

const sideRow = (label: string, s: AbSummary["off"]): string[] => [label, String(s.intervals), fmt(s.medianMs, 3), fmt(s.meanMs, 3)];

async function main(): Promise<void> {
  const machine = machineInfo();
  const stateDir = mkdtempSync(join(tmpdir(), "moela-ab-"));
  const env: NodeJS.ProcessEnv = { ...process.env, MOELA_AB_WINDOW_MS: String(opts.windowMs) };
  if (opts.switch === "none") delete env["MOELA_AB_SWITCH"];
  else env["MOELA_AB_SWITCH"] = opts.switch;
  log(`starting a cluster on ${opts.model}, A/B switch ${opts.switch}, ${opts.windowMs} ms windows ...`);
  const cluster = await startCluster({ model: resolve(opts.model), port: 0, stateDir, queuePrefix: `ab-${randomUUID().slice(0, 8)}`, logLevel: "warn", env });
  const rounds: Array<{ summary: AbSummary; dropped: number }> = [];
  const all: number[][] = [];
  try {
    const base = cluster.info.openai_base_url;
    const model = cluster.info.served_model_name;
    const run = (seed: number, tokens: number): Promise<number[][]> =>
      Promise.all(Array.from({ length: opts.streams }, (_, i) => streamArrivals({ base, model, seed: seed + i, tokens, now: epochMs }, [])));
    log(`warming up: ${opts.streams} stream(s) of 200 tokens ...`);
    await run(1, 200);
    for (let r = 0; r < opts.rounds; r++) {
      log(`round ${r + 1} of ${opts.rounds}: ${opts.streams} stream(s) of ${opts.tokens} tokens ...`);
      const streams = await run(1000 * (r + 1), opts.tokens);
      // A stream's first token comes from prefill, and the interval after it holds the hand-off to decode: leave it out.
      const decoding = streams.map((a) => a.slice(1));
      const c = classifyIntervals(decoding, opts.windowMs, opts.guardMs);
      rounds.push({ summary: summarizeAb(c), dropped: c.dropped });
      all.push(...decoding);
    }
  } finally {
    await cluster.stop();
    rmSync(stateDir, { recursive: true, force: true });
  }
  const c = classifyIntervals(all, opts.windowMs, opts.guardMs);
  const total = summarizeAb(c);
  if (total.off.intervals === 0 || total.on.intervals === 0) throw new Error("one side got no interval: raise --tokens or --window-ms");
  const what =
    opts.switch === "none" ? "nothing flips: the two sides differ by noise alone (an A/A run)" : AB_SWITCHES[opts.switch as keyof typeof AB_SWITCHES];
  const text = [
    `moela cluster A/B: switch ${opts.switch} on ${opts.model}, ${opts.streams} stream(s) x ${opts.tokens} tokens x ${opts.rounds} round(s), ${opts.windowMs} ms windows, guard ${opts.guardMs} ms`,
    `on: ${what}`,
    describeMachine(machine),
    `command: ${commandLine()}`,
    "",
    "Milliseconds between consecutive tokens of a stream, as the client saw them, by the side of the switch in force",
    ...textTable(
      ["", "intervals", "median ms", "mean ms", "on/off (median)", "on/off (mean)", "on/off (neighbours)", "its 95% interval", "dropped at window edges"],
      [
        ...rounds.flatMap(({ summary, dropped }, i) => [
          [...sideRow(`round ${i + 1} off`, summary.off), "", "", "", "", ""],
          [
            ...sideRow(`round ${i + 1} on`, summary.on),
            `${fmt(summary.medianRatio, 3)}x`,
            `${fmt(summary.meanRatio, 3)}x`,
            `${fmt(summary.pairedRatio, 3)}x`,
            interval(summary),
            String(dropped),
          ],
        ]),
        [...sideRow("all off", total.off), "", "", "", "", ""],
        [
          ...sideRow("all on", total.on),
          `${fmt(total.medianRatio, 3)}x`,
          `${fmt(total.meanRatio, 3)}x`,
          `${fmt(total.pairedRatio, 3)}x`,
          interval(total),
          String(c.dropped),
        ],
      ],
    ),
    "",
    "on/off below 1: the switch's side is faster. (neighbours): the median over on windows of each one's median interval",
    `over the mean of the medians of the off windows on either side (${total.pairs} such windows over all rounds): a steady drift of`,
    "the machine's speed cancels in it, so it is the figure to read. Its 95% interval is a bootstrap over runs of neighbouring",
    "windows: one that holds 1.000 means this run cannot tell the switch from the noise (run longer: more --rounds or --tokens).",
    "Compare with a --switch none run: its on/off is the method's noise.",
  ];
  for (const line of text) console.log(line);
  const bars: Bar[] = rounds.flatMap(({ summary }, i) => [
    { label: `round ${i + 1}, off`, value: summary.off.medianMs, group: "median interval" },
    { label: `round ${i + 1}, on`, value: summary.on.medianMs, note: `${fmt(summary.medianRatio, 3)}x`, group: "median interval" },
  ]);
  const [, html] = writeReport(
    opts.out,
    "cluster-ab",
    `Cluster A/B: ${opts.switch}`,
    text,
    [{ title: `Median milliseconds between tokens, switch ${opts.switch} off and on`, unit: "ms", bars }],
    // The arrivals too (epoch ms, per stream, every round after its first token), so that a run can be summed up again.
    { machine, options: opts, switch: opts.switch, rounds, total, dropped: c.dropped, arrivals: all },
  );
  log(`wrote ${html}`);
}

await main().catch((err: unknown) => {
  log(`cluster-ab: ${err instanceof Error ? err.message : String(err)}`);
  process.exitCode = 1;
});
