/**
 * The OpenAI response shapes the router emits: completions logprobs (tokens, token_logprobs, top_logprobs
 * dicts with the sampled token, text_offset), chat logprobs (token, logprob, bytes, top_logprobs list),
 * return_tokens_as_token_ids, echo's null prompt entries, streamed chunk shapes and SSE framing.
 */
import { describe, expect, it } from "vitest";
import {
  chatChunk,
  chatLogprobEntries,
  chatResponse,
  completionChunk,
  CompletionLogprobsBuilder,
  completionResponse,
  concatCompletionLogprobs,
  SSE_DONE,
  sseData,
  tokenRenderer,
  usageOf,
  type GeneratedToken,
} from "@moela/openai-api";

const VOCAB: Record<number, string> = { 1: "Hello", 2: " world", 3: "!", 4: "é", 5: "<eos>", 6: "Hello" };
const text = (id: number): string => VOCAB[id] ?? `?${id}`;

const generated: GeneratedToken[] = [
  {
    id: 1,
    logprob: -0.5,
    top: [
      { id: 1, logprob: -0.5 },
      { id: 3, logprob: -1.5 },
    ],
  },
  {
    id: 2,
    logprob: -2.25,
    top: [
      { id: 3, logprob: -0.1 },
      { id: 4, logprob: -2 },
    ],
  },
  { id: 4, logprob: -Infinity, top: [] },
];

describe("completions logprobs", () => {
  it("lists every token with its logprob, a dict of alternatives plus the sampled token, and offsets", () => {
    const lp = new CompletionLogprobsBuilder(tokenRenderer(text, false)).generated(generated);
    expect(lp).toEqual({
      tokens: ["Hello", " world", "é"],
      token_logprobs: [-0.5, -2.25, -9999],
      top_logprobs: [{ Hello: -0.5, "!": -1.5 }, { "!": -0.1, é: -2, " world": -2.25 }, { é: -9999 }],
      text_offset: [0, 5, 11],
    });
  });

  it("keeps counting text_offset across the chunks of one choice", () => {
    const b = new CompletionLogprobsBuilder(tokenRenderer(text, false));
    const first = b.generated(generated.slice(0, 1));
    const second = b.generated(generated.slice(1));
    expect(first.text_offset).toEqual([0]);
    expect(second.text_offset).toEqual([5, 11]);
    expect(concatCompletionLogprobs([first, second])).toEqual(new CompletionLogprobsBuilder(tokenRenderer(text, false)).generated(generated));
  });

  it("echoed prompt tokens carry null logprobs and push the generated offsets on", () => {
    const b = new CompletionLogprobsBuilder(tokenRenderer(text, false));
    const lp = concatCompletionLogprobs([b.prompt([1, 2]), b.generated(generated.slice(0, 1))]);
    expect(lp.tokens).toEqual(["Hello", " world", "Hello"]);
    expect(lp.token_logprobs).toEqual([null, null, -0.5]);
    expect(lp.top_logprobs).toEqual([null, null, { Hello: -0.5, "!": -1.5 }]);
    expect(lp.text_offset).toEqual([0, 5, 11]);
  });

  it("return_tokens_as_token_ids renders every token as token_id:<id>", () => {
    const lp = new CompletionLogprobsBuilder(tokenRenderer(text, true)).generated(generated.slice(0, 2));
    expect(lp.tokens).toEqual(["token_id:1", "token_id:2"]);
    expect(lp.top_logprobs[1]).toEqual({ "token_id:3": -0.1, "token_id:4": -2, "token_id:2": -2.25 });
    expect(lp.text_offset).toEqual([0, "token_id:1".length]);
  });

  it("two ids with the same text keep the better alternative's logprob", () => {
    const lp = new CompletionLogprobsBuilder(tokenRenderer(text, false)).generated([
      {
        id: 3,
        logprob: -3,
        top: [
          { id: 1, logprob: -0.2 },
          { id: 6, logprob: -0.9 },
        ],
      },
    ]);
    expect(lp.top_logprobs[0]).toEqual({ Hello: -0.2, "!": -3 });
  });
});

describe("chat logprobs", () => {
  it("gives token, logprob, UTF-8 bytes and the alternatives best first", () => {
    const entries = chatLogprobEntries(generated.slice(1), tokenRenderer(text, false));
    expect(entries).toEqual([
      {
        token: " world",
        logprob: -2.25,
        bytes: [32, 119, 111, 114, 108, 100],
        top_logprobs: [
          { token: "!", logprob: -0.1, bytes: [33] },
          { token: "é", logprob: -2, bytes: [0xc3, 0xa9] },
        ],
      },
      { token: "é", logprob: -9999, bytes: [0xc3, 0xa9], top_logprobs: [] },
    ]);
  });
});

describe("response and chunk shapes", () => {
  it("a completion response carries usage with the total", () => {
    const r = completionResponse("cmpl-1", 100, "m", [{ index: 0, text: "hi", logprobs: null, finish_reason: "length" }], usageOf(3, 2));
    expect(r).toEqual({
      id: "cmpl-1",
      object: "text_completion",
      created: 100,
      model: "m",
      choices: [{ index: 0, text: "hi", logprobs: null, finish_reason: "length" }],
      usage: { prompt_tokens: 3, completion_tokens: 2, total_tokens: 5 },
    });
  });

  it("completion chunks: a delta has usage null, the usage chunk has no choices", () => {
    const delta = completionChunk("cmpl-1", 1, "m", { index: 1, text: "a", logprobs: null, finish_reason: null });
    expect(delta).toMatchObject({ object: "text_completion", choices: [{ index: 1, text: "a", finish_reason: null }], usage: null });
    const usage = completionChunk("cmpl-1", 1, "m", null, usageOf(1, 1));
    expect(usage.choices).toEqual([]);
    expect(usage.usage).toEqual({ prompt_tokens: 1, completion_tokens: 1, total_tokens: 2 });
  });

  it("chat chunks carry usage: null only when the client asked for usage", () => {
    const choice = { index: 0, delta: { content: "x" }, logprobs: null, finish_reason: null };
    expect("usage" in chatChunk("c", 1, "m", choice, false)).toBe(false);
    expect(chatChunk("c", 1, "m", choice, true).usage).toBeNull();
    const last = chatChunk("c", 1, "m", null, true, usageOf(4, 2));
    expect(last).toEqual({
      id: "c",
      object: "chat.completion.chunk",
      created: 1,
      model: "m",
      choices: [],
      usage: { prompt_tokens: 4, completion_tokens: 2, total_tokens: 6 },
    });
  });

  it("a chat response is one assistant message", () => {
    const r = chatResponse("c", 1, "m", [{ index: 0, message: { role: "assistant", content: "yo" }, logprobs: null, finish_reason: "stop" }], usageOf(1, 1));
    expect(r.object).toBe("chat.completion");
    expect(r.choices[0]!.message).toEqual({ role: "assistant", content: "yo" });
  });

  it("SSE events are `data: <json>` and a blank line; the stream ends with [DONE]", () => {
    expect(sseData({ a: "b\nc" })).toBe('data: {"a":"b\\nc"}\n\n');
    expect(SSE_DONE).toBe("data: [DONE]\n\n");
  });
});
