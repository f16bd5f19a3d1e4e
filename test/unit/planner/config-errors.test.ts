// Configs and options the planner cannot use: each refused with an error that names the file, the field and why.
import { describe, expect, it } from "vitest";
import { ConfigError, InvalidArgumentError } from "@moela/core";
import { detectFamily, planModel } from "@moela/planner";
import { fixture } from "./fixtures.js";

const v3 = fixture("deepseek-v3");
const llama = fixture("llama-3.1-405b");

function without(o: Record<string, unknown>, key: string): Record<string, unknown> {
  const { [key]: _, ...rest } = o;
  return rest;
}

describe("configs it cannot read", () => {
  it.each([
    ["not an object", [1, 2], /x\.json: must hold one JSON object/],
    ["null", null, /must hold one JSON object/],
    [
      "an unknown architecture",
      { model_type: "gpt2", architectures: ["GPT2LMHeadModel"], n_embd: 768 },
      /cannot tell the architecture \(model_type "gpt2", architectures GPT2LMHeadModel\); moela plan reads DeepSeek/,
    ],
    ["a multimodal wrapper", { model_type: "llava", text_config: { model_type: "llama" } }, /multimodal config: pass the language model's config/],
    ["MLA without kv_lora_rank", without(v3, "kv_lora_rank"), /DeepSeek \(MLA\) config: field 'kv_lora_rank' is missing/],
    ["a string where a number goes", { ...llama, num_hidden_layers: "126" }, /llama config: field 'num_hidden_layers' is "126"/],
    ["a negative size", { ...llama, hidden_size: -1 }, /field 'hidden_size' is -1/],
    ["routed experts without their width", without(v3, "moe_intermediate_size"), /moe_intermediate_size is required with n_routed_experts/],
    ["more experts per token than experts", { ...v3, num_experts_per_tok: 300 }, /num_experts_per_tok 300 exceeds n_routed_experts 256/],
    ["more dense layers than layers", { ...v3, first_k_dense_replace: 62 }, /first_k_dense_replace 62 exceeds num_hidden_layers 61/],
    ["heads that do not group", { ...llama, num_key_value_heads: 7 }, /num_attention_heads 128 is not a multiple of num_key_value_heads 7/],
  ])("%s", (_what, json, message) => {
    const err = (() => {
      try {
        planModel(json, {}, "x.json");
      } catch (e) {
        return e;
      }
      throw new Error("planned it");
    })();
    expect(err).toBeInstanceOf(ConfigError);
    expect((err as Error).message).toMatch(message);
  });
});

describe("options it cannot use", () => {
  it.each([
    [{ kvBytes: 0 }, /--kv-bytes must be a positive number, got 0/],
    [{ bandwidthGBps: -50 }, /--bandwidth-gbps must be a positive number/],
    [{ microbatches: 1.5 }, /--microbatches must be a positive whole number, got 1\.5/],
    [{ hidden: Number.NaN }, /--hidden must be a positive whole number/],
    [{ context: -1 }, /--context must be a non-negative whole number/],
  ])("%j", (options, message) => {
    expect(() => planModel(v3, options)).toThrow(InvalidArgumentError);
    expect(() => planModel(v3, options)).toThrow(message);
  });
});

describe("family detection", () => {
  it.each([
    [{ model_type: "deepseek_v3" }, "deepseek"],
    [{ model_type: "kimi_k2" }, "deepseek"],
    [{ architectures: ["DeepseekV3ForCausalLM"] }, "deepseek"],
    [{ kv_lora_rank: 512 }, "deepseek"],
    [{ model_type: "mistral" }, "llama"],
    [{ model_type: "qwen2" }, "qwen2"],
    [{ architectures: ["MixtralForCausalLM"] }, "mixtral"],
    [{ model_type: "qwen3_moe" }, "qwen3_moe"],
  ] as const)("%j is %s", (json, family) => {
    expect(detectFamily(json)).toBe(family);
  });
});
