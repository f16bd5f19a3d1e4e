// The table for people and the --json object say the same thing.
import { describe, expect, it } from "vitest";
import { formatNumber, formatPlanTable, planModel, planToJson } from "@moela/planner";
import { fixture } from "./fixtures.js";

describe("table and JSON", () => {
  it.each([
    ["deepseek-v3", { hidden: 7000 }],
    ["deepseek-v3", { hidden: 7000, bandwidthGBps: 900 }],
    ["mixtral-8x7b-instruct-v0.1", {}],
    ["qwen2.5-72b-instruct", {}],
    ["llama-3.1-405b", { kvBytes: 1 }],
  ] as const)("%s %j: the table shows the JSON's figures", (name, options) => {
    const plan = planModel(fixture(name), options);
    const json = planToJson(plan, `${name}.json`);
    const table = formatPlanTable(plan, `${name}.json`);
    expect(json.config).toBe(`${name}.json`);
    expect(table).toContain(`${name}.json`);
    expect(table).toContain(formatNumber(json.total_params, 0));
    expect(table).toContain(formatNumber(json.activated_params, 0));
    expect(table).toContain(`KV cache    ${formatNumber(json.kv_cache_bytes_per_token, 0)} B per token`);
    if (json.ep_decode !== null) {
      expect(table).toContain(`${formatNumber(json.ep_decode.comm_us_per_layer_microbatch, 2)} us`);
      expect(table).toContain(`${formatNumber(json.ep_decode.us_per_layer, 2)} us`);
      expect(table).toContain(`${formatNumber(json.ep_decode.tpot_ms, 2)} ms`);
      expect(table).toContain(formatNumber(json.ep_decode.tokens_per_s, 2));
    } else {
      expect(table).not.toContain("EP decode");
    }
    for (const note of json.notes) expect(table).toContain(note.trim());
  });

  it("the JSON carries the keys the issue names, as numbers", () => {
    const json = planToJson(planModel(fixture("deepseek-v3"), { hidden: 7000 }));
    for (const k of ["total_params", "activated_params", "mtp_params", "kv_cache_bytes_per_token"] as const) expect(typeof json[k]).toBe("number");
    for (const k of ["comm_us_per_layer_microbatch", "us_per_layer", "tpot_ms", "tokens_per_s"] as const) expect(typeof json.ep_decode![k]).toBe("number");
    // survives a round trip through text unchanged
    expect(JSON.parse(JSON.stringify(json))).toEqual(json);
  });

  it("the DeepSeek-V3 table at the paper's inputs reads as the paper does", () => {
    const table = formatPlanTable(planModel(fixture("deepseek-v3"), { hidden: 7000 }));
    expect(table).toMatch(/comm per layer and micro-batch\s+120\.96 us/);
    expect(table).toMatch(/per layer\s+241\.92 us/);
    expect(table).toMatch(/TPOT\s+14\.76 ms/);
    expect(table).toMatch(/tokens\/s\s+67\.76/);
    expect(table).toContain("KV cache    70,272 B per token = 61 layers x 576 latent values (512 + 64) x 2 B");
  });
});
