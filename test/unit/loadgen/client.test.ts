// The SSE reader, chunk counting and URL handling of the OpenAI client (no network).
import { describe, expect, it } from "vitest";
import { InvalidArgumentError } from "@moela/core";
import { ChunkCounter, SseParser, normalizeBaseUrl } from "@moela/loadgen";

describe("SseParser", () => {
  const stream = 'data: {"a":1}\n\n: comment\nevent: x\ndata: {"b":\ndata: 2}\n\ndata:[DONE]\n\n';

  it.each([1, 2, 3, 7, 1000])("gives the same events whatever the chunking (%d chars)", (size) => {
    const p = new SseParser();
    const out: string[] = [];
    for (let i = 0; i < stream.length; i += size) out.push(...p.push(stream.slice(i, i + size)));
    out.push(...p.end());
    expect(out).toEqual(['{"a":1}', '{"b":\n2}', "[DONE]"]);
  });

  it("takes \\r\\n and \\r line ends, also split between pieces", () => {
    const p = new SseParser();
    expect([...p.push("data: x\r"), ...p.push("\n\r"), ...p.push("\ndata: y\r\r")]).toEqual(["x", "y"]);
  });

  it("an event not closed by a blank line still counts at the end", () => {
    const p = new SseParser();
    expect(p.push("data: last")).toEqual([]);
    expect(p.end()).toEqual(["last"]);
  });
});

describe("ChunkCounter", () => {
  const chunk = (o: object) => JSON.stringify({ id: "x", object: "text_completion", ...o });

  it.each<[string, object[], unknown[]]>([
    [
      "text chunks without counts: one guessed token each; the usage chunk gives the totals",
      [
        { choices: [{ text: "a" }] },
        { choices: [{ text: "" }] },
        { choices: [{ text: "bc", finish_reason: "length" }] },
        { choices: [], usage: { prompt_tokens: 7, completion_tokens: 3 } },
      ],
      [
        { kind: "tokens", tokens: 1, exact: false },
        { kind: "tokens", tokens: 1, exact: false },
        { kind: "usage", promptTokens: 7, completionTokens: 3 },
      ],
    ],
    [
      "per-chunk usage: the growth of completion_tokens, even with empty text",
      [
        { choices: [{ text: "a" }], usage: { prompt_tokens: 7, completion_tokens: 1 } },
        { choices: [{ text: "" }], usage: { prompt_tokens: 7, completion_tokens: 3 } },
        { choices: [], usage: { prompt_tokens: 7, completion_tokens: 3 } },
      ],
      [
        { kind: "tokens", tokens: 1, exact: true },
        { kind: "usage", promptTokens: 7, completionTokens: 1 },
        { kind: "tokens", tokens: 2, exact: true },
        { kind: "usage", promptTokens: 7, completionTokens: 3 },
        { kind: "usage", promptTokens: 7, completionTokens: 3 },
      ],
    ],
    ["logprobs: one entry per token", [{ choices: [{ text: "ab", logprobs: { tokens: ["a", "b"] } }] }], [{ kind: "tokens", tokens: 2, exact: true }]],
    [
      "chat: role header and bare finish are not tokens",
      [
        { choices: [{ delta: { role: "assistant", content: "" } }] },
        { choices: [{ delta: { content: "hi" } }] },
        { choices: [{ delta: {}, finish_reason: "stop" }] },
      ],
      [{ kind: "tokens", tokens: 1, exact: false }],
    ],
  ])("%s", (_, chunks, want) => {
    const c = new ChunkCounter();
    expect(chunks.flatMap((x) => c.events(chunk(x)))).toEqual(want);
  });

  it("an error in the stream throws with its message", () => {
    expect(() => new ChunkCounter().events('{"error":{"message":"overloaded"}}')).toThrow("stream error: overloaded");
    expect(() => new ChunkCounter().events("{not json")).toThrow(/bad SSE data/);
  });
});

describe("normalizeBaseUrl", () => {
  it.each([
    ["http://127.0.0.1:8000", "http://127.0.0.1:8000/v1"],
    ["http://127.0.0.1:8000/", "http://127.0.0.1:8000/v1"],
    ["http://127.0.0.1:8000/v1/", "http://127.0.0.1:8000/v1"],
    ["https://h/prefix", "https://h/prefix/v1"],
  ])("%s -> %s", (input, want) => {
    expect(normalizeBaseUrl(input)).toBe(want);
  });

  it.each(["127.0.0.1:8000", "ftp://h/", "not a url"])("rejects %s", (input) => {
    expect(() => normalizeBaseUrl(input)).toThrow(InvalidArgumentError);
  });
});
