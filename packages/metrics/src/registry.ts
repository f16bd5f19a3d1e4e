/**
 * One prom-client Registry per service, holding that service's metrics (names.ts) and, by
 * default, prom-client's process/nodejs metrics. Nothing is registered in prom-client's global
 * registry, so several services can share a process (tests, `npm start` in one process) without
 * clashing. Accessors are typed from names.ts: `m.routerRequests.inc({ model, api: "openai", outcome: "ok" })`
 * compiles only with labels the metric declares (prom-client lets one be left out: pass them all).
 * Every registry but a process's second one (buildInfo: false) holds moela_build_info, set once to 1.
 */
import { readFileSync } from "node:fs";
import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from "prom-client";
import { InvalidArgumentError } from "@moela/core";
import { BUCKETS } from "./buckets.js";
import { METRICS, type LabelName, type MetricDef, type MetricKey } from "./names.js";

export type ServiceName = "router" | "prefill" | "decode" | "expert-host";

const RPC = ["buildInfo", "rpcServerHandled", "rpcServerHandling", "rpcClientHandled", "rpcClientHandling"] as const;
const MOE_DISPATCH = [
  "moeDispatchHostsReached",
  "moeDispatchSentBytes",
  "moeCombineReceivedBytes",
  "moeDispatchRoundTrip",
  "moeDispatchSharedMemoryAnswerWait",
  "moeDispatchPhase",
  "forwardPhase",
] as const;

/** Which metrics each service exports. */
export const SERVICE_METRICS = {
  router: [
    ...RPC,
    "routerRequests",
    "routerRequestsInFlight",
    "routerTimeToFirstToken",
    "routerInterTokenLatency",
    "routerE2eLatency",
    "routerPromptTokens",
    "routerGenerationTokens",
    "routerQueueDepth",
    "routerQueueActive",
    "routerQueueRemoved",
    "routerQueueWait",
    "routerRetries",
    "routerGenerations",
    "routerRequestPromptTokens",
    "routerRequestGenerationTokens",
    "routerRequestPrefill",
    "routerRequestDecode",
  ],
  prefill: [
    ...RPC,
    ...MOE_DISPATCH,
    "prefillJobs",
    "prefillBatchSize",
    "prefillBatchTokens",
    "prefillTokens",
    "prefillForward",
    "prefillBatchWait",
    "prefillPrefixCacheQueries",
    "prefillPrefixCacheHits",
    "prefillPrefixCacheSaved",
    "prefillPrefixCacheBlocks",
    "prefillKvBlocksUsed",
    "prefillKvReclaims",
    "prefillKvReclaimedBlocks",
    "prefillKvTransferBytes",
    "prefillKvTransferDuration",
    "prefillKvTransferFailures",
  ],
  decode: [
    ...RPC,
    ...MOE_DISPATCH,
    "decodeRunningSequences",
    "decodeWaitingSequences",
    "decodeKvBlocksUsed",
    "decodeKvBlocksCapacity",
    "decodeKvUsage",
    "decodeStep",
    "decodeGeneratedTokens",
    "decodeMtpDraftedTokens",
    "decodeMtpAcceptedTokens",
    "decodeKvReceivedBytes",
    "decodeKvTransferDuration",
    "decodeKvStrandedBlocks",
    "decodeKvReclaims",
    "decodeKvReclaimedBlocks",
  ],
  "expert-host": [
    ...RPC,
    "expertHostLayerTokens",
    "expertHostExpertTokens",
    "expertHostBatchTokens",
    "expertHostReceivedBytes",
    "expertHostSentBytes",
    "expertHostSharedMemoryDispatches",
    "expertHostSharedMemoryRequestWait",
    "expertHostCompute",
    "expertHostDispatch",
  ],
} as const satisfies Record<ServiceName, readonly MetricKey[]>;

/** Metrics that exist only when switched on (high-cardinality series; build info off in a second registry). */
type OptionalKey = "expertHostExpertTokens" | "buildInfo";

type Def<K extends MetricKey> = (typeof METRICS)[K];
type LabelsOf<K extends MetricKey> = Def<K>["labels"][number];
export type MetricOf<K extends MetricKey> = Def<K>["kind"] extends "counter"
  ? Counter<LabelsOf<K>>
  : Def<K>["kind"] extends "gauge"
    ? Gauge<LabelsOf<K>>
    : Histogram<LabelsOf<K>>;

type KeysOf<S extends ServiceName> = (typeof SERVICE_METRICS)[S][number];

/** Typed accessors of a service's metrics; switchable ones are undefined when off. */
export type MetricsOf<S extends ServiceName> = {
  readonly [K in KeysOf<S> as K extends OptionalKey ? never : K]: MetricOf<K>;
} & {
  readonly [K in KeysOf<S> as K extends OptionalKey ? K : never]?: MetricOf<K>;
};

/** Label-less gauges of a service: the ones a scrape-time callback can fill. */
export type CollectableGauge<S extends ServiceName> = {
  [K in KeysOf<S>]: Def<K>["kind"] extends "gauge" ? (Def<K>["labels"] extends readonly [] ? K : never) : never;
}[KeysOf<S>];

export interface ServiceMetricsOptions<S extends ServiceName> {
  /** Register prom-client's default process and nodejs metrics (default true). */
  defaultMetrics?: boolean;
  /** expert-host: also export one series per (layer, expert) (default false: per layer only). */
  perExpertSeries?: boolean;
  /** Gauges read at scrape time: metric key -> current value (a throw fails that scrape). */
  collect?: Partial<Record<CollectableGauge<S>, () => number | Promise<number>>>;
  /**
   * The served model's name (names.ts LABEL.model): counters with a `model` label and known other values
   * start at 0 for it (so the first failure of a model is an increase), and moela_build_info carries it.
   */
  model?: string;
  /**
   * moela_build_info's configuration labels (default "none": a service that computes nothing), or false
   * for no build info: a second registry of one process whose exposition is served with the first's.
   */
  buildInfo?: BuildInfo | false;
}

/** moela_build_info's labels beyond version, component (the service) and model. */
export interface BuildInfo {
  /** The precision profile's name (exact, paper, ...). */
  readonly precision?: string;
  /** fast | portable | reference. */
  readonly kernels?: string;
}

/** The platform's version: the repository's package.json (as `moela --version`); "unknown" without one. */
export const MOELA_VERSION: string = (() => {
  try {
    const pkg = JSON.parse(readFileSync(new URL("../../../package.json", import.meta.url), "utf8")) as { version?: unknown };
    return typeof pkg.version === "string" ? pkg.version : "unknown";
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === "ENOENT") return "unknown";
    throw err;
  }
})();

export interface ServiceMetrics<S extends ServiceName> {
  readonly service: S;
  readonly registry: Registry;
  /** The service's metrics by key (names.ts). */
  readonly m: MetricsOf<S>;
}

function isServiceName(s: string): s is ServiceName {
  return Object.hasOwn(SERVICE_METRICS, s);
}

/**
 * Every combination of `def.values` (one object per series), `extra` adding values for labels no
 * metric lists (the served model); empty unless every label has values. A counter whose only label is
 * the model (tokens generated) so starts at 0 too, and its first increase shows in increase() and rate();
 * so does a histogram whose only label is the model (time to first token), for histogram_quantile over
 * rate(). Gauges start when first set.
 */
export function knownLabelSets(def: MetricDef, extra: { readonly [L in LabelName]?: readonly string[] } = {}): Array<Record<string, string>> {
  if (def.labels.length === 0 || (def.values === undefined && def.kind === "gauge")) return [];
  let sets: Array<Record<string, string>> = [{}];
  for (const label of def.labels) {
    const values = def.values?.[label] ?? extra[label];
    if (values === undefined || values.length === 0) return [];
    sets = sets.flatMap((s) => values.map((v) => ({ ...s, [label]: v })));
  }
  return sets;
}

function build(def: MetricDef, registry: Registry, collect: (() => number | Promise<number>) | undefined, model: string | undefined) {
  const base = { name: def.name, help: def.help, labelNames: [...def.labels], registers: [registry] };
  switch (def.kind) {
    case "counter": {
      const counter = new Counter(base);
      // Series born at 0: their first event is an increase that rate() can see.
      for (const labels of knownLabelSets(def, model === undefined ? {} : { model: [model] })) counter.inc(labels, 0);
      return counter;
    }
    case "gauge":
      return collect === undefined
        ? new Gauge(base)
        : new Gauge({
            ...base,
            async collect() {
              this.set(await collect());
            },
          });
    case "histogram": {
      const histogram = new Histogram({ ...base, buckets: [...BUCKETS[def.buckets ?? "latency"]] });
      // As counters: a first observation must be an increase of every bucket it falls in.
      for (const labels of knownLabelSets(def, model === undefined ? {} : { model: [model] })) histogram.zero(labels);
      return histogram;
    }
  }
}

export function createServiceMetrics<S extends ServiceName>(service: S, options: ServiceMetricsOptions<S> = {}): ServiceMetrics<S> {
  if (!isServiceName(service)) {
    throw new InvalidArgumentError(`metrics: unknown service "${String(service)}"; known: ${Object.keys(SERVICE_METRICS).join(", ")}`);
  }
  const registry = new Registry();
  if (options.defaultMetrics ?? true) collectDefaultMetrics({ register: registry });
  const collectors = (options.collect ?? {}) as Partial<Record<MetricKey, () => number | Promise<number>>>;
  const keys: readonly MetricKey[] = SERVICE_METRICS[service];
  for (const key of Object.keys(collectors)) {
    const def: MetricDef | undefined = keys.includes(key as MetricKey) ? METRICS[key as MetricKey] : undefined;
    if (def === undefined || def.kind !== "gauge" || def.labels.length > 0) {
      throw new InvalidArgumentError(`metrics: collect.${key} is not a label-less gauge of ${service}`);
    }
  }
  const m: Partial<Record<MetricKey, unknown>> = {};
  for (const key of keys) {
    if (key === "expertHostExpertTokens" && !options.perExpertSeries) continue;
    if (key === "buildInfo" && options.buildInfo === false) continue;
    m[key] = build(METRICS[key], registry, collectors[key], options.model);
  }
  if (options.buildInfo !== false) {
    const info = options.buildInfo ?? {};
    (m["buildInfo"] as Gauge<string>).set(
      { version: MOELA_VERSION, component: service, model: options.model ?? "", precision: info.precision ?? "none", kernels: info.kernels ?? "none" },
      1,
    );
  }
  return { service, registry, m: m as MetricsOf<S> };
}

/**
 * One decode step's MTP drafts into decode's counters: drafted[p] and accepted[p] are the drafts the step verified and
 * accepted at position p (0: a step's first draft; 1 on: the chained drafts after it). Positions with none are skipped.
 */
export function countDraftPositions(
  m: Pick<MetricsOf<"decode">, "decodeMtpDraftedTokens" | "decodeMtpAcceptedTokens">,
  drafted: readonly number[],
  accepted: readonly number[],
): void {
  drafted.forEach((n, p) => {
    if (n > 0) m.decodeMtpDraftedTokens.inc({ position: String(p) }, n);
  });
  accepted.forEach((n, p) => {
    if (n > 0) m.decodeMtpAcceptedTokens.inc({ position: String(p) }, n);
  });
}
