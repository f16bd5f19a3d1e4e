/**
 * A real Prometheus server (Debian's `prometheus` binary) on 127.0.0.1 for tests: a generated
 * config scraping the given /metrics URLs every second, a private TSDB folder, the HTTP API for
 * queries, and promtool for linting expositions. .ci/run installs the package when it is missing.
 */
import { spawn, spawnSync, type ChildProcess } from "node:child_process";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { createServer } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { vi } from "vitest";

export interface ScrapeTarget {
  /** http://host:port/path */
  readonly url: string;
  readonly labels: Readonly<Record<string, string>>;
}

export interface PromSample {
  readonly metric: Record<string, string>;
  readonly value: [number, string];
}

export interface PromTarget {
  readonly scrapeUrl: string;
  readonly health: "up" | "down" | "unknown";
  readonly lastError: string;
  readonly lastScrape: string;
  readonly labels: Record<string, string>;
}

export interface Prometheus {
  /** http://127.0.0.1:PORT */
  readonly url: string;
  /** The config it runs with (YAML). */
  readonly config: string;
  /** Instant query at the current time; throws with Prometheus's error text on a bad query. */
  query(expr: string): Promise<{ resultType: string; result: PromSample[] }>;
  targets(): Promise<PromTarget[]>;
  /** GET an API path (e.g. /api/v1/metadata) and return its `data`. */
  api<T>(path: string): Promise<T>;
  /** Resolves once every target was scraped successfully at or after `since` (ms since the epoch), with that scrape's samples queryable. */
  waitForScrapes(since: number, timeoutMs?: number): Promise<void>;
  /** Prometheus's own log so far (for failure messages). */
  log(): string;
  stop(): Promise<void>;
}

export function havePrometheus(): boolean {
  return spawnSync("prometheus", ["--version"]).status === 0 && spawnSync("promtool", ["--version"]).status === 0;
}

async function freePort(): Promise<number> {
  return new Promise<number>((resolve, reject) => {
    const s = createServer();
    s.once("error", reject);
    s.listen(0, "127.0.0.1", () => {
      const port = (s.address() as { port: number }).port;
      s.close(() => resolve(port));
    });
  });
}

/** prometheus.yml scraping `targets` every second, one static config per target (its labels attached). */
export function prometheusConfig(targets: readonly ScrapeTarget[]): string {
  const lines = ["global:", "  scrape_interval: 1s", "  scrape_timeout: 1s", "  evaluation_interval: 1s", "scrape_configs:"];
  targets.forEach((t, i) => {
    const u = new URL(t.url);
    lines.push(
      `  - job_name: moela-${i}`,
      `    metrics_path: ${JSON.stringify(u.pathname)}`,
      `    scheme: ${u.protocol.replace(":", "")}`,
      "    static_configs:",
      `      - targets: [${JSON.stringify(u.host)}]`,
      "        labels:",
      ...Object.entries(t.labels).map(([k, v]) => `          ${k}: ${JSON.stringify(v)}`),
    );
  });
  return `${lines.join("\n")}\n`;
}

export async function startPrometheus(targets: readonly ScrapeTarget[]): Promise<Prometheus> {
  const dir = mkdtempSync(join(tmpdir(), "moela-prom-"));
  const config = prometheusConfig(targets);
  writeFileSync(join(dir, "prometheus.yml"), config);
  const port = await freePort();
  const url = `http://127.0.0.1:${port}`;
  const child: ChildProcess = spawn(
    "prometheus",
    [`--config.file=${join(dir, "prometheus.yml")}`, `--storage.tsdb.path=${join(dir, "data")}`, `--web.listen-address=127.0.0.1:${port}`, "--log.level=warn"],
    { stdio: ["ignore", "pipe", "pipe"] },
  );
  let logText = "";
  child.stdout!.on("data", (b: Buffer) => (logText += b.toString()));
  child.stderr!.on("data", (b: Buffer) => (logText += b.toString()));
  const exited = new Promise<void>((resolve) => child.once("exit", () => resolve()));

  const get = async <T>(path: string): Promise<T> => {
    const res = await fetch(`${url}${path}`);
    const body = (await res.json()) as { status: string; data: T; error?: string; errorType?: string };
    if (body.status !== "success") throw new Error(`Prometheus ${path}: ${body.errorType ?? ""} ${body.error ?? res.status}`);
    return body.data;
  };

  // Ready when /-/ready answers 200. A Prometheus that exited is reported when the wait times out.
  await vi.waitFor(
    async () => {
      if (child.exitCode !== null) throw new Error(`prometheus exited with code ${child.exitCode}:\n${logText}`);
      const ok = await fetch(`${url}/-/ready`).then(
        (res) => res.ok,
        () => false, // not listening yet
      );
      if (!ok) throw new Error(`prometheus did not become ready in 30 s:\n${logText}`);
    },
    { timeout: 30_000, interval: 100 },
  );

  const prom: Prometheus = {
    url,
    config,
    query: (expr) => get(`/api/v1/query?query=${encodeURIComponent(expr)}`),
    targets: async () => (await get<{ activeTargets: PromTarget[] }>("/api/v1/targets")).activeTargets,
    api: get,
    waitForScrapes: async (since, timeoutMs = 30_000) => {
      // A target's lastScrape is when its latest scrape started, and it can show before that scrape's samples are
      // committed (a rate() then still lacks the newest sample). A target's scrapes run one after another, so once a
      // later scrape has started, the first one at or after `since` is in the database.
      const first = new Map<string, number>();
      const scrapedAfter = (after: (t: PromTarget) => number) =>
        vi.waitFor(
          async () => {
            const last = await prom.targets();
            if (last.length === targets.length && last.every((t) => t.health === "up" && Date.parse(t.lastScrape) >= after(t))) return last;
            throw new Error(
              `not every target was scraped after ${new Date(since).toISOString()} (and once more):\n${last.map((t) => `${t.scrapeUrl} ${t.health} ${t.lastScrape} ${t.lastError}`).join("\n")}`,
            );
          },
          { timeout: timeoutMs, interval: 200 },
        );
      for (const t of await scrapedAfter(() => since)) first.set(t.scrapeUrl, Date.parse(t.lastScrape));
      await scrapedAfter((t) => (first.get(t.scrapeUrl) ?? since) + 1);
    },
    log: () => logText,
    stop: async () => {
      if (child.exitCode === null) child.kill("SIGTERM");
      const late = setTimeout(() => child.kill("SIGKILL"), 10_000);
      await exited;
      clearTimeout(late);
      rmSync(dir, { recursive: true, force: true });
    },
  };
  return prom;
}

/** Prometheus's default gauges prom-client exports that promtool always flags (STACK.md). */
const ACCEPTED_PROMTOOL_FINDINGS = /^nodejs_active_(handles|requests|resources)_total:? non-counter metrics should not have "_total" suffix$/;

/**
 * `promtool check metrics` over one exposition: rc 0, or rc 3 whose every finding is one of the
 * accepted nodejs_active_* ones. Returns the unexpected findings (empty when clean).
 */
export function promtoolProblems(exposition: string): string[] {
  const r = spawnSync("promtool", ["check", "metrics"], { input: exposition, encoding: "utf8" });
  const findings = `${r.stdout}${r.stderr}`
    .split("\n")
    .map((l) => l.trim())
    .filter((l) => l !== "");
  if (r.status === 0) return [];
  if (r.status !== 3) return [`promtool exited with ${r.status}: ${findings.join("; ")}`];
  return findings.filter((f) => !ACCEPTED_PROMTOOL_FINDINGS.test(f));
}
