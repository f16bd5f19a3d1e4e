/**
 * The @moela/client README's example, run as a user would: the package packed (`npm pack` in
 * packages/client, whose prepack builds it) and `npm install`ed from the tarball into a scratch
 * project outside the repository, the example's code block saved there as example.mjs and run with
 * plain `node` against a live local cluster's router. It lists the served model and streams a chat
 * reply, which must be what the router's OpenAI API gives for the same greedy chat request. A
 * CommonJS program in the same project (require()) completes a prompt against the same router.
 */
import { writeFileSync } from "node:fs";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { installPackedClient, readmeExample, type ConsumerProject } from "../helpers/client-package.js";
import { startTestCluster, type TestCluster } from "../helpers/cluster.js";

let cluster: TestCluster;
let consumer: ConsumerProject;

beforeAll(async () => {
  [cluster, consumer] = await Promise.all([startTestCluster(), installPackedClient()]);
  writeFileSync(join(consumer.dir, "example.mjs"), readmeExample());
}, 600_000);

afterAll(async () => {
  consumer?.remove();
  await cluster?.stop();
}, 120_000);

async function openai<T>(path: string, body: Record<string, unknown>): Promise<T> {
  const res = await fetch(`${cluster.baseURL}${path}`, { method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify(body) });
  expect(res.status).toBe(200);
  return (await res.json()) as T;
}

type OpenAIAnswer = { choices: Array<{ text?: string; message?: { content: string }; finish_reason: string }>; usage: { completion_tokens: number } };

describe("packages/client/README.md example, installed from the packed tarball", () => {
  it("runs under plain node against a live cluster: lists the model and streams what /v1/chat/completions returns", async () => {
    // The example must be the request compared below; fail loudly if the README changes it.
    const example = readmeExample();
    expect(example).toContain('messages: [{ role: "user", content: "What is the capital of France?" }], maxTokens: 16, temperature: 0');
    expect(example).toContain("await client.listModels()");
    const router = cluster.instances("router")[0]!;
    const { stdout, stderr } = await consumer.node("example.mjs", { env: { ...process.env, MOELA_GRPC_ADDRESS: router.grpc }, timeout: 120_000 });
    expect(stderr).toBe("");
    const m = /^model (\S+), (\d+) tokens of context\n([\s\S]*)\n\[(stop|length)\] (\d+) tokens, request (req-[0-9a-f-]{36})\n$/.exec(stdout);
    expect(m, `unexpected output: ${JSON.stringify(stdout)}`).not.toBeNull();
    const [, model, , text, reason, tokens] = m!;
    expect(model).toBe(cluster.model);

    const body = await openai<OpenAIAnswer>("/chat/completions", {
      model: cluster.model,
      messages: [{ role: "user", content: "What is the capital of France?" }],
      max_tokens: 16,
      temperature: 0,
    });
    expect(text).toBe(body.choices[0]!.message!.content);
    expect(reason).toBe(body.choices[0]!.finish_reason);
    expect(Number(tokens)).toBe(body.usage.completion_tokens);
  });

  it("works through require() too: a CommonJS program completes a prompt as /v1/completions does", async () => {
    consumer.write(
      "complete.cjs",
      `
      const { MoelaClient } = require("@moela/client");
      const client = new MoelaClient({ address: process.env.MOELA_GRPC_ADDRESS });
      client.complete({ prompt: "The capital of France is", maxTokens: 12, temperature: 0 }, { deadlineMs: 60000 })
        .then((c) => console.log(JSON.stringify({ text: c.text, finishReason: c.finishReason, completionTokens: c.usage.completionTokens })))
        .finally(() => client.close());
      `,
    );
    const router = cluster.instances("router")[0]!;
    const { stdout } = await consumer.node("complete.cjs", { env: { ...process.env, MOELA_GRPC_ADDRESS: router.grpc }, timeout: 120_000 });
    const got = JSON.parse(stdout.trim()) as { text: string; finishReason: string; completionTokens: number };
    const body = await openai<OpenAIAnswer>("/completions", { model: cluster.model, prompt: "The capital of France is", max_tokens: 12, temperature: 0 });
    expect(got).toEqual({ text: body.choices[0]!.text, finishReason: body.choices[0]!.finish_reason, completionTokens: body.usage.completion_tokens });
  });

  it("reports an unreachable router through the error classes, as the example's catch expects", async () => {
    // Port 1 refuses connections: UNAVAILABLE (listModels is not retried) -> the example's UnavailableError branch.
    const run = consumer.node("example.mjs", { env: { ...process.env, MOELA_GRPC_ADDRESS: "127.0.0.1:1" }, timeout: 120_000 });
    const err = (await run.then(
      () => undefined,
      (e: unknown) => e,
    )) as { code?: number; stderr?: string } | undefined;
    expect(err?.code).toBe(1);
    expect(err?.stderr).toContain("the router or its backends are not up");
  });
});
