/**
 * Request validation of the OpenAI layer (@moela/openai-api) against the bundled tiny model's tokenizer:
 * every refused request gets the status and `param` an OpenAI client expects, every accepted one comes
 * out normalised (defaults applied, token ids exactly as given, BOS where tokenizer_config says).
 */
import { describe, expect, it } from "vitest";
import { Code, MoelaError } from "@moela/core";
import { DEFAULT_COMPLETION_MAX_TOKENS, openAIError, parseChatRequest, parseCompletionRequest, type ValidationContext } from "@moela/openai-api";
import { tinyTokenizer as tokenizer, tinyValidationContext } from "../../helpers/openai-context.js";

const ctx = tinyValidationContext;

/** The status, param and message fragment of a refused body (throws when the body is accepted). */
/** The router with --strict-api: unknown fields are refused. */
const strictCtx: ValidationContext = { ...ctx, strictApi: true };

function refusal(
  parse: typeof parseCompletionRequest,
  body: unknown,
  strict = false,
): { status: number; param: string | null; message: string; code: string | null } {
  try {
    parse(body, strict ? strictCtx : ctx);
  } catch (err) {
    expect(err).toBeInstanceOf(MoelaError);
    const { status, body: b } = openAIError(err);
    return { status, param: b.error.param, message: b.error.message, code: b.error.code };
  }
  throw new Error(`accepted: ${JSON.stringify(body)}`);
}

const ids = (n: number, v = 5): number[] => Array.from({ length: n }, () => v);

describe("POST /v1/completions: refused requests", () => {
  const cases: { name: string; body: unknown; status?: number; param: string | null; message: RegExp; code?: string; strict?: boolean }[] = [
    { name: "a body that is not an object", body: [1, 2], param: "body", message: /must be a JSON object/ },
    { name: "an unknown field (strict)", strict: true, body: { prompt: "hi", foo: 1 }, param: "foo", message: /unknown field: foo/ },
    { name: "several unknown fields (strict)", strict: true, body: { prompt: "hi", foo: 1, bar: 2 }, param: "foo", message: /unknown fields: foo, bar/ },
    {
      name: "an unknown model",
      body: { model: "gpt-4", prompt: "hi" },
      status: 404,
      param: "model",
      message: /`gpt-4` does not exist/,
      code: "model_not_found",
    },
    { name: "a model that is not a string", body: { model: 3, prompt: "hi" }, param: "model", message: /model must be a string/ },
    { name: "no prompt", body: { model: "tiny-v3" }, param: "prompt", message: /prompt is required/ },
    { name: "an empty string prompt", body: { prompt: "" }, param: "prompt", message: /must not be empty/ },
    { name: "an empty token-id prompt", body: { prompt: [] }, param: "prompt", message: /must not be empty/ },
    { name: "an empty prompt in a batch", body: { prompt: ["a", ""] }, param: "prompt[1]", message: /prompt\[1\] must not be empty/ },
    { name: "an empty id list in a batch", body: { prompt: [[1], []] }, param: "prompt[1]", message: /must not be empty/ },
    { name: "a mixed prompt list", body: { prompt: [1, "a"] }, param: "prompt", message: /not a mix/ },
    { name: "a prompt of the wrong type", body: { prompt: { text: "hi" } }, param: "prompt", message: /prompt must be a string/ },
    {
      name: "a token id past the vocabulary",
      body: { prompt: [1, 1024] },
      param: "prompt",
      message: /prompt\[1\] = 1024 is outside the vocabulary \(token ids are 0..1023\)/,
    },
    { name: "a negative token id", body: { prompt: [-1] }, param: "prompt", message: /outside the vocabulary/ },
    { name: "a fractional token id", body: { prompt: [[1.5]] }, param: "prompt[0]", message: /must be an integer token id/ },
    { name: "too many prompts", body: { prompt: ids(65).map(() => "a") }, param: "prompt", message: /at most 64 prompts/ },
    { name: "max_tokens 0", body: { prompt: "hi", max_tokens: 0 }, param: "max_tokens", message: /max_tokens must be in \[1, inf\), got 0/ },
    { name: "negative max_tokens", body: { prompt: "hi", max_tokens: -5 }, param: "max_tokens", message: /got -5/ },
    { name: "fractional max_tokens", body: { prompt: "hi", max_tokens: 1.5 }, param: "max_tokens", message: /must be an integer/ },
    { name: "max_tokens as a string", body: { prompt: "hi", max_tokens: "16" }, param: "max_tokens", message: /must be a number/ },
    {
      name: "absurd max_tokens",
      body: { prompt: "hi", max_tokens: 1e12 },
      param: "max_tokens",
      message: /maximum context length is 2048 tokens/,
      code: "context_length_exceeded",
    },
    {
      name: "prompt + max_tokens over the context",
      body: { prompt: ids(2000), max_tokens: 49 },
      param: "max_tokens",
      message: /you requested 2049 tokens \(2000 in the prompt, 49 in the completion\)/,
      code: "context_length_exceeded",
    },
    {
      name: "a prompt that fills the context",
      body: { prompt: ids(2048) },
      param: "prompt",
      message: /your prompt has 2048 tokens/,
      code: "context_length_exceeded",
    },
    { name: "a batch member over the context", body: { prompt: [ids(3), ids(2040)], max_tokens: 16 }, param: "max_tokens", message: /2040 in the prompt/ },
    { name: "negative temperature", body: { prompt: "hi", temperature: -0.1 }, param: "temperature", message: /temperature must be in \[0, 2\], got -0.1/ },
    { name: "temperature above 2", body: { prompt: "hi", temperature: 2.5 }, param: "temperature", message: /temperature must be in \[0, 2\]/ },
    { name: "temperature as a string", body: { prompt: "hi", temperature: "hot" }, param: "temperature", message: /must be a number/ },
    { name: "top_p 0", body: { prompt: "hi", top_p: 0 }, param: "top_p", message: /top_p must be in \(0, 1\], got 0/ },
    { name: "top_p above 1", body: { prompt: "hi", top_p: 1.1 }, param: "top_p", message: /top_p must be in \(0, 1\]/ },
    { name: "top_k below -1", body: { prompt: "hi", top_k: -2 }, param: "top_k", message: /top_k must be in \[-1, inf\)/ },
    { name: "fractional top_k", body: { prompt: "hi", top_k: 2.5 }, param: "top_k", message: /must be an integer/ },
    { name: "a negative seed", body: { prompt: "hi", seed: -1 }, param: "seed", message: /seed must be in \[0, 9007199254740991\]/ },
    { name: "a seed past 2^53", body: { prompt: "hi", seed: 2 ** 53 }, param: "seed", message: /seed must be an integer/ },
    { name: "an empty stop string", body: { prompt: "hi", stop: "" }, param: "stop", message: /must not be empty/ },
    { name: "an empty stop string in a list", body: { prompt: "hi", stop: ["a", ""] }, param: "stop", message: /must not be empty/ },
    { name: "a stop list with a number", body: { prompt: "hi", stop: ["a", 1] }, param: "stop", message: /stop must be a string or a list of strings/ },
    { name: "too many stop strings", body: { prompt: "hi", stop: ids(65).map((_, i) => `s${i}`) }, param: "stop", message: /at most 64/ },
    { name: "logprobs above 20", body: { prompt: "hi", logprobs: 21 }, param: "logprobs", message: /logprobs must be in \[0, 20\]/ },
    { name: "negative logprobs", body: { prompt: "hi", logprobs: -1 }, param: "logprobs", message: /logprobs must be in \[0, 20\]/ },
    { name: "boolean logprobs", body: { prompt: "hi", logprobs: true }, param: "logprobs", message: /must be an integer in \[0, 20\] for completions/ },
    { name: "n = 0", body: { prompt: "hi", n: 0 }, param: "n", message: /n must be in \[1, inf\), got 0/ },
    { name: "n = 65", body: { prompt: "hi", n: 65 }, param: "n", message: /n must be in \[1, 64\], got 65/ },
    { name: "n x prompts over 64", body: { prompt: ["a", "b", "c"], n: 22 }, param: "n", message: /n x prompts may be at most 64, got 22 x 3/ },
    { name: "fractional n", body: { prompt: "hi", n: 1.5 }, param: "n", message: /n must be an integer/ },
    { name: "best_of below n", body: { prompt: "hi", n: 3, best_of: 2 }, param: "best_of", message: /best_of must be at least n \(3\), got 2/ },
    { name: "best_of above n, streamed", body: { prompt: "hi", best_of: 2, stream: true }, param: "best_of", message: /cannot be streamed/ },
    {
      name: "best_of x prompts over 64",
      body: { prompt: ["a", "b"], best_of: 33 },
      param: "best_of",
      message: /best_of x prompts may be at most 64, got 33 x 2/,
    },
    { name: "a suffix", body: { prompt: "hi", suffix: "end" }, param: "suffix", message: /not supported/ },
    {
      name: "frequency_penalty above 2",
      body: { prompt: "hi", frequency_penalty: 2.5 },
      param: "frequency_penalty",
      message: /frequency_penalty must be in \[-2, 2\], got 2.5/,
    },
    {
      name: "presence_penalty below -2",
      body: { prompt: "hi", presence_penalty: -2.01 },
      param: "presence_penalty",
      message: /presence_penalty must be in \[-2, 2\]/,
    },
    { name: "presence_penalty as a string", body: { prompt: "hi", presence_penalty: "1" }, param: "presence_penalty", message: /must be a number/ },
    {
      name: "repetition_penalty 0",
      body: { prompt: "hi", repetition_penalty: 0 },
      param: "repetition_penalty",
      message: /repetition_penalty must be in \[0\.000001, 2\], got 0/,
    },
    // Below 1e-6 a positive logit divided by it can overflow float32 in the sampler (a 500 from prefill).
    { name: "repetition_penalty 1e-7", body: { prompt: "hi", repetition_penalty: 1e-7 }, param: "repetition_penalty", message: /\[0\.000001, 2\], got 1e-7/ },
    // float32 (what the wire carries) rounds it to 0, which decode refuses.
    {
      name: "top_p 1e-46",
      body: { prompt: "hi", top_p: 1e-46 },
      param: "top_p",
      message: /top_p must be positive as a float32 \(at least 1\.4\d*e-45\), got 1e-46/,
    },
    { name: "repetition_penalty above 2", body: { prompt: "hi", repetition_penalty: 2.1 }, param: "repetition_penalty", message: /\[0\.000001, 2\]/ },
    { name: "min_p above 1", body: { prompt: "hi", min_p: 1.5 }, param: "min_p", message: /min_p must be in \[0, 1\]/ },
    { name: "negative min_p", body: { prompt: "hi", min_p: -0.1 }, param: "min_p", message: /min_p must be in \[0, 1\]/ },
    { name: "negative min_tokens", body: { prompt: "hi", min_tokens: -1 }, param: "min_tokens", message: /min_tokens must be in \[0, inf\)/ },
    { name: "fractional min_tokens", body: { prompt: "hi", min_tokens: 1.5 }, param: "min_tokens", message: /must be an integer/ },
    {
      name: "min_tokens above max_tokens",
      body: { prompt: "hi", max_tokens: 4, min_tokens: 5 },
      param: "min_tokens",
      message: /min_tokens must be at most max_tokens \(4\), got 5/,
    },
    {
      name: "a logit bias above 100",
      body: { prompt: "hi", logit_bias: { "5": 101 } },
      param: "logit_bias",
      message: /logit_bias\["5"\] must be in \[-100, 100\], got 101/,
    },
    { name: "a logit bias below -100", body: { prompt: "hi", logit_bias: { "5": -100.5 } }, param: "logit_bias", message: /\[-100, 100\]/ },
    {
      name: "a logit bias token past the vocabulary",
      body: { prompt: "hi", logit_bias: { "1024": 1 } },
      param: "logit_bias",
      message: /token id 1024 is outside the vocabulary/,
    },
    { name: "a logit bias key that is not an id", body: { prompt: "hi", logit_bias: { abc: 1 } }, param: "logit_bias", message: /keys must be token ids/ },
    { name: "a logit bias key with a sign", body: { prompt: "hi", logit_bias: { "-1": 1 } }, param: "logit_bias", message: /keys must be token ids/ },
    { name: "a logit bias value that is a string", body: { prompt: "hi", logit_bias: { "5": "1" } }, param: "logit_bias", message: /must be a number/ },
    { name: "a logit bias that is a list", body: { prompt: "hi", logit_bias: [1] }, param: "logit_bias", message: /must be an object/ },
    {
      name: "stream_options without stream",
      body: { prompt: "hi", stream_options: { include_usage: true } },
      param: "stream_options",
      message: /only be given when stream is true/,
    },
    {
      name: "an unknown stream option (strict)",
      strict: true,
      body: { prompt: "hi", stream: true, stream_options: { foo: true } },
      param: "foo",
      message: /unknown field: foo/,
    },
    {
      name: "continuous_usage_stats as a string",
      body: { prompt: "hi", stream: true, stream_options: { continuous_usage_stats: "yes" } },
      param: "continuous_usage_stats",
      message: /must be a boolean/,
    },
    { name: "stream as a string", body: { prompt: "hi", stream: "yes" }, param: "stream", message: /stream must be a boolean/ },
    { name: "echo as a number", body: { prompt: "hi", echo: 1 }, param: "echo", message: /echo must be a boolean/ },
    {
      name: "return_tokens_as_token_ids as a string",
      body: { prompt: "hi", return_tokens_as_token_ids: "true" },
      param: "return_tokens_as_token_ids",
      message: /must be a boolean/,
    },
    {
      name: "a stop token id past the vocabulary",
      body: { prompt: "hi", stop_token_ids: [4096] },
      param: "stop_token_ids",
      message: /stop_token_ids\[0\] = 4096 is outside/,
    },
    { name: "stop_token_ids not a list", body: { prompt: "hi", stop_token_ids: 5 }, param: "stop_token_ids", message: /must be a list/ },
    { name: "a user that is not a string", body: { prompt: "hi", user: 7 }, param: "user", message: /user must be a string/ },
  ];
  it.each(cases)("$name -> $param", ({ body, status, param, message, code, strict }) => {
    const r = refusal(parseCompletionRequest, body, strict);
    expect(r.status).toBe(status ?? 400);
    expect(r.param).toBe(param);
    expect(r.message).toMatch(message);
    if (code !== undefined) expect(r.code).toBe(code);
  });
});

describe("POST /v1/chat/completions: refused requests", () => {
  const cases: { name: string; body: unknown; status?: number; param: string | null; message: RegExp; strict?: boolean }[] = [
    { name: "no messages", body: {}, param: "messages", message: /messages is required/ },
    { name: "empty messages", body: { messages: [] }, param: "messages", message: /must not be empty/ },
    { name: "messages not a list", body: { messages: "hi" }, param: "messages", message: /must be a list/ },
    { name: "an unknown role", body: { messages: [{ role: "wizard", content: "hi" }] }, param: "messages[0].role", message: /must be one of/ },
    {
      name: "a numeric content",
      body: { messages: [{ role: "user", content: 5 }] },
      param: "messages[0].content",
      message: /must be a string or a list of text parts/,
    },
    { name: "a user message without content", body: { messages: [{ role: "user" }] }, param: "messages[0].content", message: /is required for role user/ },
    {
      name: "an image part",
      body: { messages: [{ role: "user", content: [{ type: "image_url", image_url: { url: "x" } }] }] },
      param: "messages[0].content[0]",
      message: /text only/,
    },
    {
      name: "an unknown message field (strict)",
      strict: true,
      body: { messages: [{ role: "user", content: "hi", mood: "happy" }] },
      param: "messages[0].mood",
      message: /unknown field in messages\[0\]: mood/,
    },
    {
      name: "an unknown top-level field (strict)",
      strict: true,
      body: { messages: [{ role: "user", content: "hi" }], echo: true },
      param: "echo",
      message: /unknown field: echo/,
    },
    { name: "an unknown model", body: { model: "x", messages: [{ role: "user", content: "hi" }] }, status: 404, param: "model", message: /does not exist/ },
    {
      name: "top_logprobs without logprobs",
      body: { messages: [{ role: "user", content: "hi" }], top_logprobs: 2 },
      param: "top_logprobs",
      message: /requires logprobs to be true/,
    },
    {
      name: "top_logprobs above 20",
      body: { messages: [{ role: "user", content: "hi" }], logprobs: true, top_logprobs: 21 },
      param: "top_logprobs",
      message: /in \[0, 20\]/,
    },
    { name: "integer logprobs", body: { messages: [{ role: "user", content: "hi" }], logprobs: 3 }, param: "logprobs", message: /logprobs must be a boolean/ },
    {
      name: "a tool without its function",
      body: { messages: [{ role: "user", content: "hi" }], tools: [{ type: "function" }] },
      param: "tools[0]",
      message: /must be \{"type": "function", "function"/,
    },
    {
      name: "a JSON response format without a schema checker (no tokenizer)",
      body: { messages: [{ role: "user", content: "hi" }], response_format: { type: "json_object" } },
      param: "response_format",
      message: /cannot constrain/,
    },
    {
      name: "an unknown response format type",
      body: { messages: [{ role: "user", content: "hi" }], response_format: { type: "yaml" } },
      param: "response_format.type",
      message: /must be "text", "json_object" or "json_schema"/,
    },
    {
      name: "max_completion_tokens 0",
      body: { messages: [{ role: "user", content: "hi" }], max_completion_tokens: 0 },
      param: "max_completion_tokens",
      message: /in \[1, inf\)/,
    },
    {
      name: "max_tokens over the context",
      body: { messages: [{ role: "user", content: "hi" }], max_tokens: 2048 },
      param: "max_tokens",
      message: /maximum context length is 2048/,
    },
    { name: "temperature above 2", body: { messages: [{ role: "user", content: "hi" }], temperature: 3 }, param: "temperature", message: /\[0, 2\]/ },
    { name: "n = 65", body: { messages: [{ role: "user", content: "hi" }], n: 65 }, param: "n", message: /n must be in \[1, 64\]/ },
    {
      name: "min_tokens past the default max_tokens",
      body: { messages: [{ role: "user", content: "hi" }], min_tokens: 5000 },
      param: "min_tokens",
      message: /min_tokens must be at most max_tokens/,
    },
    {
      name: "repetition_penalty negative",
      body: { messages: [{ role: "user", content: "hi" }], repetition_penalty: -1 },
      param: "repetition_penalty",
      message: /\[0\.000001, 2\]/,
    },
  ];
  it.each(cases)("$name -> $param", ({ body, status, param, message, strict }) => {
    const r = refusal(parseChatRequest, body, strict);
    expect(r.status).toBe(status ?? 400);
    expect(r.param).toBe(param);
    expect(r.message).toMatch(message);
  });
});

describe("accepted requests come out normalised", () => {
  it("a string prompt gets BOS; defaults apply", () => {
    const r = parseCompletionRequest({ model: "tiny-v3", prompt: "Hello world" }, ctx);
    expect(r.prompts).toEqual([{ tokenIds: tokenizer.encode("Hello world"), text: "Hello world" }]);
    expect(r.prompts[0]!.tokenIds[0]).toBe(tokenizer.bosTokenId);
    expect(r.sampling[0]).toEqual({
      temperature: 1,
      topP: 1,
      topK: -1,
      seed: undefined,
      maxTokens: DEFAULT_COMPLETION_MAX_TOKENS,
      stopTokenIds: [],
      ignoreEos: false,
      logprobs: null,
    });
    expect(r).toMatchObject({
      api: "completions",
      stop: [],
      stream: false,
      includeUsage: false,
      echo: false,
      returnTokensAsTokenIds: false,
      skipSpecialTokens: true,
    });
  });

  it("a token-id prompt is used exactly as given (no BOS); its text is decoded only to echo it", () => {
    const r = parseCompletionRequest({ prompt: [7, 8, 9], max_tokens: 4 }, ctx);
    expect(r.prompts[0]!.tokenIds).toEqual([7, 8, 9]);
    expect(r.prompts[0]!.text).toBe("");
    const echoed = parseCompletionRequest({ prompt: [7, 8, 9], max_tokens: 4, echo: true }, ctx);
    expect(echoed.prompts[0]!.text).toBe(tokenizer.decode([7, 8, 9]));
  });

  it.each([
    { name: "a list of strings", prompt: ["a", "b c"], want: [tokenizer.encode("a"), tokenizer.encode("b c")] },
    { name: "a list of id lists", prompt: [[1, 2], [3]], want: [[1, 2], [3]] },
  ])("a batch: $name gives one prompt each, in order", ({ prompt, want }) => {
    const r = parseCompletionRequest({ prompt }, ctx);
    expect(r.prompts.map((p) => p.tokenIds)).toEqual(want);
    expect(r.sampling).toHaveLength(want.length);
  });

  it("sampling fields, stop, stream options, logprobs and vLLM's extras pass through", () => {
    const sampling = { max_tokens: 7, temperature: 0, top_p: 0.5, top_k: 0, seed: 42, n: 1, best_of: 1 };
    const output = { stop: "\n", stream: true, stream_options: { include_usage: true }, logprobs: 3, echo: true };
    const vllmExtras = { return_tokens_as_token_ids: true, ignore_eos: true, stop_token_ids: [1] };
    // OpenAI's fields at the values that change nothing.
    const noOps = { user: "u", frequency_penalty: 0, presence_penalty: 0, logit_bias: {}, suffix: null };
    const r = parseCompletionRequest({ prompt: "x", ...sampling, ...output, ...vllmExtras, ...noOps }, ctx);
    // The no-op values of the penalties are not carried at all.
    expect(r.sampling[0]).toEqual({ temperature: 0, topP: 0.5, topK: -1, seed: 42, maxTokens: 7, stopTokenIds: [1], ignoreEos: true, logprobs: 3 });
    expect(r.ignoredFields).toEqual([]);
    expect(r).toMatchObject({ stop: ["\n"], stream: true, includeUsage: true, echo: true, returnTokensAsTokenIds: true });
  });

  it("penalties, logit_bias, min_p, min_tokens and n come through as given (logit_bias as ascending id pairs; float32 fields rounded)", () => {
    const r = parseCompletionRequest(
      {
        prompt: "hi",
        max_tokens: 8,
        n: 3,
        best_of: 3,
        presence_penalty: -1.5,
        frequency_penalty: 0.25,
        repetition_penalty: 1.3,
        logit_bias: { "17": -100, "5": 2.5 },
        min_p: 0.05,
        min_tokens: 8,
        stream: true,
        stream_options: { include_usage: true, continuous_usage_stats: true },
      },
      ctx,
    );
    expect(r.sampling[0]).toMatchObject({
      presencePenalty: -1.5,
      frequencyPenalty: 0.25,
      // Carried as float32 from here on (the wire's type), so prefill and decode use the same value.
      repetitionPenalty: Math.fround(1.3),
      logitBias: [
        [5, 2.5],
        [17, -100],
      ],
      minP: 0.05,
      minTokens: 8,
    });
    expect(r).toMatchObject({ n: 3, bestOf: 3, includeUsage: true, continuousUsage: true });
    expect(parseCompletionRequest({ prompt: "hi", n: 2, best_of: 5 }, ctx)).toMatchObject({ n: 2, bestOf: 5 });
    expect(parseCompletionRequest({ prompt: "hi", n: 2 }, ctx)).toMatchObject({ n: 2, bestOf: 2 });
  });

  it("continuous_usage_stats counts only with include_usage (vLLM)", () => {
    const r = parseCompletionRequest({ prompt: "hi", stream: true, stream_options: { continuous_usage_stats: true } }, ctx);
    expect(r).toMatchObject({ includeUsage: false, continuousUsage: false });
  });

  it("unknown fields are ignored and listed (top level, stream_options, messages); strict refuses them", () => {
    const c = parseCompletionRequest({ prompt: "hi", foo: 1, stream: true, stream_options: { include_usage: true, bar: 2 } }, ctx);
    expect(c.ignoredFields).toEqual(["foo", "stream_options.bar"]);
    expect(c.includeUsage).toBe(true);
    const chat = parseChatRequest({ messages: [{ role: "user", content: "hi", mood: "happy" }], echo: true }, ctx);
    expect(chat.ignoredFields).toEqual(["echo", "messages[0].mood"]);
    expect(chat.prompts[0]!.tokenIds).toEqual(tokenizer.encodeChat([{ role: "user", content: "hi" }]));
    expect(refusal(parseCompletionRequest, { prompt: "hi", foo: 1 }, true).param).toBe("foo");
  });

  it("null means not given", () => {
    const r = parseCompletionRequest({ prompt: "x", max_tokens: null, temperature: null, logprobs: null, stop: null, seed: null }, ctx);
    expect(r.sampling[0]).toMatchObject({ maxTokens: 16, temperature: 1, logprobs: null, seed: undefined });
    expect(r.stop).toEqual([]);
  });

  it("chat: the template renders the messages; max_tokens defaults to the rest of the context", () => {
    const messages = [
      { role: "system", content: "be brief" },
      {
        role: "user",
        content: [
          { type: "text", text: "hi" },
          { type: "text", text: "there" },
        ],
      },
    ];
    const r = parseChatRequest({ model: "tiny-v3", messages, logprobs: true, top_logprobs: 2 }, ctx);
    const want = tokenizer.encodeChat([
      { role: "system", content: "be brief" },
      { role: "user", content: "hi\nthere" },
    ]);
    expect(r.prompts[0]!.tokenIds).toEqual(want);
    expect(r.sampling[0]!.maxTokens).toBe(2048 - want.length);
    expect(r.sampling[0]!.logprobs).toBe(2);
  });

  it("chat: max_completion_tokens wins over max_tokens; logprobs false means none", () => {
    const r = parseChatRequest({ messages: [{ role: "user", content: "hi" }], max_tokens: 9, max_completion_tokens: 5, logprobs: false }, ctx);
    expect(r.sampling[0]!.maxTokens).toBe(5);
    expect(r.sampling[0]!.logprobs).toBeNull();
  });

  it("generation_config defaults fill what the request leaves out", () => {
    const r = parseCompletionRequest({ prompt: "x" }, { ...ctx, defaults: { temperature: 0.6, topP: 0.95, topK: 20 } });
    expect(r.sampling[0]).toMatchObject({ temperature: Math.fround(0.6), topP: Math.fround(0.95), topK: 20 });
  });
});

describe("errors as OpenAI error objects", () => {
  it.each([
    { name: "RESOURCE_EXHAUSTED", err: new MoelaError("full", Code.RESOURCE_EXHAUSTED), status: 429, type: "rate_limit_error", message: "full" },
    { name: "UNAVAILABLE", err: new MoelaError("no decode", Code.UNAVAILABLE), status: 503, type: "server_error", message: "no decode" },
    { name: "DEADLINE_EXCEEDED", err: new MoelaError("late", Code.DEADLINE_EXCEEDED), status: 504, type: "server_error", message: "late" },
    {
      name: "INTERNAL MoelaError hides its message",
      err: new MoelaError("secret detail", Code.INTERNAL),
      status: 500,
      type: "server_error",
      message: "internal error",
    },
    { name: "a plain Error hides its message", err: new TypeError("x is undefined"), status: 500, type: "server_error", message: "internal error" },
  ])("$name -> $status", ({ err, status, type, message }) => {
    const r = openAIError(err);
    expect(r.status).toBe(status);
    expect(r.body.error.type).toBe(type);
    expect(r.body.error.message).toBe(message);
    expect(Object.keys(r.body.error).sort()).toEqual(["code", "message", "param", "type"]);
  });
});

describe("a checkpoint without a tokenizer", () => {
  const bare: ValidationContext = { ...ctx, encoder: null };
  it("takes token-id prompts (echo text empty)", () => {
    const r = parseCompletionRequest({ prompt: [[3, 4], [5]], max_tokens: 2, echo: true, stop_token_ids: [9] }, bare);
    expect(r.prompts).toEqual([
      { tokenIds: [3, 4], text: "" },
      { tokenIds: [5], text: "" },
    ]);
  });

  it.each([
    {
      name: "a text prompt",
      parse: parseCompletionRequest,
      body: { prompt: "hello" },
      param: "prompt",
      message: /no tokenizer: send prompt as a list of token ids/,
    },
    { name: "a text batch", parse: parseCompletionRequest, body: { prompt: ["a", "b"] }, param: "prompt[0]", message: /no tokenizer/ },
    { name: "stop strings", parse: parseCompletionRequest, body: { prompt: [1], stop: "x" }, param: "stop", message: /stop strings need a tokenizer/ },
    {
      name: "chat",
      parse: parseChatRequest,
      body: { messages: [{ role: "user", content: "hi" }] },
      param: "messages",
      message: /no tokenizer \(and no chat template\)/,
    },
  ])("refuses $name", ({ parse, body, param, message }) => {
    try {
      parse(body, bare);
      throw new Error("accepted");
    } catch (err) {
      const { status, body: b } = openAIError(err);
      expect(status).toBe(400);
      expect(b.error.param).toBe(param);
      expect(b.error.message).toMatch(message);
    }
  });
});
