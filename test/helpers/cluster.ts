/**
 * A real local cluster for end-to-end tests, started exactly as users start it: the `moela cluster`
 * command as a child process (`--json --port 0`), with its own state folder and a unique queue
 * prefix, so several clusters and test files never share ports, queues or cluster.json. The
 * launcher prints cluster.json as one line on stdout when every service is up; stop() sends it
 * SIGTERM (what Ctrl-C does), waits for it to stop everything, and makes sure no service process
 * outlives the test. Also: `moela generate --json` as a process, the single-process answer the
 * cluster is compared with.
 */
import { execFile, spawn, type ChildProcess } from "node:child_process";
import { randomUUID } from "node:crypto";
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { createInterface } from "node:readline";
import { promisify } from "node:util";
import { internalSecurity, type InternalSecurity } from "@moela/rpc";
import { MOELA_BIN, REPO_ROOT, TINY_MODEL, type ClusterInfo, type InstanceInfo, type Precision, type Role } from "../../services/cli/src/launcher.js";

const execFileAsync = promisify(execFile);

export interface TestClusterOptions {
  /** Checkpoint folder (default: the bundled models/tiny-v3). */
  readonly model?: string;
  readonly precision?: Precision;
  readonly prefill?: number;
  readonly decode?: number;
  readonly expertHosts?: number;
  /** Extra flags per role (`moela cluster --service-arg role=flag`). */
  readonly serviceArgs?: Partial<Record<Role, readonly string[]>>;
  readonly logLevel?: string;
  readonly startupTimeoutS?: number;
  /** `moela cluster` flags of internal security (--internal-secret-file, --tls-cert, ...); default none:
   * the launcher then generates the cluster's secret itself. */
  readonly internalArgs?: readonly string[];
}

/**
 * The internal security a client of the cluster's services needs: the secret from the file cluster.json
 * names (moela cluster writes a random one by default), plus `tls` when the services run TLS.
 */
export function clusterSecurity(info: Pick<ClusterInfo, "internal">, tls?: Parameters<typeof internalSecurity>[0]["tls"]): InternalSecurity {
  const file = info.internal?.secret_file;
  return internalSecurity({ secrets: file === undefined ? [] : [readFileSync(file, "utf8").trim()], ...(tls !== undefined ? { tls } : {}) });
}

export interface TestCluster {
  readonly info: ClusterInfo;
  /** http://127.0.0.1:PORT/v1, for the openai client's baseURL. */
  readonly baseURL: string;
  readonly model: string;
  readonly stateDir: string;
  readonly launcher: ChildProcess;
  /** Instances of one role, by index. */
  instances(role: Role): InstanceInfo[];
  /** The launcher's stderr so far (progress lines, errors). */
  stderr(): string;
  /** Stop everything; resolves with the launcher's exit code once no service process is left. */
  stop(): Promise<number | null>;
}

/** Every pid a test cluster started, killed hard should the test process exit without stop(). */
const livePids = new Set<number>();
let exitHookInstalled = false;
function installExitHook(): void {
  if (exitHookInstalled) return;
  exitHookInstalled = true;
  process.on("exit", () => {
    for (const pid of livePids) {
      try {
        process.kill(pid, "SIGKILL");
      } catch {
        // already gone
      }
    }
  });
}

export function isAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

async function waitGone(pids: readonly number[], timeoutMs: number): Promise<number[]> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const left = pids.filter(isAlive);
    if (left.length === 0 || Date.now() > deadline) return left;
    await new Promise((r) => setTimeout(r, 100));
  }
}

export interface LaunchedCluster {
  readonly launcher: ChildProcess;
  /** The launcher's exit code, once it has exited. */
  readonly exited: Promise<number | null>;
  /** cluster.json, once every service is up; rejects if the launcher exits first. */
  readonly up: Promise<ClusterInfo>;
  /** The launcher's stderr so far. */
  stderr(): string;
}

/**
 * `moela cluster --json --port 0` as a process, on its own state folder and queue prefix, `args` after
 * those (the model, the topology, ...).
 */
export function launchCluster(stateDir: string, queuePrefix: string, args: readonly string[], env: NodeJS.ProcessEnv = process.env): LaunchedCluster {
  const argv = [MOELA_BIN, "cluster", "--json", "--port", "0", "--state-dir", stateDir, "--queue-prefix", queuePrefix, ...args];
  const launcher = spawn(process.execPath, argv, { cwd: REPO_ROOT, stdio: ["ignore", "pipe", "pipe"], env });
  let stderr = "";
  launcher.stderr!.on("data", (b: Buffer) => (stderr += b.toString()));
  const exited = new Promise<number | null>((resolve) => launcher.once("exit", (code) => resolve(code)));
  const up = new Promise<ClusterInfo>((resolve, reject) => {
    const rl = createInterface({ input: launcher.stdout! });
    rl.on("line", (line) => {
      if (!line.startsWith("{")) return;
      try {
        resolve(JSON.parse(line) as ClusterInfo);
      } catch (err) {
        reject(new Error(`moela cluster printed a bad JSON line: ${(err as Error).message}\n${line}`));
      }
    });
    void exited.then((code) => reject(new Error(`moela cluster exited with code ${code} before the cluster was up:\n${stderr.slice(-6000)}`)));
  });
  return { launcher, exited, up, stderr: () => stderr };
}

export async function startTestCluster(o: TestClusterOptions = {}): Promise<TestCluster> {
  installExitHook();
  const stateDir = mkdtempSync(join(tmpdir(), "moela-e2e-cluster-"));
  const args = [
    "--precision",
    o.precision ?? "exact",
    "--prefill",
    String(o.prefill ?? 1),
    "--decode",
    String(o.decode ?? 1),
    "--expert-hosts",
    String(o.expertHosts ?? 2),
    "--log-level",
    o.logLevel ?? "warn",
    "--startup-timeout",
    String(o.startupTimeoutS ?? 240),
    // The random-weight miniature unless a test asks for another: tests do not follow npm start's default model.
    "--model",
    o.model ?? TINY_MODEL,
    ...(o.internalArgs ?? []),
    ...Object.entries(o.serviceArgs ?? {}).flatMap(([role, flags]) => flags.flatMap((f) => ["--service-arg", `${role}=${f}`])),
  ];
  const { launcher, exited, up, stderr } = launchCluster(stateDir, `e2e-${randomUUID().slice(0, 8)}`, args);
  livePids.add(launcher.pid!);
  // A pid that exited may be reused by the system; never kill it later.
  void exited.then(() => livePids.delete(launcher.pid!));
  const info = await up;
  for (const i of info.instances) livePids.add(i.pid);

  let stopping: Promise<number | null> | undefined;
  const stop = (): Promise<number | null> => {
    stopping ??= (async () => {
      const pids = info.instances.map((i) => i.pid);
      if (launcher.exitCode === null && launcher.signalCode === null) launcher.kill("SIGTERM");
      const code = await Promise.race([exited, new Promise<"late">((r) => setTimeout(() => r("late"), 60_000))]);
      // The launcher SIGKILLs services after its grace period; anything left now is a leak. Kill it
      // so the test run stays clean, and say so through the exit code the caller asserts on.
      const left = await waitGone(pids, 5_000);
      for (const pid of [...left, ...(code === "late" ? [launcher.pid!] : [])]) {
        try {
          process.kill(pid, "SIGKILL");
        } catch {
          // gone meanwhile
        }
      }
      for (const pid of [...pids, launcher.pid!]) livePids.delete(pid);
      rmSync(stateDir, { recursive: true, force: true });
      if (code === "late") throw new Error(`moela cluster did not exit within 60 s of SIGTERM:\n${stderr().slice(-3000)}`);
      if (left.length > 0) throw new Error(`service processes outlived the launcher: ${left.join(", ")}`);
      return code;
    })();
    return stopping;
  };

  return {
    info,
    baseURL: info.openai_base_url,
    model: info.served_model_name,
    stateDir,
    launcher,
    instances: (role) => info.instances.filter((i) => i.role === role),
    stderr,
    stop,
  };
}

// ---- metrics -----------------------------------------------------------------------------------

// The benchmarks read /metrics the same way.
export { metricSum, parseMetrics, scrapeMetrics, type MetricSamples } from "../../scripts/lib/metrics-text.js";

// ---- moela generate ----------------------------------------------------------------------------

export interface GenerateRequest {
  readonly model?: string;
  readonly promptIds?: readonly number[];
  readonly chat?: string;
  readonly prompt?: string;
  readonly maxTokens: number;
  readonly precision?: Precision;
  /** Same H as the cluster's, so the dispatch is split (and rounded) the same way. */
  readonly expertHosts?: number;
  readonly topLogprobs?: number;
  readonly extraArgs?: readonly string[];
  /** Kill the process after this long (default GENERATE_DEADLINE_MS), so a hung one fails naming itself. */
  readonly deadlineMs?: number;
}

/**
 * Longer than any `moela generate` the suite runs takes on a loaded 2-core machine (seconds), shorter than the
 * tests' own timeouts: a child that hangs (once seen in Node's module loader, before any moela code ran) is then
 * killed and reported as a hang, instead of outliving the test behind a bare timeout.
 */
const GENERATE_DEADLINE_MS = 45_000;

export interface GenerateResult {
  readonly tokenIds: number[];
  readonly logprobs: number[];
  readonly topLogprobs: Array<Array<[number, number]>>;
  readonly text: string | undefined;
  readonly finishReason: string;
  readonly raw: Record<string, unknown>;
}

/** Greedy `moela generate ... --json` in its own process. */
export async function moelaGenerate(r: GenerateRequest): Promise<GenerateResult> {
  const args = [
    MOELA_BIN,
    "generate",
    "--model",
    r.model ?? join(REPO_ROOT, "models/tiny-v3"),
    "--max-tokens",
    String(r.maxTokens),
    "--temperature",
    "0",
    "--json",
    "--top-logprobs",
    String(r.topLogprobs ?? 1),
    ...(r.precision !== undefined ? ["--precision", r.precision] : []),
    ...(r.expertHosts !== undefined ? ["--expert-hosts", String(r.expertHosts)] : []),
    ...(r.promptIds !== undefined ? ["--prompt-ids", r.promptIds.join(",")] : []),
    ...(r.chat !== undefined ? ["--chat", r.chat] : []),
    ...(r.prompt !== undefined ? ["--prompt", r.prompt] : []),
    ...(r.extraArgs ?? []),
  ];
  const deadlineMs = r.deadlineMs ?? GENERATE_DEADLINE_MS;
  let stdout: string;
  try {
    ({ stdout } = await execFileAsync(process.execPath, args, { cwd: REPO_ROOT, maxBuffer: 64 * 1024 * 1024, timeout: deadlineMs, killSignal: "SIGKILL" }));
  } catch (err) {
    const e = err as { code?: unknown; killed?: boolean; stderr?: string };
    const why = e.killed === true ? `hung: killed after ${deadlineMs} ms without exiting` : `exit ${String(e.code)}`;
    throw new Error(`moela generate failed (${why}): ${args.slice(1).join(" ")}\n${e.stderr ?? ""}`);
  }
  const raw = JSON.parse(stdout.trim().split("\n").at(-1)!) as Record<string, unknown>;
  return {
    tokenIds: raw["token_ids"] as number[],
    logprobs: raw["logprobs"] as number[],
    topLogprobs: raw["top_logprobs"] as Array<Array<[number, number]>>,
    text: raw["text"] as string | undefined,
    finishReason: raw["finish_reason"] as string,
    raw,
  };
}

/** Run `work` over `items` with at most `limit` in flight (keeps 2 cores from thrashing). */
export async function mapLimit<T, R>(items: readonly T[], limit: number, work: (item: T, i: number) => Promise<R>): Promise<R[]> {
  const out = new Array<R>(items.length);
  let next = 0;
  const lanes = Array.from({ length: Math.min(limit, items.length) }, async () => {
    while (next < items.length) {
      const i = next++;
      out[i] = await work(items[i]!, i);
    }
  });
  await Promise.all(lanes);
  return out;
}
