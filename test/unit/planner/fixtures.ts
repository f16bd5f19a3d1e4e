/** The published configs under test/fixtures/configs (sources in its README). */
import { readFileSync } from "node:fs";

export const CONFIGS = "test/fixtures/configs";

export function fixture(name: "deepseek-v3" | "qwen2.5-72b-instruct" | "llama-3.1-405b" | "mixtral-8x7b-instruct-v0.1"): Record<string, unknown> {
  return JSON.parse(readFileSync(`${CONFIGS}/${name}.json`, "utf8")) as Record<string, unknown>;
}
