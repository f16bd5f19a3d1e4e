// The bundled default model (models/moela-v3-deep, trained by `moela train` on the Brown corpus) through the
// platform as `npm start` runs it: plain English prompts get English back. A word counts as English when
// Debian's word list (wamerican, /usr/share/dict/american-english; .ci/run installs it) has it.
import { readFileSync } from "node:fs";
import OpenAI from "openai";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { DEFAULT_MODEL } from "../../services/cli/src/launcher.js";
import { startTestCluster, type TestCluster } from "../helpers/cluster.js";

const WORD_LIST = "/usr/share/dict/american-english";
const PROMPTS = [
  "The capital of France is",
  "Once upon a time, there was",
  "The president said that the",
  "In the morning, the children went",
  "The results of the study show that",
  "She opened the door and",
];

let cluster: TestCluster | undefined;
let words: Set<string>;

beforeAll(async () => {
  words = new Set(
    readFileSync(WORD_LIST, "utf8")
      .split("\n")
      .map((w) => w.trim().toLowerCase())
      .filter((w) => w !== ""),
  );
  cluster = await startTestCluster({ model: DEFAULT_MODEL });
}, 240_000);

afterAll(async () => {
  await cluster?.stop();
});

describe("the default model", () => {
  it("answers plain English prompts with English: at least 80% of the generated words are in the word list", async () => {
    const client = new OpenAI({ baseURL: cluster!.baseURL, apiKey: "test", maxRetries: 0, timeout: 120_000 });
    const completions = await Promise.all(
      PROMPTS.map(async (prompt) => (await client.completions.create({ model: cluster!.model, prompt, max_tokens: 32, temperature: 0 })).choices[0]!.text),
    );
    const generated = completions.flatMap((text) => text.toLowerCase().match(/[a-z]+(?:'[a-z]+)*/g) ?? []);
    const known = generated.filter((w) => words.has(w) || words.has(w.replace(/'s$/, "")));
    // Enough words to judge by: six answers of 32 tokens each.
    expect(generated.length).toBeGreaterThan(60);
    expect(known.length / generated.length, `generated: ${JSON.stringify(completions)}`).toBeGreaterThanOrEqual(0.8);
  });
});
