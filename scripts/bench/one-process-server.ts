/**
 * The one-process server as a benchmark target: `moela serve --role all` (router, prefill, decode and the
 * experts in one process, the OpenAI API on it, its defaults: fast kernels, every core, the model's own
 * experts) started as a real child process, measured with the caller's own stream workload, stopped.
 * scripts/bench/cluster.ts --one-process-server runs the cluster's decode streams against it, so the cluster
 * is compared with a server over the same HTTP surface rather than only with `moela generate`.
 */
import { spawn } from "node:child_process";
import { createInterface } from "node:readline";
import OpenAI from "openai";
import { MOELA_BIN, REPO_ROOT } from "../../services/cli/src/launcher.js";

export interface OneProcessServer {
  /** http://host:port (the OpenAI API is under /v1). */
  readonly url: string;
  stop(): Promise<void>;
}

/** Start `moela serve --role all --model <model> --port 0 --precision <precision> [extra...]`; resolves once it is ready. */
export async function startOneProcessServer(model: string, precision: string, extra: readonly string[] = []): Promise<OneProcessServer> {
  const child = spawn(
    process.execPath,
    [MOELA_BIN, "serve", "--role", "all", "--model", model, "--port", "0", "--precision", precision, "--log-level", "warn", ...extra],
    {
      cwd: REPO_ROOT,
      stdio: ["ignore", "pipe", "pipe"],
    },
  );
  let stderr = "";
  child.stderr!.on("data", (b: Buffer) => (stderr = (stderr + b.toString()).slice(-8000)));
  const exited = new Promise<number | null>((resolve) => child.once("exit", (code) => resolve(code)));
  const url = await new Promise<string>((resolve, reject) => {
    createInterface({ input: child.stdout! }).on("line", (line) => {
      if (!line.startsWith("{")) return;
      const ready = JSON.parse(line) as { event?: string; http?: unknown };
      if (ready.event === "ready" && typeof ready.http === "string") resolve(ready.http);
    });
    void exited.then((code) => reject(new Error(`moela serve --role all exited with ${code} before it was ready:\n${stderr}`)));
  });
  return {
    url,
    stop: async () => {
      child.kill("SIGTERM");
      const late = setTimeout(() => child.kill("SIGKILL"), 60_000);
      await exited;
      clearTimeout(late);
    },
  };
}

export interface OneProcessServerRun {
  readonly batch: number;
  /** Decode tokens/s the client sees over all streams (the caller's measure). */
  readonly clientTokS: number;
  /** Mean time per output token of one stream, ms. */
  readonly tpotMs: number;
}

/** Each batch size `repeat` times through `measure` (the best run is kept, as for the cluster), on a fresh server. */
export async function measureOneProcessServer(o: {
  readonly model: string;
  readonly precision: string;
  readonly batches: readonly number[];
  readonly repeat: number;
  readonly measure: (client: OpenAI, model: string, batch: number) => Promise<{ clientTokS: number; tpotMs: number }>;
  readonly log: (s: string) => void;
}): Promise<{ precision: string; decode: OneProcessServerRun[] }> {
  o.log(`one-process server (moela serve --role all, ${o.precision}): starting ...`);
  const server = await startOneProcessServer(o.model, o.precision);
  try {
    const client = new OpenAI({ baseURL: `${server.url}/v1`, apiKey: "bench", maxRetries: 0, timeout: 600_000 });
    const model = (await client.models.list()).data[0]!.id;
    const decode: OneProcessServerRun[] = [];
    for (const batch of o.batches) {
      o.log(`  one-process server: decode, ${batch} concurrent stream(s) (best of ${o.repeat}) ...`);
      let best: OneProcessServerRun | undefined;
      for (let r = 0; r < o.repeat; r++) {
        const run = { batch, ...(await o.measure(client, model, batch)) };
        if (best === undefined || run.clientTokS > best.clientTokS) best = run;
      }
      decode.push(best!);
    }
    return { precision: o.precision, decode };
  } finally {
    await server.stop();
  }
}
