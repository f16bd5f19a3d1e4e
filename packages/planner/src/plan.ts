/**
 * `planModel`: everything `moela plan` reports for one config.json, as plain data, plus the notes
 * that say where a figure rests on a convention or where the paper rounds.
 */
import { InvalidArgumentError } from "@moela/core";
import { parseArchitecture, type Architecture } from "./config.js";
import { countParams, flopsPerToken, type FlopsPerToken, type ParamCounts } from "./params.js";
import { kvCache, type KvCache } from "./kv-cache.js";
import { epDecodeBound, type EpDecodeBound, type EpDecodeInputs } from "./ep-decode.js";
import { checkAgainstPaper, formatNumber, PAPER_EP_DECODE, type PaperCheck } from "./paper.js";

/** The defaults of `moela plan` (the paper's decode topology at 50 GB/s, bf16 KV). */
export const PLAN_DEFAULTS = {
  kvBytes: 2,
  context: 0,
  bandwidthGBps: 50,
  tokensPerMicrobatch: 32,
  microbatches: 2,
  dispatchBytes: 1,
  combineBytes: 2,
} as const;

export interface PlanOptions {
  /** Bytes per cached value (default 2: bf16). */
  readonly kvBytes?: number;
  /** Tokens already in context, for the attention part of FLOPs per token (default 0). */
  readonly context?: number;
  readonly bandwidthGBps?: number;
  readonly tokensPerMicrobatch?: number;
  readonly microbatches?: number;
  readonly dispatchBytes?: number;
  readonly combineBytes?: number;
  /** Values per token per message (default: the config's hidden_size). */
  readonly hidden?: number;
  /** Experts per token, shared included (default: the config's routed + shared). */
  readonly expertsPerToken?: number;
  /** Layers that pay the bound (default: num_hidden_layers, as the paper counts). */
  readonly layers?: number;
}

export interface EpDecodePlan {
  readonly inputs: EpDecodeInputs;
  readonly bound: EpDecodeBound;
  /** Main layers with dispatch and combine (the rest are dense). */
  readonly moeLayers: number;
  /** The bound over the MoE layers alone. */
  readonly moeLayersOnly: EpDecodeBound;
  /** The bound at the config's own hidden size when --hidden replaced it; else null. */
  readonly atConfigHidden: EpDecodeBound | null;
  readonly paper: PaperCheck | null;
}

export interface Plan {
  readonly architecture: Architecture;
  readonly params: ParamCounts;
  readonly kv: KvCache;
  readonly context: number;
  readonly flops: FlopsPerToken;
  /** null for a model without MoE layers: there is nothing to dispatch. */
  readonly epDecode: EpDecodePlan | null;
  readonly notes: readonly string[];
}

function positive(name: string, v: number, integer: boolean, allowZero = false): number {
  const ok = Number.isFinite(v) && (allowZero ? v >= 0 : v > 0) && (!integer || Number.isInteger(v));
  if (!ok) throw new InvalidArgumentError(`${name} must be a ${allowZero ? "non-negative" : "positive"} ${integer ? "whole number" : "number"}, got ${v}`);
  return v;
}

const n0 = (x: number) => formatNumber(x, 0);

function epDecodePlan(a: Architecture, o: PlanOptions): EpDecodePlan | null {
  const moe = a.ffn.filter((f) => f.kind === "moe");
  const first = moe[0];
  if (first === undefined || first.kind !== "moe") return null;
  const inputs: EpDecodeInputs = {
    bandwidthGBps: positive("--bandwidth-gbps", o.bandwidthGBps ?? PLAN_DEFAULTS.bandwidthGBps, false),
    tokensPerMicrobatch: positive("--tokens-per-microbatch", o.tokensPerMicrobatch ?? PLAN_DEFAULTS.tokensPerMicrobatch, true),
    expertsPerToken: positive("--experts-per-token", o.expertsPerToken ?? first.expertsPerToken + first.sharedExperts, true),
    dispatchBytes: positive("--dispatch-bytes", o.dispatchBytes ?? PLAN_DEFAULTS.dispatchBytes, false),
    combineBytes: positive("--combine-bytes", o.combineBytes ?? PLAN_DEFAULTS.combineBytes, false),
    hidden: positive("--hidden", o.hidden ?? a.hiddenSize, true),
    microbatches: positive("--microbatches", o.microbatches ?? PLAN_DEFAULTS.microbatches, true),
    layers: positive("--layers", o.layers ?? a.numLayers, true),
  };
  return {
    inputs,
    bound: epDecodeBound(inputs),
    moeLayers: moe.length,
    moeLayersOnly: epDecodeBound({ ...inputs, layers: moe.length }),
    atConfigHidden: inputs.hidden !== a.hiddenSize ? epDecodeBound({ ...inputs, hidden: a.hiddenSize }) : null,
    paper: checkAgainstPaper(inputs),
  };
}

function epNotes(a: Architecture, ep: EpDecodePlan): string[] {
  const notes: string[] = [];
  const x = ep.inputs;
  const figures = (b: EpDecodeBound) =>
    `${formatNumber(b.commUsPerLayerMicrobatch, 2)} us per layer and micro-batch, ${formatNumber(b.usPerLayer, 2)} us per layer, ` +
    `TPOT ${formatNumber(b.tpotMs, 2)} ms, ${formatNumber(b.tokensPerS, 2)} tokens/s`;
  notes.push("EP bound: bandwidth in GB/s with 1 GB = 10^9 bytes; tokens/s is one sequence's decode rate, 1 / TPOT.");
  if (ep.atConfigHidden !== null) {
    notes.push(`--hidden ${x.hidden} stands in for the config's hidden_size ${n0(a.hiddenSize)}; with ${n0(a.hiddenSize)}: ${figures(ep.atConfigHidden)}.`);
  }
  if (ep.moeLayers !== x.layers) {
    const dense = a.numLayers - ep.moeLayers;
    const why = dense > 0 && x.layers === a.numLayers ? ` (the other ${dense} are dense and dispatch nothing)` : "";
    notes.push(
      `TPOT counts ${x.layers} layers${x.layers === a.numLayers ? ", all of num_hidden_layers, as the paper does" : ""}; ` +
        `${ep.moeLayers} are MoE layers${why}. Over those alone: TPOT ${formatNumber(ep.moeLayersOnly.tpotMs, 2)} ms, ${formatNumber(ep.moeLayersOnly.tokensPerS, 2)} tokens/s.`,
    );
  }
  if (a.mtpModules > 0)
    notes.push(
      `The MTP module${a.mtpModules > 1 ? "s'" : "'s"} ${a.mtpModules} layer${a.mtpModules > 1 ? "s are" : " is"} not in the EP bound's layer count (nor in the paper's).`,
    );
  if (ep.paper !== null) {
    const p = ep.paper;
    const hiddenNote =
      x.hidden === PAPER_EP_DECODE.inputs.hidden ? "" : ` (the paper's "7K" hidden is 7,000; this run's ${n0(x.hidden)} gives the figures above)`;
    notes.push(`Against ${PAPER_EP_DECODE.source}, ${p.scenario.link}, at hidden 7,000${hiddenNote}:`);
    for (const c of p.comparisons) notes.push(`  ${c.note}.`);
  }
  return notes;
}

/** Plans a model from its config.json object. `source` names the file in error messages. */
export function planModel(configJson: unknown, options: PlanOptions = {}, source = "config.json"): Plan {
  const architecture = parseArchitecture(configJson, source);
  const kvBytes = positive("--kv-bytes", options.kvBytes ?? PLAN_DEFAULTS.kvBytes, false);
  const context = positive("--context", options.context ?? PLAN_DEFAULTS.context, true, true);
  const params = countParams(architecture);
  const kv = kvCache(architecture, kvBytes);
  const flops = flopsPerToken(architecture, params);
  const epDecode = epDecodePlan(architecture, options);
  const notes: string[] = [];
  const withEmbedding = params.main.activated + params.breakdown.embedding.total;
  notes.push(
    `Activated parameters leave out the input embedding, a row lookup (DeepSeek's convention, its "37B"); ` +
      `counting the whole table, as Mistral and Qwen do, gives ${n0(withEmbedding)}.`,
  );
  if (architecture.mtpModules > 0) {
    notes.push(
      `KV cache: ${n0(kv.bytesPerToken)} B per token over the ${kv.layers} main layers; the MTP layer${architecture.mtpModules > 1 ? "s add" : " adds"} ` +
        `${n0(kv.bytesPerTokenWithMtp - kv.bytesPerToken)} B (${n0(kv.bytesPerTokenWithMtp)} B), which per-token figures usually leave out (the paper's 70,272 B for DeepSeek-V3 does).`,
    );
  }
  if (epDecode === null) notes.push("No MoE layers: the expert-parallel decode bound does not apply.");
  else notes.push(...epNotes(architecture, epDecode));
  return { architecture, params, kv, context, flops, epDecode, notes };
}
