/**
 * The EP decode figures as "Insights into DeepSeek-V3" prints them, and how each compares with the
 * arithmetic: the same formula at the paper's inputs gives some figures exactly and others only after
 * rounding (or truncation), and the output says which.
 */
import { epDecodeBound, type EpDecodeBound, type EpDecodeInputs } from "./ep-decode.js";

export type FigureKey = "commUsPerLayerMicrobatch" | "usPerLayer" | "tpotMs" | "tokensPerS";

export interface PaperFigure {
  readonly key: FigureKey;
  /** As the paper writes it. */
  readonly stated: string;
  readonly value: number;
  /** How precisely the paper states it. */
  readonly precision: { readonly decimals: number } | { readonly significant: number };
}

export interface PaperScenario {
  readonly bandwidthGBps: number;
  readonly link: string;
  readonly figures: readonly PaperFigure[];
}

export const PAPER_EP_DECODE = {
  source: 'Zhao et al., "Insights into DeepSeek-V3: Scaling Challenges and Reflections on Hardware for AI Architectures", ISCA 2025',
  /** 32 tokens per micro-batch per device, 8 routed + 1 shared experts, FP8 dispatch, BF16 combine, "7K" hidden, 2 micro-batches, 61 layers. */
  inputs: { tokensPerMicrobatch: 32, expertsPerToken: 9, dispatchBytes: 1, combineBytes: 2, hidden: 7000, microbatches: 2, layers: 61 },
  scenarios: [
    {
      bandwidthGBps: 50,
      link: "400 Gb/s InfiniBand (CX7) per GPU, about 50 GB/s",
      figures: [
        { key: "commUsPerLayerMicrobatch", stated: "120.96 us", value: 120.96, precision: { decimals: 2 } },
        { key: "usPerLayer", stated: "241.92 us", value: 241.92, precision: { decimals: 2 } },
        { key: "tpotMs", stated: "14.76 ms", value: 14.76, precision: { decimals: 2 } },
        { key: "tokensPerS", stated: "~67 tokens/s", value: 67, precision: { decimals: 0 } },
      ],
    },
    {
      bandwidthGBps: 900,
      link: "GB200 NVL72, 900 GB/s",
      figures: [
        { key: "commUsPerLayerMicrobatch", stated: "6.72 us", value: 6.72, precision: { decimals: 2 } },
        { key: "tpotMs", stated: "~0.82 ms", value: 0.82, precision: { decimals: 2 } },
        { key: "tokensPerS", stated: "~1,200 tokens/s", value: 1200, precision: { significant: 2 } },
      ],
    },
  ] satisfies readonly PaperScenario[],
} as const;

export type Agreement = "exact" | "rounded" | "truncated" | "differs";

export interface PaperComparison {
  readonly key: FigureKey;
  readonly stated: string;
  readonly paper: number;
  /** The formula at the paper's inputs (hidden 7,000). */
  readonly computed: number;
  readonly agreement: Agreement;
  readonly note: string;
}

export interface PaperCheck {
  readonly scenario: PaperScenario;
  /** The bound at the paper's inputs, whatever hidden size this run uses. */
  readonly atPaperInputs: EpDecodeBound;
  readonly comparisons: readonly PaperComparison[];
}

const LABEL: Record<FigureKey, string> = {
  commUsPerLayerMicrobatch: "comm per layer and micro-batch",
  usPerLayer: "per layer",
  tpotMs: "TPOT",
  tokensPerS: "decode rate",
};
const UNIT: Record<FigureKey, string> = { commUsPerLayerMicrobatch: " us", usPerLayer: " us", tpotMs: " ms", tokensPerS: " tokens/s" };
/** Decimals shown for a computed figure. */
export const FIGURE_DECIMALS: Record<FigureKey, number> = { commUsPerLayerMicrobatch: 2, usPerLayer: 2, tpotMs: 5, tokensPerS: 2 };

export function formatNumber(x: number, maxDecimals: number): string {
  return x.toLocaleString("en-US", { maximumFractionDigits: maxDecimals });
}

function same(a: number, b: number): boolean {
  return Math.abs(a - b) <= 1e-9 * Math.max(1, Math.abs(a), Math.abs(b));
}

function scaleOf(x: number, p: PaperFigure["precision"]): number {
  return "decimals" in p ? 10 ** -p.decimals : 10 ** (Math.floor(Math.log10(Math.abs(x))) - p.significant + 1);
}

function describePrecision(p: PaperFigure["precision"]): string {
  return "decimals" in p ? (p.decimals === 0 ? "to a whole number" : `to ${p.decimals} decimals`) : `to ${p.significant} significant figures`;
}

export function compareFigure(f: PaperFigure, computed: number): PaperComparison {
  const scale = scaleOf(computed, f.precision);
  const rounded = Math.round(computed / scale) * scale;
  const truncated = Math.floor(computed / scale) * scale;
  const shown = `${LABEL[f.key]} ${formatNumber(computed, FIGURE_DECIMALS[f.key])}${UNIT[f.key]}`;
  let agreement: Agreement;
  let note: string;
  if (same(computed, f.value)) {
    agreement = "exact";
    note = `${shown}: the paper's ${f.stated}, exactly`;
  } else if (same(rounded, f.value)) {
    agreement = "rounded";
    note = `${shown}: the paper's ${f.stated} is this rounded ${describePrecision(f.precision)}`;
  } else if (same(truncated, f.value)) {
    agreement = "truncated";
    const r = formatNumber(rounded, 6);
    note = `${shown}: the paper's ${f.stated} is this truncated, not rounded (rounding gives ${r})`;
  } else {
    agreement = "differs";
    note = `${shown}: the paper states ${f.stated}`;
  }
  return { key: f.key, stated: f.stated, paper: f.value, computed, agreement, note };
}

/**
 * Compares with the paper when this run's topology is the paper's (all inputs but the hidden size, and
 * a bandwidth the paper evaluates); otherwise null. The comparison is always made at the paper's hidden
 * size, 7,000 ("7K"), so it checks the paper's arithmetic, not the model's.
 */
export function checkAgainstPaper(x: EpDecodeInputs): PaperCheck | null {
  const p = PAPER_EP_DECODE.inputs;
  const matches =
    x.tokensPerMicrobatch === p.tokensPerMicrobatch &&
    x.expertsPerToken === p.expertsPerToken &&
    x.dispatchBytes === p.dispatchBytes &&
    x.combineBytes === p.combineBytes &&
    x.microbatches === p.microbatches &&
    x.layers === p.layers;
  const scenario = PAPER_EP_DECODE.scenarios.find((s) => s.bandwidthGBps === x.bandwidthGBps);
  if (!matches || scenario === undefined) return null;
  const atPaperInputs = epDecodeBound({ ...x, hidden: p.hidden });
  return { scenario, atPaperInputs, comparisons: scenario.figures.map((f) => compareFigure(f, atPaperInputs[f.key])) };
}
