/**
 * The expert-parallel decode bound of "Insights into DeepSeek-V3" (ISCA 2025): with experts spread over
 * devices, every MoE layer of a decode step sends each token's hidden state to its experts (dispatch) and
 * brings their outputs back (combine). With the link the only limit, one layer and micro-batch costs
 *
 *   comm = (dispatch bytes + combine bytes) x tokens per micro-batch x experts per token x hidden / bandwidth
 *
 * and with `microbatches` micro-batches overlapped (one computes while the other communicates) a layer
 * takes at least microbatches x comm; a step, layers x that (TPOT); one sequence decodes 1 / TPOT tokens/s.
 * Bandwidth is in GB/s with 1 GB = 10^9 bytes; these conventions are what reproduce the paper's figures.
 */
import { InvalidArgumentError } from "@moela/core";

export interface EpDecodeInputs {
  /** Link bandwidth per device, GB/s (10^9 bytes per second). */
  readonly bandwidthGBps: number;
  readonly tokensPerMicrobatch: number;
  /** Experts each token is sent to, the shared one(s) included (DeepSeek-V3: 8 routed + 1 shared). */
  readonly expertsPerToken: number;
  /** Bytes per value sent to the experts (1: FP8). */
  readonly dispatchBytes: number;
  /** Bytes per value sent back (2: BF16). */
  readonly combineBytes: number;
  /** Values per token per message: the hidden size. */
  readonly hidden: number;
  /** Micro-batches overlapped in one step. */
  readonly microbatches: number;
  /** Layers that pay the bound per step. */
  readonly layers: number;
}

export interface EpDecodeBound {
  /** Bytes one device sends and receives per layer and micro-batch. */
  readonly bytesPerLayerMicrobatch: number;
  readonly commUsPerLayerMicrobatch: number;
  readonly usPerLayer: number;
  readonly tpotMs: number;
  readonly tokensPerS: number;
}

const INTEGER_INPUTS = ["tokensPerMicrobatch", "expertsPerToken", "hidden", "microbatches", "layers"] as const;

export function checkEpDecodeInputs(x: EpDecodeInputs): void {
  for (const [k, v] of Object.entries(x)) {
    if (typeof v !== "number" || !Number.isFinite(v) || v <= 0) throw new InvalidArgumentError(`${k} must be a positive number, got ${String(v)}`);
  }
  for (const k of INTEGER_INPUTS) {
    if (!Number.isInteger(x[k])) throw new InvalidArgumentError(`${k} must be a whole number, got ${x[k]}`);
  }
}

/**
 * Each figure is one division of exact products, so the paper's numbers come out as the doubles
 * nearest them (120.96, not 120.96000000000001).
 */
export function epDecodeBound(x: EpDecodeInputs): EpDecodeBound {
  checkEpDecodeInputs(x);
  const bytes = (x.dispatchBytes + x.combineBytes) * x.tokensPerMicrobatch * x.expertsPerToken * x.hidden;
  const bytesPerUs = x.bandwidthGBps * 1e3; // 10^9 B/s = 10^3 B/us
  return {
    bytesPerLayerMicrobatch: bytes,
    commUsPerLayerMicrobatch: bytes / bytesPerUs,
    usPerLayer: (bytes * x.microbatches) / bytesPerUs,
    tpotMs: (bytes * x.microbatches * x.layers) / (bytesPerUs * 1e3),
    tokensPerS: (bytesPerUs * 1e6) / (bytes * x.microbatches * x.layers),
  };
}
