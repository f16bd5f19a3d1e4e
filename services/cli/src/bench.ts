/**
 * `moela bench`: the load generator (@moela/loadgen) against one or two OpenAI-compatible servers.
 * This file only turns flags into a bench plan, runs it, and prints and writes the report.
 */
import { mkdirSync, readFileSync, writeFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { InvalidArgumentError } from "@moela/core";
import {
  DEFAULT_ID_RANGE,
  buildReport,
  buildRequests,
  deriveSeed,
  fetchModelName,
  formatLengthDist,
  formatReport,
  latencySvg,
  normalizeBaseUrl,
  openAiTarget,
  parseIdRange,
  parseLengthDist,
  progressReporter,
  realClock,
  runBench,
  type Api,
  type LoadLevel,
  type TargetInfo,
  type WorkloadSpec,
} from "@moela/loadgen";

/** --token-id-range's default, "3:999". */
export const DEFAULT_TOKEN_ID_RANGE = `${DEFAULT_ID_RANGE.lo}:${DEFAULT_ID_RANGE.hi}`;

export interface BenchCliOptions {
  target: string[];
  label: string[];
  model?: string;
  api: string;
  /** "1,4,16": closed loop at each concurrency in turn. */
  concurrency?: string;
  /** "2,4,inf": open loop (Poisson) at each rate in turn, requests/s. */
  requestRate?: string;
  numPrompts: number;
  warmup: number;
  rounds: number;
  inputLen: string;
  outputLen: string;
  prompt: string;
  tokenIdRange: string;
  seed: number;
  temperature: number;
  ignoreEos: boolean;
  continuousUsage: boolean;
  timeout: number;
  apiKey?: string;
  json?: string;
  svg?: string;
  progress: boolean;
}

/** "1,4,16" -> [1, 4, 16]; "inf" allowed where `allowInf` (request rates). */
export function parseLevels(v: string, what: string, allowInf: boolean): number[] {
  const xs = v
    .split(",")
    .map((s) => s.trim())
    .filter((s) => s !== "");
  const out = xs.map((s) => (allowInf && s === "inf" ? Number.POSITIVE_INFINITY : Number(s)));
  const bad = out.some((n) => Number.isNaN(n) || n <= 0 || (!allowInf && !Number.isInteger(n)));
  if (out.length === 0 || bad) {
    throw new InvalidArgumentError(`${what} must be a comma-separated list of ${allowInf ? "positive numbers or inf" : "positive integers"}, got "${v}"`);
  }
  return out;
}

function stamp(d: Date): string {
  return d.toISOString().replace(/[-:]/g, "").replace("T", "-").slice(0, 15);
}

function write(path: string, text: string): void {
  mkdirSync(dirname(path), { recursive: true });
  writeFileSync(path, text);
}

/** The command line that reruns this bench, every setting spelled out (defaults included). */
export function benchCommandLine(o: BenchCliOptions): string {
  const quote = (v: string) => (/^[\w@%+=:,./-]+$/.test(v) ? v : `'${v.replace(/'/g, "'\\''")}'`);
  const parts = ["moela", "bench"];
  for (const t of o.target) parts.push("--target", t);
  for (const l of o.label) parts.push("--label", l);
  if (o.model !== undefined) parts.push("--model", o.model);
  parts.push("--api", o.api);
  if (o.requestRate !== undefined) parts.push("--request-rate", o.requestRate);
  else parts.push("--concurrency", o.concurrency ?? "1");
  parts.push("--num-prompts", String(o.numPrompts), "--warmup", String(o.warmup), "--rounds", String(o.rounds));
  parts.push("--input-len", o.inputLen, "--output-len", o.outputLen, "--prompt", o.prompt);
  if (o.prompt === "ids") parts.push("--token-id-range", o.tokenIdRange);
  parts.push("--seed", String(o.seed), "--temperature", String(o.temperature));
  if (!o.ignoreEos) parts.push("--no-ignore-eos");
  if (!o.continuousUsage) parts.push("--no-continuous-usage");
  parts.push("--timeout", String(o.timeout));
  return parts.map(quote).join(" ");
}

export async function runBenchCli(o: BenchCliOptions): Promise<number> {
  if (o.target.length === 0) throw new InvalidArgumentError("--target URL is required (twice to compare two servers)");
  if (o.concurrency !== undefined && o.requestRate !== undefined) throw new InvalidArgumentError("give --concurrency or --request-rate, not both");
  if (o.api !== "completions" && o.api !== "chat") throw new InvalidArgumentError(`--api must be completions or chat, got "${o.api}"`);
  if (o.prompt !== "ids" && o.prompt !== "words") throw new InvalidArgumentError(`--prompt must be ids or words, got "${o.prompt}"`);
  if (o.api === "chat" && o.prompt === "ids") throw new InvalidArgumentError("--api chat needs --prompt words");
  for (const [k, v] of [
    ["--num-prompts", o.numPrompts],
    ["--rounds", o.rounds],
  ] as const) {
    if (v < 1) throw new InvalidArgumentError(`${k} must be >= 1`);
  }
  if (o.warmup < 0) throw new InvalidArgumentError("--warmup must be >= 0");
  const levels: LoadLevel[] =
    o.requestRate !== undefined
      ? parseLevels(o.requestRate, "--request-rate", true).map((value) => ({ kind: "rate", value }))
      : parseLevels(o.concurrency ?? "1", "--concurrency", false).map((value) => ({ kind: "concurrency", value }));
  const readText = (p: string) => readFileSync(p, "utf8");
  const workload: WorkloadSpec = {
    input: parseLengthDist(o.inputLen, readText),
    output: parseLengthDist(o.outputLen, readText),
    prompt: o.prompt === "ids" ? { kind: "ids", ...parseIdRange(o.tokenIdRange) } : { kind: "words" },
  };
  const urls = o.target.map(normalizeBaseUrl);
  const names = urls.map((u, i) => o.label[i] ?? `${new URL(u).host}${urls.indexOf(u) === i ? "" : `#${i + 1}`}`);
  const models = await Promise.all(urls.map((u) => o.model ?? fetchModelName(u, o.apiKey !== undefined ? { apiKey: o.apiKey } : {})));
  const targets = urls.map((u, i) =>
    openAiTarget({
      name: names[i]!,
      baseUrl: u,
      model: models[i]!,
      api: o.api as Api,
      ignoreEos: o.ignoreEos,
      continuousUsage: o.continuousUsage,
      temperature: o.temperature,
      timeoutMs: o.timeout * 1000,
      ...(o.apiKey !== undefined ? { apiKey: o.apiKey } : {}),
    }),
  );
  const infos: TargetInfo[] = targets.map((t, i) => ({ name: t.name, url: t.url, model: models[i]! }));

  const ac = new AbortController();
  const onSigint = () => {
    process.stderr.write("\ninterrupted: stopping (partial results follow)\n");
    ac.abort(new Error("interrupted"));
  };
  process.once("SIGINT", onSigint);
  const progress = o.progress ? progressReporter(process.stderr, names) : null;
  const startedAt = new Date();
  let runs;
  try {
    runs = await runBench({
      targets,
      levels,
      numPrompts: o.numPrompts,
      warmup: o.warmup,
      rounds: o.rounds,
      requests: (level, phase, count) => buildRequests(workload, count, deriveSeed(o.seed, level, phase === "warmup" ? 1 : 0)),
      arrivalSeed: (level) => deriveSeed(o.seed, level, 2),
      clock: realClock,
      signal: ac.signal,
      ...(progress !== null ? { onProgress: progress.onProgress } : {}),
    });
  } finally {
    progress?.stop();
    process.removeListener("SIGINT", onSigint);
  }
  const config = {
    command: benchCommandLine(o),
    api: o.api,
    mode: levels[0]!.kind === "rate" ? "open loop (Poisson)" : "closed loop",
    numPrompts: o.numPrompts,
    warmup: o.warmup,
    rounds: o.rounds,
    inputLen: formatLengthDist(workload.input),
    outputLen: formatLengthDist(workload.output),
    prompt: workload.prompt,
    seed: o.seed,
    temperature: o.temperature,
    ignoreEos: o.ignoreEos,
    continuousUsage: o.continuousUsage,
  };
  const report = buildReport(runs, infos, config, startedAt);
  process.stdout.write(`${formatReport(report)}\n`);
  const base = join("bench-results", `bench-${stamp(startedAt)}`);
  const jsonPath = o.json ?? `${base}.json`;
  const svgPath = o.svg ?? `${base}.svg`;
  write(jsonPath, `${JSON.stringify(report, null, 2)}\n`);
  write(svgPath, latencySvg(report));
  process.stderr.write(`wrote ${jsonPath} and ${svgPath}\n`);
  if (ac.signal.aborted) return 130;
  // A level where a target completed nothing measured nothing: fail the run.
  return report.levels.some((l) => l.stats.some((s) => s.completed === 0)) ? 1 : 0;
}
