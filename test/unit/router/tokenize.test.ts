/**
 * vLLM's /tokenize and /detokenize requests (@moela/openai-api tokenize.ts): the prompt and chat forms, their
 * defaults, unknown fields (ignored and listed, or refused when strict), and every refusal naming its field.
 */
import { describe, expect, it } from "vitest";
import { MoelaError } from "@moela/core";
import { openAIError, parseDetokenizeRequest, parseTokenizeRequest, type TokenizeContext } from "@moela/openai-api";

const ctx: TokenizeContext = { servedModelName: "tiny-v3", maxModelLen: 64, vocabSize: 1024, hasTokenizer: true, maxPromptChars: 100 };

function refusal(f: () => unknown): { status: number; param: string | null; message: string } {
  try {
    f();
  } catch (err) {
    expect(err).toBeInstanceOf(MoelaError);
    const { status, body } = openAIError(err);
    return { status, param: body.error.param, message: body.error.message };
  }
  throw new Error("accepted");
}

describe("POST /tokenize", () => {
  it("a prompt: encode with special tokens unless add_special_tokens is false; token strings only when asked", () => {
    expect(parseTokenizeRequest({ prompt: "hi" }, ctx)).toEqual({
      op: { kind: "encode", text: "hi", addSpecialTokens: true },
      returnTokenStrs: false,
      ignoredFields: [],
    });
    expect(parseTokenizeRequest({ model: "tiny-v3", prompt: "hi", add_special_tokens: false, return_token_strs: true }, ctx)).toEqual({
      op: { kind: "encode", text: "hi", addSpecialTokens: false },
      returnTokenStrs: true,
      ignoredFields: [],
    });
  });

  it("messages: rendered with the chat template, generation prompt on by default", () => {
    const r = parseTokenizeRequest({ messages: [{ role: "user", content: "hi" }], add_generation_prompt: false, chat_template_kwargs: { x: 1 } }, ctx);
    expect(r.op).toEqual({ kind: "chat", messages: [{ role: "user", content: "hi" }], addGenerationPrompt: false, templateVariables: { x: 1 } });
  });

  it("unknown fields are listed (messages' too), or refused when strict", () => {
    expect(parseTokenizeRequest({ prompt: "hi", foo: 1 }, ctx).ignoredFields).toEqual(["foo"]);
    expect(parseTokenizeRequest({ messages: [{ role: "user", content: "hi", mood: 1 }], bar: 2 }, ctx).ignoredFields).toEqual(["bar", "messages[0].mood"]);
    expect(refusal(() => parseTokenizeRequest({ prompt: "hi", foo: 1 }, { ...ctx, strictApi: true })).param).toBe("foo");
  });

  it.each([
    { name: "no prompt", body: {}, param: "prompt", message: /prompt \(or messages\) is required/ },
    { name: "a prompt that is not a string", body: { prompt: [1, 2] }, param: "prompt", message: /prompt must be a string/ },
    { name: "a prompt over the character limit", body: { prompt: "x".repeat(101) }, param: "prompt", message: /at most 100/ },
    {
      name: "both prompt and messages",
      body: { prompt: "x", messages: [{ role: "user", content: "y" }] },
      param: "prompt",
      message: /either prompt or messages/,
    },
    { name: "empty messages", body: { messages: [] }, param: "messages", message: /must not be empty/ },
    { name: "add_special_tokens as a string", body: { prompt: "x", add_special_tokens: "no" }, param: "add_special_tokens", message: /must be a boolean/ },
    {
      name: "continue_final_message",
      body: { messages: [{ role: "user", content: "y" }], continue_final_message: true },
      param: "continue_final_message",
      message: /not supported/,
    },
  ])("refuses $name, naming $param", ({ body, param, message }) => {
    const r = refusal(() => parseTokenizeRequest(body, ctx));
    expect(r).toMatchObject({ status: 400, param });
    expect(r.message).toMatch(message);
  });

  it("an unknown model is a 404; a model without a tokenizer a 400", () => {
    expect(refusal(() => parseTokenizeRequest({ model: "gpt", prompt: "x" }, ctx)).status).toBe(404);
    expect(refusal(() => parseTokenizeRequest({ prompt: "x" }, { ...ctx, hasTokenizer: false }))).toMatchObject({ status: 400, param: "prompt" });
  });
});

describe("POST /detokenize", () => {
  it("takes token ids of the vocabulary", () => {
    expect(parseDetokenizeRequest({ model: "tiny-v3", tokens: [0, 5, 1023] }, ctx)).toEqual({ tokens: [0, 5, 1023], ignoredFields: [] });
    expect(parseDetokenizeRequest({ tokens: [], x: 1 }, ctx)).toEqual({ tokens: [], ignoredFields: ["x"] });
  });

  it.each([
    { name: "no tokens", body: {}, message: /tokens must be a list/ },
    { name: "an id past the vocabulary", body: { tokens: [1024] }, message: /tokens\[0\] must be a token id in 0..1023, got 1024/ },
    { name: "a fractional id", body: { tokens: [1, 2.5] }, message: /tokens\[1\]/ },
    { name: "more ids than the context", body: { tokens: new Array(65).fill(1) }, message: /at most 64 ids/ },
  ])("refuses $name, naming tokens", ({ body, message }) => {
    const r = refusal(() => parseDetokenizeRequest(body, ctx));
    expect(r).toMatchObject({ status: 400, param: "tokens" });
    expect(r.message).toMatch(message);
  });
});
