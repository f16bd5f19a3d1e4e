/**
 * Where a decode step's time goes, for scripts/bench/cluster.ts: the engine's forward phases (one process's own
 * PhaseTimes, or decode's moela_engine_forward_phase_seconds_total), the dispatcher's encode and combine, and the
 * expert-hosts' handling, compute and shared-memory waits, as seconds per step; the report divides each row over the
 * layers it belongs to.
 */
import { FORWARD_PHASES, type ForwardPhase, type ModelConfig } from "@moela/engine";
import { delta, type Instances, type Snapshot } from "./cluster-metrics.js";

/** The breakdown's rows, in order, with their labels, grouped by which layers the per-layer column divides them over. */
export const BREAKDOWN = {
  layer: { attention: "attention (norm, MLA, residual)" },
  moe: {
    gate: "gate (router, top-k)",
    shared_expert: "shared expert",
    routed_experts_here: "routed experts computed here (with the shared expert)",
    dispatch_encode: "dispatch: encode + send",
    waiting_on_hosts: "waiting on expert-hosts",
    host_request_wait: "  of which a request waiting to be read by its host (per call, shared memory)",
    host_handling: "  of which a host's handling (per call)",
    host_compute: "  of which its expert compute (per call)",
    answer_wait: "  of which an answer waiting to be read by decode (per answer, shared memory)",
    combine: "combine: decode + add",
  },
  dense: { dense_mlp: "dense MLP" },
  step: { lm_head: "output head", outside_phases: "outside the forward (sampling, batching, streaming)" },
} as const;
export type BreakdownPer = keyof typeof BREAKDOWN;
export type BreakdownRow = { [P in BreakdownPer]: keyof (typeof BREAKDOWN)[P] }[BreakdownPer];
export const BREAKDOWN_ROWS: readonly { readonly row: BreakdownRow; readonly label: string; readonly per: BreakdownPer }[] = (
  Object.keys(BREAKDOWN) as BreakdownPer[]
).flatMap((per) => Object.entries(BREAKDOWN[per]).map(([row, label]) => ({ row: row as BreakdownRow, label, per })));

/** Seconds per decode step of each part of the breakdown (undefined: not measured on that side). */
export interface Breakdown {
  steps: number;
  stepSeconds: number;
  /** Phase totals (seconds, all layers) per step. */
  perStep: Record<BreakdownRow, number | undefined>;
}

export type HostTimes = Partial<Record<"handling" | "compute" | "requestWait" | "answerWait", number | undefined>>;

export function moeLayers(cfg: ModelConfig): number {
  return cfg.numHiddenLayers - cfg.firstKDenseReplace;
}

/** How many layers a row's per-step time is spread over: every layer, the MoE ones, the dense ones, or one per step. */
export function layersOf(per: BreakdownPer, cfg: ModelConfig): number {
  return per === "layer" ? cfg.numHiddenLayers : per === "moe" ? moeLayers(cfg) : per === "dense" ? cfg.firstKDenseReplace : 1;
}

/**
 * The breakdown of `steps` decode steps that took `stepSeconds`, from the forward's phase totals. `dispatch` (the
 * dispatcher's encode and combine seconds) is given for a decode that waits on expert-hosts; `host` holds figures
 * already per step.
 */
export function breakdownFromPhases(
  phases: Record<ForwardPhase, number>,
  steps: number,
  stepSeconds: number,
  dispatch?: { encode: number; combine: number },
  host?: HostTimes,
): Breakdown {
  const enc = dispatch?.encode ?? 0;
  const comb = dispatch?.combine ?? 0;
  const inPhases = Object.values(phases).reduce((a, b) => a + b, 0);
  const perStep: Breakdown["perStep"] = {
    attention: phases.attention / steps,
    gate: phases.gate / steps,
    // The dispatcher's encode runs inside the shared-expert interval (runRouted sends before the shared expert starts).
    // One process computes the shared expert in the routed experts' group: no interval of its own.
    shared_expert: dispatch || phases.shared_expert > 0 ? (phases.shared_expert - enc) / steps : undefined,
    routed_experts_here: phases.routed_experts / steps,
    dispatch_encode: dispatch ? enc / steps : undefined,
    // ... and its combine inside the wait.
    waiting_on_hosts: dispatch ? (phases.routed_wait - comb) / steps : undefined,
    host_request_wait: host?.requestWait,
    host_handling: host?.handling,
    host_compute: host?.compute,
    answer_wait: host?.answerWait,
    combine: dispatch ? comb / steps : undefined,
    dense_mlp: phases.dense_mlp / steps,
    lm_head: phases.lm_head / steps,
    outside_phases: (stepSeconds - inPhases) / steps,
  };
  return { steps, stepSeconds, perStep };
}

/**
 * The decode instances' breakdown between two scrapes of a cluster's /metrics, with the expert-hosts' handling and
 * compute per call; undefined when decode stepped no step in between.
 */
export function clusterBreakdown(a: Snapshot, b: Snapshot, info: Instances, cfg: ModelConfig): Breakdown | undefined {
  const steps = delta(a, b, info, ["decode"], "moela_decode_step_seconds_count");
  const stepSeconds = delta(a, b, info, ["decode"], "moela_decode_step_seconds_sum");
  if (steps === undefined || stepSeconds === undefined || steps === 0) return undefined;
  const phase = (name: string, p: string) => delta(a, b, info, ["decode"], name, (l) => l.includes(`phase="${p}"`)) ?? 0;
  const phases = Object.fromEntries(FORWARD_PHASES.map((p) => [p, phase("moela_engine_forward_phase_seconds_total", p)])) as Record<ForwardPhase, number>;
  const dispatch = { encode: phase("moela_moe_dispatch_phase_seconds_total", "encode"), combine: phase("moela_moe_dispatch_phase_seconds_total", "combine") };
  // A histogram's mean per observation (one per dispatch call, or per message through shared memory), scaled to "per
  // step" so the per-layer column divides it back to one per MoE layer.
  const perCall = (role: "expert-host" | "decode", histogram: string): number | undefined => {
    const n = delta(a, b, info, [role], `${histogram}_count`);
    const sum = delta(a, b, info, [role], `${histogram}_sum`);
    return n !== undefined && n > 0 && sum !== undefined ? (sum / n) * moeLayers(cfg) : undefined;
  };
  const host = {
    handling: perCall("expert-host", "moela_expert_host_dispatch_seconds"),
    compute: perCall("expert-host", "moela_expert_host_compute_seconds"),
    // Through shared memory, from a message's publication to its reader: hosts read requests, decode answers.
    requestWait: perCall("expert-host", "moela_expert_host_shared_memory_request_wait_seconds"),
    answerWait: perCall("decode", "moela_moe_dispatch_shared_memory_answer_wait_seconds"),
  };
  return breakdownFromPhases(phases, steps, stepSeconds, dispatch, host);
}
