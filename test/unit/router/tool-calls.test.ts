/**
 * The router's chat answers with tools, over a scripted backend whose text holds DeepSeek-V3's tool-call markers
 * (tool_choice auto: the output is free, so text before the calls is content): non-streamed message.tool_calls,
 * streamed content then one delta.tool_calls chunk, finish_reason "tool_calls"; without tools the same text
 * stays content. The real model and cluster: test/e2e/structured-output.test.ts.
 */
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { createLogger } from "@moela/core";
import { checkJsonSchema } from "@moela/engine";
import { createServiceMetrics } from "@moela/metrics";
import { TOOL_CALL_BEGIN, TOOL_CALL_END, TOOL_CALLS_BEGIN, TOOL_CALLS_END, TOOL_SEP } from "@moela/openai-api";
import { AdmissionController } from "@moela/scheduler";
import { Tokenizer } from "@moela/tokenizer";
import type { FastifyInstance } from "fastify";
import type { GenerateEvent, GenerationBackend } from "../../../services/router/src/backend.js";
import { buildHttpApp } from "../../../services/router/src/handlers.js";
import { TokenizerPool } from "../../../services/router/src/tokenize.js";

const MODEL_DIR = new URL("../../../models/tiny-v3", import.meta.url).pathname;
const CALL = `${TOOL_CALLS_BEGIN}${TOOL_CALL_BEGIN}function${TOOL_SEP}get_weather\n\`\`\`json\n{"city":"Paris"}\n\`\`\`${TOOL_CALL_END}${TOOL_CALLS_END}`;
/** The scripted output, in pieces that split the marker. */
const PIECES = ["Let me ", "check.", CALL.slice(0, 5), CALL.slice(5, 40), CALL.slice(40)];
const TOOLS = [{ type: "function", function: { name: "get_weather", parameters: { type: "object", properties: { city: { type: "string" } } } } }];

let app: FastifyInstance;
let pool: TokenizerPool;

beforeAll(async () => {
  const tokenizer = Tokenizer.fromDir(MODEL_DIR);
  pool = await TokenizerPool.start({ model: MODEL_DIR, threads: 0, inline: tokenizer });
  const backend: GenerationBackend = {
    async *generate(): AsyncGenerator<GenerateEvent> {
      for (const [i, text] of PIECES.entries()) {
        const last = i === PIECES.length - 1;
        yield {
          tokens: [{ id: 5 + i }],
          text,
          finishReason: last ? "stop" : null,
          ...(last ? { usage: { promptTokens: 4, completionTokens: PIECES.length } } : {}),
        };
      }
    },
    health: () => ({}),
    routing: async () => [],
  };
  app = buildHttpApp({
    validation: {
      servedModelName: "m",
      maxModelLen: 2048,
      vocabSize: 1024,
      encoder: tokenizer,
      defaults: { temperature: 1, topP: 1, topK: -1 },
      checkSchema: checkJsonSchema,
    },
    tokenizer,
    encoder: pool,
    apiKeys: null,
    maxBodyBytes: 1 << 20,
    internalNames: () => [],
    backend,
    admission: new AdmissionController(8),
    metrics: createServiceMetrics("router", { model: "m" }).m,
    logger: createLogger("router-test", "silent"),
    startedAt: 0,
    shutdown: new AbortController().signal,
    draining: () => false,
  });
  await app.ready();
});

afterAll(async () => {
  await app?.close();
  await pool?.close();
});

async function chat(body: Record<string, unknown>): Promise<{ status: number; body: string }> {
  const res = await app.inject({ method: "POST", url: "/v1/chat/completions", payload: { model: "m", messages: [{ role: "user", content: "hi" }], ...body } });
  return { status: res.statusCode, body: res.body };
}

describe("chat answers with tools (tool_choice auto)", () => {
  it("non-streamed: content before the calls, message.tool_calls, finish_reason tool_calls", async () => {
    const res = await chat({ tools: TOOLS });
    expect(res.status).toBe(200);
    const choice = (
      JSON.parse(res.body) as {
        choices: Array<{
          message: { content: string | null; tool_calls?: Array<{ id: string; type: string; function: { name: string; arguments: string } }> };
          finish_reason: string;
        }>;
      }
    ).choices[0]!;
    expect(choice.finish_reason).toBe("tool_calls");
    expect(choice.message.content).toBe("Let me check.");
    expect(choice.message.tool_calls!.map((c) => [c.type, c.function.name, c.function.arguments])).toEqual([["function", "get_weather", '{"city":"Paris"}']]);
    expect(choice.message.tool_calls![0]!.id).toMatch(/^call_[0-9a-f]{24}$/);
  });

  it("streamed: the content goes out, the markers never do; one delta.tool_calls chunk, then finish_reason tool_calls", async () => {
    const res = await chat({ tools: TOOLS, stream: true });
    const chunks = res.body
      .split("\n\n")
      .filter((l) => l.startsWith("data: {"))
      .map(
        (l) =>
          JSON.parse(l.slice(6)) as {
            choices: Array<{
              delta: { content?: string; tool_calls?: Array<{ index: number; function: { name: string; arguments: string } }> };
              finish_reason: string | null;
            }>;
          },
      );
    const deltas = chunks.map((c) => c.choices[0]!);
    expect(deltas.map((d) => d.delta.content ?? "").join("")).toBe("Let me check.");
    const calls = deltas.flatMap((d) => d.delta.tool_calls ?? []);
    expect(calls.map((c) => [c.index, c.function.name, c.function.arguments])).toEqual([[0, "get_weather", '{"city":"Paris"}']]);
    expect(deltas.at(-1)!.finish_reason).toBe("tool_calls");
    expect(res.body).not.toContain(TOOL_CALL_BEGIN);
  });

  it('without tools (or tool_choice "none") the same text is content, finish_reason stop', async () => {
    for (const extra of [{}, { tools: TOOLS, tool_choice: "none" }]) {
      const choice = (JSON.parse((await chat(extra)).body) as { choices: Array<{ message: { content: string; tool_calls?: unknown }; finish_reason: string }> })
        .choices[0]!;
      expect(choice.finish_reason).toBe("stop");
      expect(choice.message.content).toBe(PIECES.join(""));
      expect(choice.message.tool_calls).toBeUndefined();
    }
  });
});
