/**
 * The @moela/client README's example, run as a user would: the package built and packed
 * (scripts/build-client.ts + npm pack), installed in a separate project, the example's code block
 * saved there as example.ts and run with tsx against a live local cluster's router. Its streamed
 * text must be what the router's OpenAI API gives for the same greedy request.
 */
import { execFile } from "node:child_process";
import { writeFileSync } from "node:fs";
import { join } from "node:path";
import { promisify } from "node:util";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { REPO_ROOT, installPackedClient, readmeExample, type ConsumerProject } from "../helpers/client-package.js";
import { startTestCluster, type TestCluster } from "../helpers/cluster.js";

const execFileAsync = promisify(execFile);
const TSX = join(REPO_ROOT, "node_modules", "tsx", "dist", "cli.mjs");

let cluster: TestCluster;
let consumer: ConsumerProject;

beforeAll(async () => {
  [cluster, consumer] = await Promise.all([startTestCluster(), installPackedClient()]);
  writeFileSync(join(consumer.dir, "example.ts"), readmeExample());
}, 240_000);

afterAll(async () => {
  consumer?.remove();
  await cluster?.stop();
}, 120_000);

describe("packages/client/README.md example", () => {
  it("runs against a live cluster and streams what the OpenAI API returns for the same request", async () => {
    // The example must be the request compared below; fail loudly if the README changes it.
    expect(readmeExample()).toContain('prompt: "The capital of France is", maxTokens: 16, temperature: 0');
    const router = cluster.instances("router")[0]!;
    const { stdout, stderr } = await execFileAsync(process.execPath, [TSX, "example.ts"], {
      cwd: consumer.dir,
      env: { ...process.env, MOELA_GRPC_ADDRESS: router.grpc },
      timeout: 120_000,
    });
    expect(stderr).toBe("");
    const m = /^([\s\S]*)\n\[(stop|length)\] (\d+) tokens, request (req-[0-9a-f-]{36})\n$/.exec(stdout);
    expect(m, `unexpected output: ${JSON.stringify(stdout)}`).not.toBeNull();
    const [, text, reason, tokens] = m!;

    const res = await fetch(`${cluster.baseURL}/completions`, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({ model: cluster.model, prompt: "The capital of France is", max_tokens: 16, temperature: 0 }),
    });
    expect(res.status).toBe(200);
    const body = (await res.json()) as { choices: Array<{ text: string; finish_reason: string }>; usage: { completion_tokens: number } };
    expect(text).toBe(body.choices[0]!.text);
    expect(reason).toBe(body.choices[0]!.finish_reason);
    expect(Number(tokens)).toBe(body.usage.completion_tokens);
  });

  it("reports an unreachable router through the error classes, as the example's catch expects", async () => {
    // Port 1 refuses connections: UNAVAILABLE after the retries -> the example's UnavailableError branch.
    const run = execFileAsync(process.execPath, [TSX, "example.ts"], {
      cwd: consumer.dir,
      env: { ...process.env, MOELA_GRPC_ADDRESS: "127.0.0.1:1" },
      timeout: 120_000,
    });
    const err = (await run.then(() => undefined, (e: unknown) => e)) as { code?: number; stderr?: string } | undefined;
    expect(err?.code).toBe(1);
    expect(err?.stderr).toContain("the router or its backends are not up");
  });
});
