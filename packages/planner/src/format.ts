/** A plan as one JSON object (snake_case keys, the machine contract) or as a table for people. */
import type { EpDecodeBound } from "./ep-decode.js";
import { FIGURE_DECIMALS, formatNumber, PAPER_EP_DECODE } from "./paper.js";
import type { Count } from "./params.js";
import type { Plan } from "./plan.js";

function boundJson(b: EpDecodeBound) {
  return {
    bytes_per_layer_microbatch: b.bytesPerLayerMicrobatch,
    comm_us_per_layer_microbatch: b.commUsPerLayerMicrobatch,
    us_per_layer: b.usPerLayer,
    tpot_ms: b.tpotMs,
    tokens_per_s: b.tokensPerS,
  };
}

const countJson = (c: Count) => ({ total: c.total, activated: c.activated });

/** The `--json` object. Counts are exact integers; times are unrounded. */
export function planToJson(plan: Plan, source?: string) {
  const a = plan.architecture;
  const at = a.attention;
  const moe = a.ffn.find((f) => f.kind === "moe");
  const moeLayers = a.ffn.filter((f) => f.kind === "moe").length;
  const ep = plan.epDecode;
  const b = plan.params.breakdown;
  return {
    ...(source === undefined ? {} : { config: source }),
    model_type: a.modelType,
    family: a.family,
    architectures: a.architectures,
    architecture: {
      vocab_size: a.vocabSize,
      hidden_size: a.hiddenSize,
      num_hidden_layers: a.numLayers,
      dense_layers: a.numLayers - moeLayers,
      moe_layers: moeLayers,
      mtp_modules: a.mtpModules,
      tie_word_embeddings: a.tieWordEmbeddings,
      attention:
        at.kind === "mla"
          ? {
              kind: "mla",
              num_heads: at.numHeads,
              q_lora_rank: at.qLoraRank,
              kv_lora_rank: at.kvLoraRank,
              qk_nope_head_dim: at.qkNopeHeadDim,
              qk_rope_head_dim: at.qkRopeHeadDim,
              v_head_dim: at.vHeadDim,
            }
          : { kind: at.numKvHeads === at.numHeads ? "mha" : "gqa", num_heads: at.numHeads, num_key_value_heads: at.numKvHeads, head_dim: at.headDim },
      moe:
        moe === undefined || moe.kind !== "moe"
          ? null
          : {
              routed_experts: moe.routedExperts,
              experts_per_token: moe.expertsPerToken,
              expert_intermediate_size: moe.expertIntermediateSize,
              shared_experts: moe.sharedExperts,
              shared_intermediate_size: moe.sharedIntermediateSize,
            },
    },
    total_params: plan.params.main.total,
    activated_params: plan.params.main.activated,
    activated_params_with_embedding: plan.params.main.activated + plan.params.breakdown.embedding.total,
    mtp_params: plan.params.mtp.total,
    mtp_activated_params: plan.params.mtp.activated,
    total_params_with_mtp: plan.params.main.total + plan.params.mtp.total,
    params_breakdown: {
      embedding: countJson(b.embedding),
      lm_head: countJson(b.lmHead),
      attention: countJson(b.attention),
      dense_ffn: countJson(b.denseFfn),
      routed_experts: countJson(b.routedExperts),
      shared_experts: countJson(b.sharedExperts),
      router: countJson(b.router),
      norms: countJson(b.norms),
    },
    kv_bytes: plan.kv.bytesPerValue,
    kv_cache_values_per_layer: plan.kv.valuesPerLayer,
    kv_cache_bytes_per_token: plan.kv.bytesPerToken,
    kv_cache_bytes_per_token_with_mtp: plan.kv.bytesPerTokenWithMtp,
    context: plan.context,
    flops_per_token: plan.flops.matmul + plan.flops.attentionPerContextToken * plan.context,
    flops_per_token_matmul: plan.flops.matmul,
    attention_flops_per_context_token: plan.flops.attentionPerContextToken,
    ep_decode:
      ep === null
        ? null
        : {
            bandwidth_gbps: ep.inputs.bandwidthGBps,
            tokens_per_microbatch: ep.inputs.tokensPerMicrobatch,
            experts_per_token: ep.inputs.expertsPerToken,
            dispatch_bytes: ep.inputs.dispatchBytes,
            combine_bytes: ep.inputs.combineBytes,
            hidden: ep.inputs.hidden,
            microbatches: ep.inputs.microbatches,
            layers: ep.inputs.layers,
            ...boundJson(ep.bound),
            moe_layers: ep.moeLayers,
            moe_layers_only: boundJson(ep.moeLayersOnly),
            at_config_hidden: ep.atConfigHidden === null ? null : { hidden: a.hiddenSize, ...boundJson(ep.atConfigHidden) },
            paper:
              ep.paper === null
                ? null
                : {
                    source: PAPER_EP_DECODE.source,
                    link: ep.paper.scenario.link,
                    hidden: PAPER_EP_DECODE.inputs.hidden,
                    at_paper_inputs: boundJson(ep.paper.atPaperInputs),
                    figures: ep.paper.comparisons.map((c) => ({
                      figure: c.key,
                      stated: c.stated,
                      paper: c.paper,
                      computed: c.computed,
                      agreement: c.agreement,
                    })),
                  },
          },
    notes: plan.notes,
  };
}

export type PlanJson = ReturnType<typeof planToJson>;

const int = (x: number) => formatNumber(x, 0);

/** 671,026,419,200 -> "671.03B"; small models get M or K. */
export function shortCount(x: number): string {
  if (x >= 1e12) return `${formatNumber(x / 1e12, 3)}T`;
  if (x >= 1e9) return `${formatNumber(x / 1e9, 2)}B`;
  if (x >= 1e6) return `${formatNumber(x / 1e6, 2)}M`;
  if (x >= 1e3) return `${formatNumber(x / 1e3, 2)}K`;
  return String(x);
}

function flopsText(x: number): string {
  if (x >= 1e12) return `${formatNumber(x / 1e12, 2)} TFLOP`;
  if (x >= 1e9) return `${formatNumber(x / 1e9, 2)} GFLOP`;
  if (x >= 1e6) return `${formatNumber(x / 1e6, 2)} MFLOP`;
  return `${int(x)} FLOP`;
}

/** Rows of cells, left column left-aligned, the others right-aligned. */
function columns(rows: readonly (readonly string[])[], indent = "  "): string[] {
  const widths: number[] = [];
  for (const r of rows) r.forEach((c, i) => (widths[i] = Math.max(widths[i] ?? 0, c.length)));
  return rows.map(
    (r) =>
      indent +
      r
        .map((c, i) => (i === 0 ? c.padEnd(widths[i]!) : c.padStart(widths[i]!)))
        .join("   ")
        .trimEnd(),
  );
}

/** The table `moela plan` prints for people. */
export function formatPlanTable(plan: Plan, source?: string): string {
  const a = plan.architecture;
  const at = a.attention;
  const moeLayers = a.ffn.filter((f) => f.kind === "moe").length;
  const moe = a.ffn.find((f) => f.kind === "moe");
  const out: string[] = [];
  const arch = a.architectures.length > 0 ? ` (${a.architectures.join(", ")})` : "";
  out.push(`moela plan${source === undefined ? "" : `: ${source}`}`);
  const layers =
    moeLayers > 0 && moeLayers < a.numLayers ? `${a.numLayers} layers (${a.numLayers - moeLayers} dense, ${moeLayers} MoE)` : `${a.numLayers} layers`;
  const mtp = a.mtpModules > 0 ? ` + ${a.mtpModules} MTP module${a.mtpModules > 1 ? "s" : ""}` : "";
  out.push(`model       ${a.modelType}${arch}: ${layers}${mtp}, hidden ${int(a.hiddenSize)}, vocab ${int(a.vocabSize)}`);
  out.push(
    at.kind === "mla"
      ? `attention   MLA: ${at.numHeads} heads, q_lora_rank ${at.qLoraRank === null ? "none" : int(at.qLoraRank)}, kv_lora_rank ${int(at.kvLoraRank)}, qk ${at.qkNopeHeadDim} nope + ${at.qkRopeHeadDim} rope, v ${at.vHeadDim}`
      : `attention   ${at.numKvHeads === at.numHeads ? "MHA" : "GQA"}: ${at.numHeads} query heads, ${at.numKvHeads} KV heads, head_dim ${at.headDim}`,
  );
  if (moe !== undefined && moe.kind === "moe") {
    const shared = moe.sharedExperts > 0 ? ` + ${moe.sharedExperts} shared (${int(moe.sharedIntermediateSize)} wide)` : "";
    out.push(`experts     ${moe.routedExperts} routed (${int(moe.expertIntermediateSize)} wide), ${moe.expertsPerToken} per token${shared}`);
  }
  out.push("");
  const p = plan.params;
  const b = p.breakdown;
  const row = (name: string, c: Count) => [name, int(c.total), shortCount(c.total), int(c.activated), shortCount(c.activated)];
  const rows: string[][] = [["parameters", "total", "", "activated per token", ""], row("main model", p.main)];
  if (a.mtpModules > 0) {
    rows.push(row("MTP (apart)", p.mtp));
    rows.push(row("main + MTP", { total: p.main.total + p.mtp.total, activated: p.main.activated + p.mtp.activated, matmul: 0 }));
  }
  rows.push(row("  embedding", b.embedding), row("  lm_head", b.lmHead), row("  attention", b.attention));
  if (b.denseFfn.total > 0) rows.push(row("  dense MLP", b.denseFfn));
  if (b.routedExperts.total > 0) rows.push(row("  routed experts", b.routedExperts));
  if (b.sharedExperts.total > 0) rows.push(row("  shared experts", b.sharedExperts));
  if (b.router.total > 0) rows.push(row("  router", b.router));
  rows.push(row("  norms", b.norms));
  out.push(...columns(rows, ""));
  out.push("");
  const kv = plan.kv;
  const kvWhat =
    at.kind === "mla"
      ? `${kv.valuesPerLayer} latent values (${at.kvLoraRank} + ${at.qkRopeHeadDim})`
      : `${int(kv.valuesPerLayer)} values (K and V, ${at.numKvHeads} heads x ${at.headDim})`;
  out.push(`KV cache    ${int(kv.bytesPerToken)} B per token = ${kv.layers} layers x ${kvWhat} x ${kv.bytesPerValue} B`);
  const f = plan.flops;
  const atContext = plan.context > 0 ? `; at context ${int(plan.context)}: ${flopsText(f.matmul + f.attentionPerContextToken * plan.context)}` : "";
  out.push(
    `FLOPs       ${flopsText(f.matmul)} per token = 2 x ${shortCount(f.matmul / 2)} activated matmul weights, + ${int(f.attentionPerContextToken)} per context token (attention)${atContext}`,
  );
  const ep = plan.epDecode;
  if (ep !== null) {
    const x = ep.inputs;
    out.push("");
    out.push(
      `EP decode   ${formatNumber(x.bandwidthGBps, 3)} GB/s, ${x.tokensPerMicrobatch} tokens per micro-batch, ${x.expertsPerToken} experts per token, ` +
        `dispatch ${x.dispatchBytes} B + combine ${x.combineBytes} B, hidden ${int(x.hidden)}, ${x.microbatches} micro-batches, ${x.layers} layers`,
    );
    const d = FIGURE_DECIMALS;
    out.push(
      ...columns([
        ["comm per layer and micro-batch", `${formatNumber(ep.bound.commUsPerLayerMicrobatch, d.commUsPerLayerMicrobatch)} us`],
        ["per layer", `${formatNumber(ep.bound.usPerLayer, d.usPerLayer)} us`],
        ["TPOT", `${formatNumber(ep.bound.tpotMs, 2)} ms`],
        ["tokens/s", formatNumber(ep.bound.tokensPerS, d.tokensPerS)],
      ]),
    );
  }
  if (plan.notes.length > 0) {
    out.push("");
    out.push("notes");
    for (const n of plan.notes) out.push(n.startsWith("  ") ? `    ${n.trimStart()}` : `  - ${n}`);
  }
  return out.join("\n") + "\n";
}
