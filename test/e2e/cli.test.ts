/** `moela generate` as people and scripts use it: a real process on the bundled model. */
import { execFile } from "node:child_process";
import { join } from "node:path";
import { pathToFileURL } from "node:url";
import { promisify } from "node:util";
import { describe, expect, it } from "vitest";
import { REPO_ROOT } from "../../services/cli/src/paths.js";
import { moela, moelaFails } from "../helpers/moela-cli.js";

const MODEL = "models/tiny-v3";
const execFileAsync = promisify(execFile);

describe("moela generate", () => {
  it("streams text for a text prompt", async () => {
    const { stdout, stderr } = await moela(["generate", "--model", MODEL, "--prompt", "Hello", "--max-tokens", "12", "--temperature", "0"]);
    expect(stdout.trim().length).toBeGreaterThan(0);
    expect(stderr).toMatch(/12 tokens in .* tok\/s/);
  });

  it("renders a chat message with the chat template", async () => {
    const { stdout } = await moela(["generate", "--model", MODEL, "--chat", "What is a hazelnut?", "--max-tokens", "8", "--temperature", "0"]);
    expect(stdout.trim().length).toBeGreaterThan(0);
  });

  it("prints the machine contract as one JSON object", async () => {
    const { stdout } = await moela([
      "generate",
      "--model",
      MODEL,
      "--prompt-ids",
      "0,399,332",
      "--max-tokens",
      "16",
      "--temperature",
      "0",
      "--json",
      "--top-logprobs",
      "3",
      "--logits",
      "--mtp-logits",
    ]);
    const out = JSON.parse(stdout) as { token_ids: number[]; top_logprobs: [number, number][][]; logits: number[]; mtp_logits: number[] };
    expect(out.token_ids.length).toBeGreaterThan(0);
    expect(out.token_ids.length).toBeLessThanOrEqual(16);
    expect(out.top_logprobs).toHaveLength(out.token_ids.length);
    out.top_logprobs.forEach((top, i) => {
      expect(top).toHaveLength(3);
      expect(top[0]![0]).toBe(out.token_ids[i]); // greedy: the chosen token is the best one
      expect(top[0]![1]).toBeGreaterThanOrEqual(top[1]![1]);
    });
    expect(out.logits).toHaveLength(1024);
    expect(out.mtp_logits).toHaveLength(1024);
    // The first generated token is the argmax of the last prompt position's logits.
    expect(out.logits.indexOf(Math.max(...out.logits))).toBe(out.token_ids[0]);
    expect(out.mtp_logits).not.toEqual(out.logits);
  });

  it("gives the same answer from its compiled JavaScript as from its TypeScript sources (MOELA_TSX=1)", async () => {
    const args = ["generate", "--model", MODEL, "--prompt-ids", "0,399,332", "--max-tokens", "8", "--temperature", "0", "--json", "--top-logprobs", "2"];
    const compiled = JSON.parse((await moela(args, { MOELA_TSX: "" })).stdout) as unknown;
    const sources = JSON.parse((await moela(args, { MOELA_TSX: "1" })).stdout) as unknown;
    expect(compiled).toEqual(sources);
    // The default run did use compiled JavaScript: this repository's sources compile (or are compiled and current).
    // A compile that failed would send every run to tsx, and the answers above would still agree.
    const script = `const { compiledCli } = await import(${JSON.stringify(join(REPO_ROOT, "services/cli/bin/compiled-js.mjs"))}); console.log(await compiledCli(${JSON.stringify(REPO_ROOT)}) ?? "none");`;
    const { stdout } = await execFileAsync(process.execPath, ["--input-type=module", "-e", script], { env: { ...process.env, MOELA_TSX: "" } });
    expect(stdout.trim()).toBe(pathToFileURL(join(REPO_ROOT, "services/cli/.compiled/main.js")).href);
  });

  it("ends the text before a stop string", async () => {
    const base = ["generate", "--model", MODEL, "--prompt", "Hello", "--max-tokens", "24", "--temperature", "0", "--ignore-eos", "--json"];
    const full = JSON.parse((await moela(base)).stdout) as { text: string };
    expect(full.text.length).toBeGreaterThan(6);
    const stop = full.text.slice(4, 7);
    const cut = JSON.parse((await moela([...base, "--stop", stop])).stdout) as { text: string; finish_reason: string };
    expect(cut.text).toBe(full.text.slice(0, full.text.indexOf(stop)));
    expect(cut.finish_reason).toBe("stop");
  });

  it.each([
    [["--prompt-ids", "0,99999"], /outside the vocabulary/],
    [["--prompt-ids", "1,2", "--temperature", "-1"], /temperature/],
    [["--prompt-ids", "1,2", "--max-tokens", "0"], /max_tokens/],
    [["--prompt-ids", "1,x"], /comma-separated/],
    [[], /exactly one of/],
  ])("refuses bad input %j with a clear message and exit code 2", async (extra, message) => {
    const r = await moelaFails(["generate", "--model", MODEL, ...extra]);
    expect(r.code).toBe(2);
    expect(r.stderr).toMatch(message);
  });

  it("names the folder when the model is missing", async () => {
    const r = await moelaFails(["generate", "--model", "/nonexistent/model", "--prompt-ids", "1"]);
    expect(r.code).toBe(2);
    expect(r.stderr).toContain("/nonexistent/model");
  });
});
