/**
 * Issue 11 part 1 against a real cluster (`moela cluster`, as `npm start` runs it) through the official
 * `openai` client: n = 2 choices (plain and streamed), best_of, penalties, logit_bias, min_tokens, streaming with
 * continuous usage, unknown fields ignored with the warning header, the endpoints vLLM has (GET
 * /v1/models/{id}, /tokenize, /detokenize, /version, /metrics on the API port), and gRPC Generate with
 * the same parameters.
 */
import OpenAI, { NotFoundError } from "openai";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { connect, serverStreamCall } from "@moela/rpc";
import { GenerateClient, type GenerateResponse } from "@moela/proto-gen";
import { startTestCluster, type TestCluster } from "../helpers/cluster.js";

/** models/tiny-v3's config.json eos_token_id. */
const EOS = 1;
const PROMPT = [0, 399, 332, 17, 256, 901, 44, 12, 730, 5, 66, 120, 7];

let cluster: TestCluster;
let client: OpenAI;
let origin: string;

beforeAll(async () => {
  cluster = await startTestCluster();
  client = new OpenAI({ baseURL: cluster.baseURL, apiKey: "unused", maxRetries: 0 });
  origin = cluster.baseURL.replace(/\/v1$/, "");
}, 240_000);

afterAll(async () => {
  await cluster?.stop();
});

/** A streamed chat completion of one user message, `content`, on the cluster's model. */
function streamChat(content: string, params: Omit<OpenAI.ChatCompletionCreateParamsStreaming, "model" | "messages" | "stream">) {
  return client.chat.completions.create({ model: cluster.model, messages: [{ role: "user", content }], stream: true, ...params });
}

/** A greedy completion of PROMPT, `maxTokens` long whatever EOS, its tokens as ids in its logprobs (for `ids`). */
function greedyIdsRequest(maxTokens: number) {
  return {
    model: cluster.model,
    prompt: PROMPT,
    max_tokens: maxTokens,
    temperature: 0,
    logprobs: 0,
    return_tokens_as_token_ids: true,
    ignore_eos: true,
  } as const;
}

/** The token ids of a completion choice, read from its logprobs with return_tokens_as_token_ids. */
function ids(choice: { logprobs: { tokens?: string[] } | null }): number[] {
  return (choice.logprobs?.tokens ?? []).map((t) => Number(t.replace(/^token_id:/, "")));
}

describe("the official openai client against npm start's cluster", () => {
  it("n = 2: two choices with their own index, plain and streamed", async () => {
    const plain = await client.completions.create({ model: cluster.model, prompt: "Hello", max_tokens: 6, n: 2, seed: 11, temperature: 1 });
    expect(plain.choices.map((c) => c.index)).toEqual([0, 1]);
    expect(plain.choices.every((c) => c.finish_reason !== null)).toBe(true);
    // The prompt is counted once; the completion tokens of both choices add up.
    expect(plain.usage?.completion_tokens).toBeGreaterThan(6);

    const stream = await streamChat("hi", { max_tokens: 5, n: 2, seed: 3 });
    const text = ["", ""];
    const finished = new Set<number>();
    for await (const chunk of stream) {
      for (const c of chunk.choices) {
        text[c.index] += c.delta.content ?? "";
        if (c.finish_reason !== null) finished.add(c.index);
      }
    }
    expect([...finished].sort()).toEqual([0, 1]);
    // Seeded choices are reproducible: the same request streams the same two texts again, non-streamed.
    const again = await client.chat.completions.create({ model: cluster.model, messages: [{ role: "user", content: "hi" }], max_tokens: 5, n: 2, seed: 3 });
    expect(again.choices.map((c) => c.message.content)).toEqual(text);
  });

  it("best_of = 3, n = 1: the candidate with the highest cumulative logprob; usage counts all three", async () => {
    const base = { model: cluster.model, prompt: PROMPT, max_tokens: 5, temperature: 1, seed: 21, ignore_eos: true, logprobs: 0 } as const;
    // n = 3 with the same seed draws the very candidates best_of draws (seed + k each).
    const all = await client.completions.create({ ...base, n: 3 });
    const score = (c: (typeof all.choices)[number]): number => (c.logprobs?.token_logprobs ?? []).reduce<number>((sum, x) => sum + (x ?? 0), 0);
    const scores = all.choices.map(score);
    const best = scores.indexOf(Math.max(...scores));
    expect(new Set(all.choices.map((c) => c.text)).size).toBeGreaterThan(1);
    const one = await client.completions.create({ ...base, best_of: 3 });
    expect(one.choices).toHaveLength(1);
    expect(one.choices[0]!.index).toBe(0);
    expect(one.choices[0]!.text).toBe(all.choices[best]!.text);
    expect(one.usage?.completion_tokens).toBe(15);
  });

  it("logit_bias +100 forces a token; -100 bans the greedy one", async () => {
    const base = greedyIdsRequest(6);
    const forced = await client.completions.create({ ...base, logit_bias: { "77": 100 } } as OpenAI.CompletionCreateParamsNonStreaming);
    expect(ids(forced.choices[0]!)).toEqual([77, 77, 77, 77, 77, 77]);
    const plain = await client.completions.create(base as OpenAI.CompletionCreateParamsNonStreaming);
    const greedy = ids(plain.choices[0]!);
    expect(greedy).toHaveLength(6);
    const banned = await client.completions.create({ ...base, logit_bias: { [String(greedy[0])]: -100 } } as OpenAI.CompletionCreateParamsNonStreaming);
    expect(ids(banned.choices[0]!)).not.toContain(greedy[0]);
  });

  it("penalties change greedy output; min_tokens holds EOS back across prefill and decode", async () => {
    const base = greedyIdsRequest(12);
    const plain = ids((await client.completions.create(base as OpenAI.CompletionCreateParamsNonStreaming)).choices[0]!);
    const penalised = await client.completions.create({
      ...base,
      presence_penalty: -2,
      frequency_penalty: 0.5,
      repetition_penalty: 0.5,
      min_p: 0.05,
    } as OpenAI.CompletionCreateParamsNonStreaming);
    expect(ids(penalised.choices[0]!)).toHaveLength(12);
    expect(ids(penalised.choices[0]!)).not.toEqual(plain);

    // EOS at +100 would end the output at once; min_tokens 4 makes the fifth token the EOS.
    const eos = {
      model: cluster.model,
      prompt: PROMPT,
      max_tokens: 10,
      temperature: 0,
      logprobs: 0,
      return_tokens_as_token_ids: true,
      logit_bias: { [String(EOS)]: 100 },
    };
    const early = await client.completions.create(eos as OpenAI.CompletionCreateParamsNonStreaming);
    expect(ids(early.choices[0]!)).toEqual([EOS]);
    const held = await client.completions.create({ ...eos, min_tokens: 4 } as OpenAI.CompletionCreateParamsNonStreaming);
    const out = ids(held.choices[0]!);
    expect(out).toHaveLength(5);
    expect(out.slice(0, 4)).not.toContain(EOS);
    expect(out[4]).toBe(EOS);
    expect(held.choices[0]!.finish_reason).toBe("stop");
  });

  it("stop strings are looked for only once the output is longer than min_tokens (vLLM's rule)", async () => {
    const base = { model: cluster.model, prompt: PROMPT, max_tokens: 6, temperature: 0, ignore_eos: true, logprobs: 0 } as const;
    const plain = await client.completions.create(base);
    const pieces = plain.choices[0]!.logprobs!.tokens!;
    const stop = pieces[0]!;
    expect(stop.length).toBeGreaterThan(0);
    // The first token's own text is a stop string: the output ends at once, with nothing to show.
    const cut = await client.completions.create({ ...base, stop: [stop] });
    expect(cut.choices[0]).toMatchObject({ text: "", finish_reason: "stop" });
    expect(cut.usage?.completion_tokens).toBe(1);
    // With min_tokens 3 the first three tokens pass unmatched.
    const held = await client.completions.create({ ...base, stop: [stop], min_tokens: 3 } as OpenAI.CompletionCreateParamsNonStreaming);
    expect(held.choices[0]!.text.startsWith(pieces.slice(0, 3).join(""))).toBe(true);
    expect(held.usage?.completion_tokens).toBeGreaterThanOrEqual(4);
  });

  it("an out-of-range penalty is a 400 naming the field", async () => {
    const err = await client.completions.create({ model: cluster.model, prompt: "x", presence_penalty: 3 }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(OpenAI.BadRequestError);
    expect((err as InstanceType<typeof OpenAI.BadRequestError>).param).toBe("presence_penalty");
  });

  it("streaming with continuous usage: every chunk carries the usage so far", async () => {
    const stream = await streamChat("tell me", {
      max_tokens: 8,
      temperature: 0,
      stream_options: { include_usage: true, continuous_usage_stats: true } as OpenAI.ChatCompletionStreamOptions,
    });
    const usages: { completion: number; prompt: number; withChoices: boolean }[] = [];
    for await (const chunk of stream) {
      expect(chunk.usage, "every chunk has usage").toBeTruthy();
      usages.push({ completion: chunk.usage!.completion_tokens, prompt: chunk.usage!.prompt_tokens, withChoices: chunk.choices.length > 0 });
    }
    expect(usages.length).toBeGreaterThan(2);
    expect(usages[0]!.completion).toBe(0);
    for (let i = 1; i < usages.length; i++) expect(usages[i]!.completion).toBeGreaterThanOrEqual(usages[i - 1]!.completion);
    const last = usages[usages.length - 1]!;
    expect(last.withChoices).toBe(false);
    expect(last.completion).toBeGreaterThan(0);
    expect(new Set(usages.map((u) => u.prompt)).size).toBe(1);
  });

  it("unknown fields are ignored, named in x-moela-ignored-fields", async () => {
    const { data, response } = await client.completions
      .create({ model: cluster.model, prompt: "x", max_tokens: 2, made_up_field: 1, another: true } as OpenAI.CompletionCreateParamsNonStreaming)
      .withResponse();
    expect(data.choices).toHaveLength(1);
    expect(response.headers.get("x-moela-ignored-fields")).toBe("made_up_field, another");
  });

  it("GET /v1/models/{id}, POST /tokenize and /detokenize, GET /version, GET /metrics on the API port", async () => {
    const model = await client.models.retrieve(cluster.model);
    expect(model).toMatchObject({ id: cluster.model, object: "model" });
    await expect(client.models.retrieve("no-such-model")).rejects.toBeInstanceOf(NotFoundError);

    const tok = (await (
      await fetch(`${origin}/tokenize`, {
        method: "POST",
        headers: { "content-type": "application/json" },
        body: JSON.stringify({ prompt: "Hello world", return_token_strs: true }),
      })
    ).json()) as {
      count: number;
      tokens: number[];
      token_strs: string[];
      max_model_len: number;
    };
    expect(tok.count).toBe(tok.tokens.length);
    expect(tok.token_strs).toHaveLength(tok.count);
    const detok = (await (
      await fetch(`${origin}/detokenize`, { method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify({ tokens: tok.tokens }) })
    ).json()) as { prompt: string };
    expect(detok.prompt).toContain("Hello world");

    const version = (await (await fetch(`${origin}/version`)).json()) as { version: string };
    expect(version.version).toMatch(/^\d+\.\d+\.\d+/);
    const metrics = await (await fetch(`${origin}/metrics`)).text();
    expect(metrics).toMatch(/^moela_router_requests_total/m);
  });

  it("gRPC Generate takes the same parameters: n = 2 choices with their index, logit_bias, min_tokens", async () => {
    const grpc = connect(GenerateClient, cluster.instances("router")[0]!.grpc!);
    try {
      const messages: GenerateResponse[] = [];
      const call = serverStreamCall<GenerateResponse>((md, o) =>
        grpc.generate(
          {
            prompt: { $case: "tokenIds", value: { ids: PROMPT } },
            sampling: {
              temperature: 0,
              topK: 0,
              maxTokens: 10,
              stop: [],
              stopTokenIds: [],
              ignoreEos: false,
              n: 2,
              minTokens: 3,
              logitBias: { entries: [{ tokenId: EOS, bias: 100 }] },
            },
            model: "",
            requestId: "",
            priority: 0,
            cacheSalt: "",
          },
          md,
          o,
        ),
      );
      for await (const m of call) messages.push(m);
      for (const index of [0, 1]) {
        const mine = messages.filter((m) => m.index === index);
        const tokens = mine.flatMap((m) => m.tokenIds);
        expect(tokens).toHaveLength(4);
        expect(tokens.slice(0, 3)).not.toContain(EOS);
        expect(tokens[3]).toBe(EOS);
        expect(mine[mine.length - 1]!.usage?.completionTokens).toBe(4);
      }
    } finally {
      grpc.close();
    }
  });
});
