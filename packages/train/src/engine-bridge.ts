/**
 * The trained parameters as the engine's in-memory weights (float32 matrices, no file): for checking that the
 * engine computes what training computed, and for sampling from a model mid-training.
 */
import { isMoeLayer, type BlockWeights, type MlpWeights, type ModelWeights, type WeightMatrix } from "@moela/engine";
import type { TrainModel } from "./model.js";

export function toEngineWeights(model: TrainModel): ModelWeights {
  const c = model.config;
  const f32 = (name: string): Float32Array => Float32Array.from(model.tensorValues(name));
  const mat = (name: string): WeightMatrix => {
    const p = model.params.has(name) ? model.params.get(name) : null;
    const shape = p?.shape ?? [c.vocabSize, c.hiddenSize];
    return { kind: "f32", rows: shape[0]!, cols: shape[1]!, data: f32(name) };
  };
  const mlp = (p: string): MlpWeights => ({ gate: mat(`${p}.gate_proj.weight`), up: mat(`${p}.up_proj.weight`), down: mat(`${p}.down_proj.weight`) });
  const block = (i: number): BlockWeights => {
    const p = `model.layers.${i}`;
    const a = `${p}.self_attn`;
    const lora = c.qLoraRank !== null;
    const moe = isMoeLayer(c, i);
    return {
      index: i,
      inputNorm: f32(`${p}.input_layernorm.weight`),
      postNorm: f32(`${p}.post_attention_layernorm.weight`),
      attn: {
        query: lora
          ? { kind: "lora", qA: { w: mat(`${a}.q_a_proj.weight`), bias: null }, qANorm: f32(`${a}.q_a_layernorm.weight`), qB: mat(`${a}.q_b_proj.weight`) }
          : { kind: "direct", q: { w: mat(`${a}.q_proj.weight`), bias: null } },
        kvA: { w: mat(`${a}.kv_a_proj_with_mqa.weight`), bias: null },
        kvANorm: f32(`${a}.kv_a_layernorm.weight`),
        kvB: mat(`${a}.kv_b_proj.weight`),
        o: { w: mat(`${a}.o_proj.weight`), bias: null },
      },
      ffn: moe
        ? {
            kind: "moe",
            gate: mat(`${p}.mlp.gate.weight`),
            bias: c.topkMethod === "noaux_tc" ? f32(`${p}.mlp.gate.e_score_correction_bias`) : null,
            experts: Array.from({ length: c.nRoutedExperts }, (_, e) => mlp(`${p}.mlp.experts.${e}`)),
            shared: c.nSharedExperts > 0 ? mlp(`${p}.mlp.shared_experts`) : null,
          }
        : { kind: "dense", mlp: mlp(`${p}.mlp`) },
    };
  };
  const embed = mat("model.embed_tokens.weight");
  const lmHead = c.tieWordEmbeddings ? embed : mat("lm_head.weight");
  const mtp = Array.from({ length: c.numNextnPredictLayers }, (_, k) => {
    const i = c.numHiddenLayers + k;
    const p = `model.layers.${i}`;
    return {
      embed,
      enorm: f32(`${p}.enorm.weight`),
      hnorm: f32(`${p}.hnorm.weight`),
      ehProj: mat(`${p}.eh_proj.weight`),
      block: block(i),
      headNorm: f32(`${p}.shared_head.norm.weight`),
      head: lmHead,
    };
  });
  return {
    embed,
    layers: Array.from({ length: c.numHiddenLayers }, (_, i) => block(i)),
    norm: f32("model.norm.weight"),
    lmHead,
    mtp,
  };
}
