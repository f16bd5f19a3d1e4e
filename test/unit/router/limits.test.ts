/**
 * The bounds every request is held to (@moela/openai-api limits.ts) and the three-phase validation the
 * router uses to tokenize off its event loop (plan, run the ops elsewhere, finish): each bound refused
 * with a 400 naming the field, the same request through runPlan and runPlanAsync alike.
 */
import { readFileSync } from "node:fs";
import { describe, expect, it } from "vitest";
import { Code, MoelaError } from "@moela/core";
import {
  defaultMaxPromptChars,
  jsonDepthExceeds,
  MAX_CACHE_SALT_CHARS,
  MAX_CHAT_MESSAGES,
  MAX_CONTENT_PARTS,
  MAX_JSON_DEPTH,
  MAX_STOP_STRING_CHARS,
  MAX_STOP_TOKEN_IDS,
  openAIError,
  parseChatRequest,
  parseCompletionRequest,
  planChatRequest,
  planCompletionRequest,
  PREFILL_DEFAULT_MAX_PROMPT_TOKENS,
  runEncodeOp,
  runPlanAsync,
  type AsyncPromptEncoder,
  type EncodeOp,
  type ValidationContext,
} from "@moela/openai-api";
import { tinyTokenizer as tokenizer, tinyValidationContext } from "../../helpers/openai-context.js";

const ctx = tinyValidationContext;
const user = (content: string) => [{ role: "user", content }];

function refusal(run: () => unknown): { status: number; param: string | null; message: string; code: string | null } {
  try {
    run();
  } catch (err) {
    expect(err).toBeInstanceOf(MoelaError);
    const { status, body } = openAIError(err);
    return { status, param: body.error.param, message: body.error.message, code: body.error.code };
  }
  throw new Error("accepted");
}

describe("jsonDepthExceeds", () => {
  it.each([
    { name: "flat object", text: '{"a": 1, "b": [1, 2]}', max: 2, want: false },
    { name: "exactly at the bound", text: "[[[1]]]", max: 3, want: false },
    { name: "one past the bound", text: "[[[[1]]]]", max: 3, want: true },
    { name: "brackets inside strings do not count", text: '{"a": "[[[[[[{{{{"}', max: 1, want: false },
    { name: "escaped quote inside a string", text: '{"a": "\\"[[[[["}', max: 1, want: false },
    { name: "siblings do not add up", text: "[[1], [2], [3], [4]]", max: 2, want: false },
    { name: "a string ending in an escaped backslash closes", text: '{"a": "x\\\\", "b": [[[1]]]}', max: 3, want: true },
    { name: "an unterminated string is the parser's business", text: '{"a": "[[[[[[', max: 1, want: false },
    { name: "a hostile body 100k deep", text: "[".repeat(100_000), max: MAX_JSON_DEPTH, want: true },
  ])("$name -> $want", ({ text, max, want }) => {
    expect(jsonDepthExceeds(text, max)).toBe(want);
  });
});

describe("defaults", () => {
  it("the prompt-character limit: 16 per context token, at least 64 Ki", () => {
    expect(defaultMaxPromptChars(2048)).toBe(65_536);
    expect(defaultMaxPromptChars(163_840)).toBe(2_621_440);
  });

  it("the router's prompt-token cap mirrors prefill's default --max-batch-tokens", () => {
    const prefillMain = readFileSync(new URL("../../../services/prefill/src/main.ts", import.meta.url), "utf8");
    const m = /const DEFAULT_MAX_BATCH_TOKENS = ([\d_]+);/.exec(prefillMain);
    expect(m, "services/prefill/src/main.ts defines DEFAULT_MAX_BATCH_TOKENS").not.toBeNull();
    expect(Number(m![1]!.replace(/_/g, ""))).toBe(PREFILL_DEFAULT_MAX_PROMPT_TOKENS);
  });
});

describe("bounds: refused with a 400 naming the field", () => {
  const small: ValidationContext = { ...ctx, maxPromptChars: 100, maxPromptTokens: 50 };
  const cases: { name: string; run: () => unknown; param: string; message: RegExp; code?: string }[] = [
    {
      name: "prompt text past the character limit",
      run: () => parseCompletionRequest({ prompt: "x".repeat(101) }, small),
      param: "prompt",
      message: /101 characters; this server takes at most 100/,
      code: "context_length_exceeded",
    },
    {
      name: "a batch's texts add up",
      run: () => parseCompletionRequest({ prompt: ["x".repeat(60), "y".repeat(60)] }, small),
      param: "prompt",
      message: /120 characters/,
    },
    {
      name: "chat contents add up",
      run: () => parseChatRequest({ messages: [...user("x".repeat(60)), ...user("y".repeat(60))] }, small),
      param: "messages",
      message: /120 characters/,
    },
    {
      name: "a prompt past prefill's token limit",
      run: () => parseCompletionRequest({ prompt: Array(51).fill(5) }, small),
      param: "prompt",
      message: /at most 50 tokens.*has 51 tokens/,
      code: "context_length_exceeded",
    },
    {
      name: "a chat past prefill's token limit",
      run: () => parseChatRequest({ messages: user("~^`|".repeat(24)) }, small),
      param: "messages",
      message: /at most 50 tokens/,
    },
    {
      name: "a long stop string",
      run: () => parseCompletionRequest({ prompt: "x", stop: ["a", "b".repeat(MAX_STOP_STRING_CHARS + 1)] }, ctx),
      param: "stop",
      message: /at most 512 characters; stop\[1\]/,
    },
    {
      name: "too many stop token ids",
      run: () => parseCompletionRequest({ prompt: "x", stop_token_ids: Array(MAX_STOP_TOKEN_IDS + 1).fill(3) }, ctx),
      param: "stop_token_ids",
      message: /at most 1024 ids/,
    },
    {
      name: "too many chat messages",
      run: () => parseChatRequest({ messages: Array(MAX_CHAT_MESSAGES + 1).fill({ role: "user", content: "a" }) }, ctx),
      param: "messages",
      message: /at most 4096 messages/,
    },
    {
      name: "too many content parts",
      run: () => parseChatRequest({ messages: [{ role: "user", content: Array(MAX_CONTENT_PARTS + 1).fill({ type: "text", text: "a" }) }] }, ctx),
      param: "messages[0].content",
      message: /at most 1024 parts/,
    },
    { name: "an empty cache_salt", run: () => parseCompletionRequest({ prompt: "x", cache_salt: "" }, ctx), param: "cache_salt", message: /non-empty string/ },
    {
      name: "a long cache_salt",
      run: () => parseCompletionRequest({ prompt: "x", cache_salt: "s".repeat(MAX_CACHE_SALT_CHARS + 1) }, ctx),
      param: "cache_salt",
      message: /at most 256 characters/,
    },
    {
      name: "a cache_salt that is not a string",
      run: () => parseChatRequest({ messages: user("hi"), cache_salt: 5 }, ctx),
      param: "cache_salt",
      message: /must be a string/,
    },
    {
      name: "an integer beyond 64 bits",
      run: () => parseCompletionRequest(JSON.parse('{"prompt": "x", "seed": 123456789012345678901234567890}'), ctx),
      param: "seed",
      message: /seed must be an integer/,
    },
    {
      name: "an integer beyond 64 bits as max_tokens",
      run: () => parseCompletionRequest(JSON.parse('{"prompt": "x", "max_tokens": 99999999999999999999999}'), ctx),
      param: "max_tokens",
      message: /max_tokens must be an integer/,
    },
    {
      name: "a number past float64",
      run: () => parseCompletionRequest(JSON.parse('{"prompt": "x", "temperature": 1e400}'), ctx),
      param: "temperature",
      message: /got Infinity/,
    },
  ];
  it.each(cases)("$name -> $param", ({ run, param, message, code }) => {
    const r = refusal(run);
    expect(r.status).toBe(400);
    expect(r.param).toBe(param);
    expect(r.message).toMatch(message);
    if (code !== undefined) expect(r.code).toBe(code);
  });

  it("the character limit is checked before any tokenizing (no op is planned past it)", () => {
    let ran = 0;
    const counting: ValidationContext = {
      ...ctx,
      maxPromptChars: 10,
      encoder: {
        encode: (t) => (ran++, tokenizer.encode(t)),
        encodeChat: (m, o) => (ran++, tokenizer.encodeChat(m, o)),
        decode: (ids) => tokenizer.decode(ids),
      },
    };
    refusal(() => parseCompletionRequest({ prompt: "x".repeat(11) }, counting));
    refusal(() => planChatRequest({ messages: user("x".repeat(11)) }, counting));
    expect(ran).toBe(0);
  });
});

describe("accepted within the bounds", () => {
  it("top_k at or past the vocabulary size is off; stop_token_ids are deduplicated", () => {
    expect(parseCompletionRequest({ prompt: "x", top_k: 1024 }, ctx).sampling[0]!.topK).toBe(-1);
    expect(parseCompletionRequest({ prompt: "x", top_k: 2 ** 40 }, ctx).sampling[0]!.topK).toBe(-1);
    expect(parseCompletionRequest({ prompt: "x", top_k: 1023 }, ctx).sampling[0]!.topK).toBe(1023);
    expect(parseCompletionRequest({ prompt: "x", stop_token_ids: [3, 3, 4] }, ctx).sampling[0]!.stopTokenIds).toEqual([3, 4]);
  });

  it("cache_salt passes through on both endpoints", () => {
    expect(parseCompletionRequest({ prompt: "x", cache_salt: "tenant-a" }, ctx).cacheSalt).toBe("tenant-a");
    expect(parseChatRequest({ messages: user("hi"), cache_salt: "tenant-b" }, ctx).cacheSalt).toBe("tenant-b");
    expect(parseCompletionRequest({ prompt: "x" }, ctx).cacheSalt).toBeUndefined();
  });
});

describe("plan, run elsewhere, finish", () => {
  /** Runs ops like a worker would: through runEncodeOp, answering asynchronously, errors as MoelaErrors. */
  const elsewhere: AsyncPromptEncoder & { seen: EncodeOp[] } = {
    seen: [],
    async run(op) {
      this.seen.push(op);
      await new Promise((r) => setTimeout(r, 1));
      return runEncodeOp(tokenizer, structuredClone(op));
    },
  };

  it.each([
    { name: "a text prompt", body: { prompt: "Hello world", max_tokens: 3 } },
    { name: "a batch of texts", body: { prompt: ["a b", "c d e"], max_tokens: 2 } },
    { name: "an echoed token-id prompt", body: { prompt: [7, 8, 9], echo: true } },
  ])("completions, $name: the same request as inline", async ({ body }) => {
    const inline = parseCompletionRequest(body, ctx);
    const plan = planCompletionRequest(body, ctx);
    expect(plan.ops.length).toBeGreaterThan(0);
    expect(await runPlanAsync(plan, elsewhere)).toEqual(inline);
  });

  it("a token-id prompt without echo needs no tokenizer op", () => {
    expect(planCompletionRequest({ prompt: [1, 2, 3] }, ctx).ops).toEqual([]);
  });

  it("chat: the same request as inline; a template refusal is a 400 on messages", async () => {
    const body = { messages: [{ role: "system", content: "be brief" }, ...user("hi")], max_tokens: 4 };
    expect(await runPlanAsync(planChatRequest(body, ctx), elsewhere)).toEqual(parseChatRequest(body, ctx));
    const refusing: AsyncPromptEncoder = { run: async () => Promise.reject(new MoelaError("chat template: roles must alternate", Code.INVALID_ARGUMENT)) };
    const err = await runPlanAsync(planChatRequest(body, ctx), refusing).catch((e: unknown) => e);
    expect(openAIError(err)).toMatchObject({ status: 400, body: { error: { param: "messages", message: "chat template: roles must alternate" } } });
  });

  it("a tokenizer failure that is not the request's fault stays a server error", async () => {
    const broken: AsyncPromptEncoder = { run: async () => Promise.reject(new MoelaError("tokenizer thread died", Code.UNAVAILABLE)) };
    const err = await runPlanAsync(planCompletionRequest({ prompt: "x" }, ctx), broken).catch((e: unknown) => e);
    expect(openAIError(err).status).toBe(503);
  });
});
