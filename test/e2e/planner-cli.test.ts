// `moela plan` as people and scripts run it: a real process on the shipped configs.
import { describe, expect, it } from "vitest";
import { moela, moelaFails } from "../helpers/moela-cli.js";
import type { PlanJson } from "@moela/planner";

describe("moela plan", () => {
  it("prints the paper's figures for DeepSeek-V3 as one JSON object", async () => {
    const { stdout } = await moela(["plan", "test/fixtures/configs/deepseek-v3.json", "--json", "--hidden", "7000"]);
    const json = JSON.parse(stdout) as PlanJson;
    expect(json.kv_cache_bytes_per_token).toBe(70_272);
    expect(json.ep_decode).toMatchObject({ comm_us_per_layer_microbatch: 120.96, us_per_layer: 241.92, tpot_ms: 14.75712 });
    expect(Math.floor(json.ep_decode!.tokens_per_s)).toBe(67);
    expect((json.total_params / 1e9).toFixed(0)).toBe("671");
  });

  it("passes every topology flag through (900 GB/s, fp8 KV)", async () => {
    const { stdout } = await moela([
      "plan",
      "test/fixtures/configs/deepseek-v3.json",
      "--json",
      "--hidden",
      "7000",
      "--bandwidth-gbps",
      "900",
      "--kv-bytes",
      "1",
      "--tokens-per-microbatch",
      "32",
      "--microbatches",
      "2",
      "--dispatch-bytes",
      "1",
      "--combine-bytes",
      "2",
    ]);
    const json = JSON.parse(stdout) as PlanJson;
    expect(json.kv_cache_bytes_per_token).toBe(35_136);
    expect(json.ep_decode!.comm_us_per_layer_microbatch).toBe(6.72);
    expect(json.ep_decode!.tpot_ms.toFixed(2)).toBe("0.82");
  });

  it("reads a folder's config.json and prints the table", async () => {
    const { stdout } = await moela(["plan", "models/tiny-v3"]);
    expect(stdout).toContain("models/tiny-v3/config.json");
    expect(stdout).toMatch(/KV cache\s+640 B per token/);
    expect(stdout).toContain("EP decode");
  });

  it.each([
    [["plan", "/nonexistent/config.json"], /moela: \/nonexistent\/config\.json: no such file or folder/],
    [["plan", "package.json"], /package\.json: cannot tell the architecture/],
    [["plan", "test/fixtures/configs/deepseek-v3.json", "--microbatches", "0"], /--microbatches must be a positive whole number/],
    [["plan", "test/fixtures/configs/deepseek-v3.json", "--hidden", "7k"], /--hidden must be an integer/],
  ])("refuses %j with a clear message and exit code 2", async (args, message) => {
    const r = await moelaFails(args);
    expect(r.code).toBe(2);
    expect(r.stderr).toMatch(message);
  });
});
