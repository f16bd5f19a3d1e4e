/**
 * The Grafana dashboards, as code. `npx tsx scripts/gen-dashboards.ts` writes them as JSON to
 * DASHBOARDS_DIR; test/unit/deploy/dashboards.test.ts checks the committed files equal this
 * output, every expression names only metrics of packages/metrics/src/names.ts, and every panel
 * says what a high value means; test/e2e/dashboards.test.ts has a real Prometheus evaluate every
 * expression against a running cluster.
 *
 * Why code and not hand-edited JSON: metric names come from METRICS, so renaming a metric breaks
 * the type-check here instead of silently emptying a panel, and the layout (gridPos) is computed.
 * Edit a dashboard in Grafana if you like, then port the change here; the JSON is output only.
 */
import { METRICS, type MetricKey } from "@moela/metrics";

/** Where the JSON goes (the docker-compose Grafana provisioning and the Helm chart read it from here). */
export const DASHBOARDS_DIR = "deploy/grafana/dashboards";

/** Grafana 10.4 / 11.x dashboard schema. */
export const SCHEMA_VERSION = 39;

/** Every panel and target names its data source through this variable, so the JSON imports anywhere. */
export const DATASOURCE = { type: "prometheus", uid: "${datasource}" } as const;

// ---- PromQL helpers: every metric name goes through n() so it is one of METRICS -----------------

/**
 * The dashboards' scope, from their instance, role and model variables (SCOPE_VARIABLES): every selector
 * keeps to the chosen instances and roles, and a metric with a `model` label to the chosen models.
 */
function scope(key: MetricKey): string {
  const matchers = ['instance=~"$instance"', 'role=~"$role"'];
  if ((METRICS[key].labels as readonly string[]).includes("model")) matchers.push('model=~"$model"');
  return matchers.join(", ");
}

/** A selector of a metric, or of one of a histogram's series (`_bucket`, `_sum`, `_count`), in scope, plus `matchers`. */
function n(key: MetricKey, suffix: "" | "_bucket" | "_sum" | "_count" = "", matchers = ""): string {
  const def = METRICS[key];
  if (suffix !== "" && def.kind !== "histogram") throw new Error(`${def.name} is a ${def.kind}, it has no ${suffix} series`);
  return `${def.name}${suffix}{${[scope(key), matchers].filter((m) => m !== "").join(", ")}}`;
}

const RATE = "$__rate_interval";

/** rate() of a counter (or histogram series) in scope, with optional label matchers. */
function rate(key: MetricKey, matchers = "", suffix: "" | "_bucket" | "_sum" | "_count" = ""): string {
  return `rate(${n(key, suffix, matchers)}[${RATE}])`;
}

/** The q-quantile of a histogram over all instances, optionally kept apart by `by` labels. */
function quantile(q: number, key: MetricKey, by: readonly string[] = []): string {
  return `histogram_quantile(${q}, sum by (${["le", ...by].join(", ")}) (${rate(key, "", "_bucket")}))`;
}

/** The mean of a histogram's observations over the interval. */
function mean(key: MetricKey): string {
  return `sum(${rate(key, "", "_sum")}) / sum(${rate(key, "", "_count")})`;
}

// ---- Grafana JSON model ---------------------------------------------------------------------------

export interface Target {
  readonly expr: string;
  readonly legendFormat: string;
  /** Show only the latest value (stat/gauge panels). */
  readonly instant?: boolean;
}

type PanelKind = "timeseries" | "stat" | "gauge" | "heatmap";

export interface PanelSpec {
  readonly kind: PanelKind;
  readonly title: string;
  /** What it shows and what a high value means (tests require the word "high"). */
  readonly description: string;
  readonly unit: string;
  readonly targets: readonly Target[];
  /** Grid width of 24 (height is fixed per row). */
  readonly width?: number;
  readonly height?: number;
  /** Repeat the panel once per value of this template variable. */
  readonly repeat?: string;
  /** gauge/stat: value range and a threshold that turns the panel red. */
  readonly min?: number;
  readonly max?: number;
  readonly redAbove?: number;
  /** Stack the series (parts of one whole, e.g. requests by outcome). */
  readonly stacked?: boolean;
}

interface RowSpec {
  readonly title: string;
  readonly panels: readonly PanelSpec[];
}

interface VariableSpec {
  readonly name: string;
  readonly label: string;
  /** `label_values(<metric>, <label>)`. */
  readonly query: string;
}

interface DashboardSpec {
  readonly uid: string;
  readonly title: string;
  readonly description: string;
  readonly rows: readonly RowSpec[];
  readonly variables?: readonly VariableSpec[];
}

const REF_IDS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ";

function targetJson(t: Target, i: number): Record<string, unknown> {
  return {
    datasource: DATASOURCE,
    editorMode: "code",
    expr: t.expr,
    legendFormat: t.legendFormat,
    range: !t.instant,
    instant: t.instant ?? false,
    refId: REF_IDS[i],
  };
}

function fieldDefaults(p: PanelSpec): Record<string, unknown> {
  const thresholds = {
    mode: "absolute",
    steps: [{ color: "green", value: null }, ...(p.redAbove === undefined ? [] : [{ color: "red", value: p.redAbove }])],
  };
  const base: Record<string, unknown> = { unit: p.unit, thresholds, color: { mode: p.kind === "timeseries" ? "palette-classic" : "thresholds" } };
  if (p.min !== undefined) base["min"] = p.min;
  if (p.max !== undefined) base["max"] = p.max;
  if (p.kind === "timeseries") {
    base["custom"] = {
      drawStyle: "line",
      lineWidth: 1,
      fillOpacity: p.stacked ? 30 : 10,
      showPoints: "never",
      spanNulls: false,
      stacking: { mode: p.stacked ? "normal" : "none", group: "A" },
      axisSoftMin: 0,
    };
  }
  if (p.kind === "heatmap") {
    base["custom"] = { hideFrom: { legend: false, tooltip: false, viz: false }, scaleDistribution: { type: "linear" } };
  }
  return base;
}

function panelOptions(p: PanelSpec): Record<string, unknown> {
  switch (p.kind) {
    case "timeseries":
      return {
        legend: { displayMode: "list", placement: "bottom", showLegend: true, calcs: [] },
        tooltip: { mode: "multi", sort: "desc" },
      };
    case "stat":
      return {
        reduceOptions: { calcs: ["lastNotNull"], fields: "", values: false },
        colorMode: "value",
        graphMode: "area",
        justifyMode: "auto",
        orientation: "auto",
        textMode: "auto",
      };
    case "gauge":
      return {
        reduceOptions: { calcs: ["lastNotNull"], fields: "", values: false },
        showThresholdLabels: false,
        showThresholdMarkers: true,
        orientation: "auto",
      };
    case "heatmap":
      // Each series is one row (a layer, or an expert of one layer): no bucket maths (calculate
      // false) and no `le` de-accumulation (targets are format time_series, not heatmap).
      return {
        calculate: false,
        cellGap: 1,
        color: { mode: "scheme", scheme: "Oranges", steps: 64, exponent: 0.5, fill: "dark-orange", reverse: false, scale: "exponential" },
        rowsFrame: { layout: "auto" },
        yAxis: { axisPlacement: "left", reverse: false },
        legend: { show: true },
        tooltip: { mode: "single", yHistogram: false, showColorScale: true },
        showValue: "never",
        exemplars: { color: "rgba(255,0,255,0.7)" },
      };
  }
}

/** Lay rows out top to bottom; panels fill each row left to right, wrapping at 24 columns. */
function buildPanels(rows: readonly RowSpec[]): Record<string, unknown>[] {
  const out: Record<string, unknown>[] = [];
  let id = 1;
  let y = 0;
  for (const row of rows) {
    out.push({ id: id++, type: "row", title: row.title, collapsed: false, gridPos: { h: 1, w: 24, x: 0, y }, panels: [] });
    y += 1;
    let x = 0;
    let lineHeight = 0;
    for (const p of row.panels) {
      const w = p.width ?? 12;
      const h = p.height ?? 8;
      if (x + w > 24) {
        x = 0;
        y += lineHeight;
        lineHeight = 0;
      }
      const panel: Record<string, unknown> = {
        id: id++,
        type: p.kind,
        title: p.title,
        description: p.description,
        datasource: DATASOURCE,
        gridPos: { h, w, x, y },
        fieldConfig: { defaults: fieldDefaults(p), overrides: [] },
        options: panelOptions(p),
        targets: p.targets.map(targetJson),
      };
      if (p.repeat !== undefined) {
        panel["repeat"] = p.repeat;
        panel["repeatDirection"] = "h";
        panel["maxPerRow"] = 4;
      }
      out.push(panel);
      x += w;
      lineHeight = Math.max(lineHeight, h);
    }
    y += lineHeight;
  }
  return out;
}

function variableJson(v: VariableSpec): Record<string, unknown> {
  return {
    name: v.name,
    label: v.label,
    type: "query",
    datasource: DATASOURCE,
    definition: v.query,
    query: { query: v.query, refId: "PrometheusVariableQueryEditor-VariableQuery" },
    refresh: 2,
    sort: 3,
    multi: true,
    includeAll: true,
    current: {},
    options: [],
    hide: 0,
    regex: "",
  };
}

export type Dashboard = Record<string, unknown>;

/** Every dashboard's scope variables (scope() uses them), read from moela_build_info, which every process exports. */
const SCOPE_VARIABLES: readonly VariableSpec[] = [
  { name: "role", label: "Role", query: `label_values(${METRICS.buildInfo.name}, role)` },
  { name: "instance", label: "Instance", query: `label_values(${METRICS.buildInfo.name}, instance)` },
  { name: "model", label: "Model", query: `label_values(${METRICS.buildInfo.name}, model)` },
];

function dashboard(spec: DashboardSpec): Dashboard {
  return {
    uid: spec.uid,
    title: spec.title,
    description: spec.description,
    tags: ["moela"],
    editable: true,
    graphTooltip: 1,
    refresh: "10s",
    schemaVersion: SCHEMA_VERSION,
    version: 1,
    time: { from: "now-1h", to: "now" },
    timepicker: {},
    timezone: "browser",
    fiscalYearStartMonth: 0,
    liveNow: false,
    weekStart: "",
    annotations: {
      list: [
        {
          builtIn: 1,
          datasource: { type: "grafana", uid: "-- Grafana --" },
          enable: true,
          hide: true,
          iconColor: "rgba(0, 211, 255, 1)",
          name: "Annotations & Alerts",
          type: "dashboard",
        },
      ],
    },
    links: [{ type: "dashboards", tags: ["moela"], asDropdown: true, title: "moela dashboards", includeVars: true, keepTime: true }],
    templating: {
      list: [
        {
          name: "datasource",
          label: "Data source",
          type: "datasource",
          query: "prometheus",
          current: {},
          hide: 0,
          includeAll: false,
          multi: false,
          options: [],
          refresh: 1,
          regex: "",
        },
        ...[...SCOPE_VARIABLES, ...(spec.variables ?? [])].map(variableJson),
      ],
    },
    panels: buildPanels(spec.rows),
  };
}

/** Router outcomes that are the servers' failures (not rejected: the client's 4xx; not cancelled: the client left). */
export const SERVER_FAILURES = 'outcome=~"error|timeout"';

/** P50 and P99 of one histogram as two targets. */
function p50p99(key: MetricKey, what: string): Target[] {
  return [
    { expr: quantile(0.5, key), legendFormat: `P50 ${what}` },
    { expr: quantile(0.99, key), legendFormat: `P99 ${what}` },
  ];
}

// ---- the dashboards -------------------------------------------------------------------------------

const overview = dashboard({
  uid: "moela-overview",
  title: "moela / Service overview",
  description: "What clients see: request throughput by outcome, token throughput, latency percentiles and errors, measured at the router.",
  rows: [
    {
      title: "Traffic",
      panels: [
        {
          kind: "timeseries",
          title: "Requests per second by outcome",
          description:
            "Generation requests finished per second at the router, stacked by outcome (ok, error, cancelled, rejected, timeout). High ok is throughput; a high share of anything else means requests fail, are shed by admission control or run out of time: see Errors below.",
          unit: "reqps",
          stacked: true,
          targets: [{ expr: `sum by (outcome) (${rate("routerRequests")})`, legendFormat: "{{outcome}}" }],
        },
        {
          kind: "timeseries",
          title: "Requests per second by API",
          description:
            "Finished requests per second by the API they came in on (openai HTTP or grpc Generate). High is busy; compare with the outcome panel to see which API carries the failures.",
          unit: "reqps",
          stacked: true,
          targets: [{ expr: `sum by (api) (${rate("routerRequests")})`, legendFormat: "{{api}}" }],
        },
        {
          kind: "timeseries",
          title: "Tokens per second",
          description:
            "Prompt tokens admitted and tokens generated per second over all requests. High generated tokens/s is decode throughput; high prompt tokens/s with flat generation means prefill-heavy traffic (long prompts, short answers).",
          unit: "short",
          targets: [
            { expr: `sum(${rate("routerPromptTokens")})`, legendFormat: "prompt" },
            { expr: `sum(${rate("routerGenerationTokens")})`, legendFormat: "generated" },
          ],
        },
        {
          kind: "timeseries",
          title: "Requests in flight",
          description:
            "Requests admitted and not yet finished. High means many concurrent generations (long outputs or a slow backend); rising while throughput stays flat means the cluster is saturated and queues grow.",
          unit: "short",
          targets: [{ expr: `sum(${n("routerRequestsInFlight")})`, legendFormat: "in flight" }],
        },
      ],
    },
    {
      title: "Latency",
      panels: [
        {
          kind: "timeseries",
          title: "Time to first token (P50, P99)",
          description:
            "From request arrival to the first generated token reaching the client stream: queue wait + prefill + KV transfer + first decode hand-off. High means a long prefill queue, long prompts or slow KV transfer: check the Disaggregation dashboard.",
          unit: "s",
          width: 8,
          targets: p50p99("routerTimeToFirstToken", "TTFT"),
        },
        {
          kind: "timeseries",
          title: "Inter-token latency (P50, P99)",
          description:
            "Time between consecutive tokens of one request (TPOT as the client sees it). High means slow decode steps: a large decode batch, slow expert dispatch (MoE dashboard) or low MTP acceptance (MTP dashboard).",
          unit: "s",
          width: 8,
          targets: p50p99("routerInterTokenLatency", "ITL"),
        },
        {
          kind: "timeseries",
          title: "End-to-end latency (P50, P99)",
          description:
            "From request arrival to its last token or error. High with normal TTFT and ITL means long outputs; high with high TTFT means waiting before generation started.",
          unit: "s",
          width: 8,
          targets: p50p99("routerE2eLatency", "end-to-end"),
        },
      ],
    },
    {
      title: "Requests (lengths, finish reasons, where the time goes)",
      panels: [
        {
          kind: "timeseries",
          title: "Generations per second by finish reason",
          description:
            "Generations (one per choice of a request) ended per second, stacked by finish reason: stop (EOS, a stop token or string), length (max_tokens), abort (the client left or cancelled), timeout, error. High length means outputs are cut at max_tokens; high abort means clients give up; high timeout or error is the servers failing.",
          unit: "reqps",
          stacked: true,
          targets: [{ expr: `sum by (finish_reason) (${rate("routerGenerations")})`, legendFormat: "{{finish_reason}}" }],
        },
        {
          kind: "timeseries",
          title: "Prompt and generation length (P50, P99)",
          description:
            "Tokens in the prompts and in the outputs of finished generations. High prompt length means prefill-heavy traffic (long TTFT, much KV transfer); high generation length means decode-heavy traffic that holds KV blocks longer.",
          unit: "short",
          targets: [...p50p99("routerRequestPromptTokens", "prompt"), ...p50p99("routerRequestGenerationTokens", "generated")],
        },
        {
          kind: "timeseries",
          title: "Per-request queue, prefill and decode time (P50)",
          description:
            "Median time a generation waits in the prefill queue, then from its prefill starting to its first token (prefill, KV transfer, first hand-off), then from its first token to its last. High queue time means prefill is short of capacity; high prefill time long prompts or slow transfer; high decode time long outputs or slow steps.",
          unit: "s",
          width: 8,
          targets: [
            { expr: quantile(0.5, "routerQueueWait"), legendFormat: "queue" },
            { expr: quantile(0.5, "routerRequestPrefill"), legendFormat: "prefill" },
            { expr: quantile(0.5, "routerRequestDecode"), legendFormat: "decode" },
          ],
        },
        {
          kind: "timeseries",
          title: "Per-request queue, prefill and decode time (P99)",
          description:
            "The same three parts at the 99th percentile: the slow tail. High here but normal at P50 means some requests wait behind long prompts or land on a busy instance.",
          unit: "s",
          width: 8,
          targets: [
            { expr: quantile(0.99, "routerQueueWait"), legendFormat: "queue" },
            { expr: quantile(0.99, "routerRequestPrefill"), legendFormat: "prefill" },
            { expr: quantile(0.99, "routerRequestDecode"), legendFormat: "decode" },
          ],
        },
        {
          kind: "stat",
          title: "Processes by build and configuration",
          description:
            "Processes per role, version, model, precision profile and kernel set (moela_build_info). More than one version per role is a rollout in progress; a high count of an unexpected precision or kernels value is a misconfigured deployment.",
          unit: "short",
          width: 8,
          targets: [
            {
              expr: `count by (role, version, model, precision, kernels) (${n("buildInfo")})`,
              legendFormat: "{{role}} {{version}} {{model}} {{precision}} {{kernels}}",
              instant: true,
            },
          ],
        },
      ],
    },
    {
      title: "Errors",
      panels: [
        {
          kind: "stat",
          title: "Server failure ratio",
          description:
            "Share of finished requests the servers failed (outcome error or timeout) over the interval. Client mistakes (4xx: rejected) and clients that went away (cancelled) are not failures; the panel beside shows them. High means the cluster is failing requests; 0 is healthy.",
          unit: "percentunit",
          width: 6,
          min: 0,
          max: 1,
          redAbove: 0.05,
          targets: [
            {
              // Every outcome's series exists from the start at 0 (names.ts `values`), so this is 0, not "no data", when all is well.
              expr: `sum(${rate("routerRequests", SERVER_FAILURES)}) / sum(${rate("routerRequests")})`,
              legendFormat: "failed",
            },
          ],
        },
        {
          kind: "timeseries",
          title: "Failed requests per second by outcome",
          description:
            "Requests that did not finish ok, by outcome: error (a service failed), rejected (bad request or queue full), timeout (deadline), cancelled (the client went away). High error or timeout rates point at the backend; high rejected at admission control or bad clients.",
          unit: "reqps",
          width: 9,
          targets: [{ expr: `sum by (outcome) (${rate("routerRequests", 'outcome!="ok"')})`, legendFormat: "{{outcome}}" }],
        },
        {
          kind: "timeseries",
          title: "gRPC calls ending in error, by method and code",
          description:
            "Calls served with a status other than OK, per method and code, across every service. High UNAVAILABLE means peers are down or draining; DEADLINE_EXCEEDED means slow work; CANCELLED usually follows clients that hang up.",
          unit: "short",
          width: 9,
          targets: [{ expr: `sum by (method, code) (${rate("rpcServerHandled", 'code!="OK"')})`, legendFormat: "{{method}} {{code}}" }],
        },
        {
          kind: "timeseries",
          title: "Retries and migrations by reason",
          description:
            "Requests the router retried or moved to another instance, by reason (prefill_failed, decode_unavailable, decode_failed, kv_transfer_failed). High means instances fail often enough to cost latency; 0 is healthy.",
          unit: "short",
          targets: [{ expr: `sum by (reason) (${rate("routerRetries")})`, legendFormat: "{{reason}}" }],
        },
        {
          kind: "timeseries",
          title: "gRPC server time P99 by method",
          description:
            "99th percentile of a served call's duration, per method (streams count until they close, so Generate and Decode.Stream span whole requests). High on ExpertHost.Dispatch or KvTransfer.Push means the hot path is slow.",
          unit: "s",
          targets: [{ expr: quantile(0.99, "rpcServerHandling", ["method"]), legendFormat: "{{method}}" }],
        },
      ],
    },
  ],
});

const disaggregation = dashboard({
  uid: "moela-disaggregation",
  title: "moela / Disaggregation",
  description: "The prefill queue, prefill batches, latent KV transfer from prefill to decode, and the decode batch and its paged KV cache.",
  rows: [
    {
      title: "Prefill queue",
      panels: [
        {
          kind: "timeseries",
          title: "Queue depth",
          description:
            "Prefill jobs waiting in the BullMQ queue. High (and growing) means prefill capacity is short of the arrival rate: add prefill instances or expect TTFT to rise.",
          unit: "short",
          targets: [{ expr: `sum(${n("routerQueueDepth")})`, legendFormat: "waiting jobs" }],
        },
        {
          kind: "timeseries",
          title: "Queue wait (P50, P99)",
          description:
            "Time a prefill job waited before a worker took it. High means jobs pile up behind busy prefill workers; it adds directly to time to first token.",
          unit: "s",
          targets: p50p99("routerQueueWait", "queue wait"),
        },
      ],
    },
    {
      title: "Prefill",
      panels: [
        {
          kind: "timeseries",
          title: "Prefill batch size",
          description:
            "Sequences per prefill forward pass (P50, P99, mean). High means prefill batches many prompts together (good for throughput, longer per-pass time); 1 means prompts run one at a time.",
          unit: "short",
          width: 8,
          targets: [...p50p99("prefillBatchSize", "sequences"), { expr: mean("prefillBatchSize"), legendFormat: "mean sequences" }],
        },
        {
          kind: "timeseries",
          title: "Prefill batch tokens",
          description:
            "Prompt tokens computed per prefill forward pass (P50, P99, mean). High means long prompts or large chunks; very high per-pass tokens lengthen each pass and delay other prompts.",
          unit: "short",
          width: 8,
          targets: [...p50p99("prefillBatchTokens", "tokens"), { expr: mean("prefillBatchTokens"), legendFormat: "mean tokens" }],
        },
        {
          kind: "timeseries",
          title: "Prefill tokens per second",
          description:
            "Prompt tokens computed per second by all prefill instances (prefix-cache hits excluded). High is prefill throughput; if it is flat while the queue grows, prefill is the bottleneck.",
          unit: "short",
          width: 8,
          targets: [{ expr: `sum(${rate("prefillTokens")})`, legendFormat: "prompt tokens/s" }],
        },
        {
          kind: "timeseries",
          title: "Prefill forward time and batcher wait (P50, P99)",
          description:
            "Time of one prefill forward pass over a batch of chunks, and per job the time its prompt waited in prefill's batcher for its batch's turn. A high forward time means large batches, long chunks or slow expert dispatch from prefill; a high wait means prefill is saturated. Both add to time to first token.",
          unit: "s",
          width: 8,
          targets: [...p50p99("prefillForward", "forward"), ...p50p99("prefillBatchWait", "batcher wait")],
        },
        {
          kind: "timeseries",
          title: "Prefill jobs by outcome",
          description:
            "Prefill jobs finished per second by outcome. High ok is prefill throughput; high error or cancelled means prompts fail or their clients leave before prefill ends.",
          unit: "short",
          width: 8,
          stacked: true,
          targets: [{ expr: `sum by (outcome) (${rate("prefillJobs")})`, legendFormat: "{{outcome}}" }],
        },
        {
          kind: "timeseries",
          title: "Prefix cache hit ratio",
          description:
            "Share of looked-up prompt tokens whose KV was already cached. High saves prefill compute (shared system prompts); empty or NaN means no lookups happened in the interval.",
          unit: "percentunit",
          width: 8,
          targets: [{ expr: `sum(${rate("prefillPrefixCacheHits")}) / sum(${rate("prefillPrefixCacheQueries")})`, legendFormat: "hit ratio" }],
        },
      ],
    },
    {
      title: "KV transfer (prefill -> decode)",
      panels: [
        {
          kind: "timeseries",
          title: "KV transfer bytes per second",
          description:
            "Latent KV bytes per second sent by prefill and received by decode. High is normal under prompt-heavy load (576 values per token per layer in V3); sent far above received means transfers are lost or retried.",
          unit: "Bps",
          width: 8,
          targets: [
            { expr: `sum(${rate("prefillKvTransferBytes")})`, legendFormat: "sent by prefill" },
            { expr: `sum(${rate("decodeKvReceivedBytes")})`, legendFormat: "received by decode" },
          ],
        },
        {
          kind: "timeseries",
          title: "KV transfer time per request (P50, P99)",
          description:
            "Per request: at prefill, transfer begin (its batch's turn) to the last layer acknowledged; at decode, transfer begin to the sequence's admission. High means a slow link or a decode instance slow to take rows; it adds to time to first token.",
          unit: "s",
          width: 8,
          targets: [
            ...p50p99("prefillKvTransferDuration", "sent (prefill)"),
            { expr: quantile(0.99, "decodeKvTransferDuration"), legendFormat: "P99 received (decode)" },
          ],
        },
        {
          kind: "timeseries",
          title: "KV transfer failures and reclaims",
          description:
            "Transfers that failed at the sender, by reason, and KV blocks the decode side reclaimed from failed or abandoned transfers, by reason. High means requests are being retried and decode memory is churned; 0 is healthy.",
          unit: "short",
          width: 8,
          targets: [
            { expr: `sum by (reason) (${rate("prefillKvTransferFailures")})`, legendFormat: "failed: {{reason}}" },
            { expr: `sum by (reason) (${rate("decodeKvReclaimedBlocks")})`, legendFormat: "blocks reclaimed: {{reason}}" },
          ],
        },
      ],
    },
    {
      title: "Decode",
      panels: [
        {
          kind: "timeseries",
          title: "Running and waiting sequences",
          description:
            "Sequences in the running decode batch and sequences whose KV arrived but wait for a batch slot or blocks, per decode instance. High running is a busy, efficient batch; high waiting means decode is full: KV blocks or batch slots are the limit.",
          unit: "short",
          targets: [
            { expr: `sum by (instance) (${n("decodeRunningSequences")})`, legendFormat: "running {{instance}}" },
            { expr: `sum by (instance) (${n("decodeWaitingSequences")})`, legendFormat: "waiting {{instance}}" },
          ],
        },
        {
          kind: "timeseries",
          title: "KV blocks used vs capacity",
          description:
            "Paged latent KV cache blocks in use and in the pool, per decode instance, and blocks held by stalled transfers. Used close to capacity (high) means new sequences will wait; stranded blocks that stay high mean senders died mid-transfer.",
          unit: "short",
          targets: [
            { expr: `sum by (instance) (${n("decodeKvBlocksUsed")})`, legendFormat: "used {{instance}}" },
            { expr: `sum by (instance) (${n("decodeKvBlocksCapacity")})`, legendFormat: "capacity {{instance}}" },
            { expr: `sum by (instance) (${n("decodeKvStrandedBlocks")})`, legendFormat: "stranded {{instance}}" },
          ],
        },
        {
          kind: "gauge",
          title: "KV cache usage (fullest decode instance)",
          description:
            "The largest KV usage ratio (blocks in use over the pool) of any decode instance. High (above 90%) means that instance is about to stop admitting sequences; add decode instances or shorten max_tokens.",
          unit: "percentunit",
          width: 6,
          min: 0,
          max: 1,
          redAbove: 0.9,
          targets: [{ expr: `max(${n("decodeKvUsage")})`, legendFormat: "used", instant: true }],
        },
        {
          kind: "timeseries",
          title: "Decode step time (P50, P99)",
          description:
            "Time of one decode step over the whole running batch (one token per sequence plus MTP drafts). High means a large batch or slow expert dispatch; it sets the inter-token latency.",
          unit: "s",
          width: 9,
          targets: p50p99("decodeStep", "step"),
        },
        {
          kind: "timeseries",
          title: "Decode tokens per second",
          description:
            "Tokens emitted per second per decode instance, accepted MTP drafts included. High is decode throughput; uneven instances mean the router's placement is unbalanced.",
          unit: "short",
          width: 9,
          targets: [{ expr: `sum by (instance) (${rate("decodeGeneratedTokens")})`, legendFormat: "{{instance}}" }],
        },
        {
          kind: "timeseries",
          title: "KV cache usage per decode instance",
          description:
            "Fraction of each decode instance's KV blocks in use (0 to 1). High (near 1) means that instance is full and new sequences wait; one instance much higher than the others means unbalanced placement.",
          unit: "percentunit",
          width: 24,
          targets: [{ expr: `max by (instance) (${n("decodeKvUsage")})`, legendFormat: "{{instance}}" }],
        },
      ],
    },
  ],
});

const moe = dashboard({
  uid: "moela-moe",
  title: "moela / MoE experts",
  description:
    "Routed-expert load over expert-hosts: per layer and per expert, imbalance, hosts reached per token, dispatch and combine traffic by codec, expert compute time.",
  variables: [{ name: "layer", label: "MoE layer", query: `label_values(${METRICS.expertHostLayerTokens.name}, layer)` }],
  rows: [
    {
      title: "Expert load",
      panels: [
        {
          kind: "heatmap",
          title: "Load per MoE layer (token-expert pairs/s)",
          description:
            "Token-expert pairs computed per second for each MoE layer, all hosts together (always exported). A high (hot) row is a layer doing more expert work; rows should be equal, since every token visits every MoE layer.",
          unit: "short",
          width: 24,
          targets: [{ expr: `sum by (layer) (${rate("expertHostLayerTokens")})`, legendFormat: "{{layer}}" }],
        },
        {
          kind: "timeseries",
          title: "Expert imbalance (max / mean expert load) per layer",
          description:
            "Per layer, the busiest expert's token rate over the mean of the experts that got tokens (needs --per-expert-metrics). 1 is perfect balance; high (say above 2) means hot experts, and the hosts holding them make the whole layer wait.",
          unit: "short",
          targets: [
            {
              expr: `max by (layer) (sum by (layer, expert) (${rate("expertHostExpertTokens")})) / avg by (layer) (sum by (layer, expert) (${rate("expertHostExpertTokens")}))`,
              legendFormat: "layer {{layer}}",
            },
          ],
        },
        {
          kind: "timeseries",
          title: "Host imbalance (max / mean host load) per layer",
          description:
            "Per layer, the busiest expert-host's token-expert rate over the mean across hosts (always exported). 1 is even; high means one shard does most of the layer's work and the dispatch waits on it.",
          unit: "short",
          targets: [
            {
              expr: `max by (layer) (sum by (layer, instance) (${rate("expertHostLayerTokens")})) / avg by (layer) (sum by (layer, instance) (${rate("expertHostLayerTokens")}))`,
              legendFormat: "layer {{layer}}",
            },
          ],
        },
      ],
    },
    {
      title: "Expert load per layer (expert-hosts with --per-expert-metrics)",
      panels: [
        {
          kind: "heatmap",
          title: "Expert load, layer $layer (tokens/s per expert)",
          description:
            "Tokens per second routed to each expert of one layer (needs expert-hosts started with --per-expert-metrics). A high (hot) cell is an overloaded expert: the host holding it sets the layer's pace; auxiliary-loss-free balancing should keep the rows even.",
          unit: "short",
          width: 6,
          repeat: "layer",
          targets: [{ expr: `sum by (expert) (${rate("expertHostExpertTokens", 'layer=~"$layer"')})`, legendFormat: "{{expert}}" }],
        },
      ],
    },
    {
      title: "Dispatch and combine",
      panels: [
        {
          kind: "timeseries",
          title: "Expert-hosts reached per token",
          description:
            "Distinct expert-hosts one token's routed experts live on, per MoE layer (P50, P99, mean). High means each token's activation crosses the network more times; node-limited routing bounds it by topk_group.",
          unit: "short",
          width: 8,
          targets: [...p50p99("moeDispatchHostsReached", "hosts"), { expr: mean("moeDispatchHostsReached"), legendFormat: "mean hosts" }],
        },
        {
          kind: "timeseries",
          title: "Dispatch bytes per second by codec",
          description:
            "Activation bytes per second sent by prefill and decode (out) and received by expert-hosts (in), by codec (f32, bf16, fp8-tile, logfmt8). High is heavy MoE traffic; out above in means calls are lost; fp8-tile should be about a quarter of f32.",
          unit: "Bps",
          width: 8,
          targets: [
            { expr: `sum by (codec) (${rate("moeDispatchSentBytes")})`, legendFormat: "out (dispatchers) {{codec}}" },
            { expr: `sum by (codec) (${rate("expertHostReceivedBytes")})`, legendFormat: "in (expert-hosts) {{codec}}" },
          ],
        },
        {
          kind: "timeseries",
          title: "Combine bytes per second by codec",
          description:
            "Partial-sum bytes per second sent back by expert-hosts (out) and received by prefill and decode (in), by codec. High is heavy MoE traffic; bf16 combine halves f32.",
          unit: "Bps",
          width: 8,
          targets: [
            { expr: `sum by (codec) (${rate("expertHostSentBytes")})`, legendFormat: "out (expert-hosts) {{codec}}" },
            { expr: `sum by (codec) (${rate("moeCombineReceivedBytes")})`, legendFormat: "in (dispatchers) {{codec}}" },
          ],
        },
        {
          kind: "timeseries",
          title: "Dispatch round trip per layer (P50, P99)",
          description:
            "One MoE layer's dispatch and combine over all hosts, seen by the caller. High compared with expert compute time means the network or serialisation, not the experts, is the cost.",
          unit: "s",
          width: 8,
          targets: p50p99("moeDispatchRoundTrip", "round trip"),
        },
        {
          kind: "timeseries",
          title: "Expert compute time per call (P50, P99)",
          description:
            "Time an expert-host spends decoding a dispatch, running its experts and summing, per call, transport excluded. High means hosts are compute-bound: large batches, hot experts or too few hosts.",
          unit: "s",
          width: 8,
          targets: p50p99("expertHostCompute", "compute"),
        },
        {
          kind: "timeseries",
          title: "Tokens per dispatch call",
          description:
            "Rows in one dispatch call at the expert-hosts (P50, P99, mean). High means well-batched calls (decode batches, prefill chunks); 1 means calls carry single tokens and per-call overhead dominates.",
          unit: "short",
          width: 8,
          targets: [...p50p99("expertHostBatchTokens", "tokens"), { expr: mean("expertHostBatchTokens"), legendFormat: "mean tokens" }],
        },
        {
          kind: "timeseries",
          title: "Where forward time goes, by phase",
          description:
            "Seconds per second prefill and decode spend in each phase of their forward passes (attention, gate, shared expert, routed experts computed locally or waited for, dense MLP, output head), plus the dispatcher's encode and combine. A high routed_wait next to low expert compute means the wire or scheduling is the cost (scripts/bench/cluster.ts breaks it down per layer).",
          unit: "s",
          width: 12,
          targets: [
            { expr: `sum by (phase) (${rate("forwardPhase")})`, legendFormat: "{{phase}}" },
            { expr: `sum by (phase) (${rate("moeDispatchPhase")})`, legendFormat: "dispatch {{phase}}" },
          ],
        },
        {
          kind: "timeseries",
          title: "Expert-host time per dispatch: handling vs compute",
          description:
            "Mean time from a dispatch's arrival at an expert-host to its reply (handling), and the part of it spent waiting for and computing the experts (compute). Handling high above compute means decoding, encoding or the event loop cost more than the experts.",
          unit: "s",
          width: 12,
          targets: [
            { expr: mean("expertHostDispatch"), legendFormat: "handling" },
            { expr: mean("expertHostCompute"), legendFormat: "compute" },
          ],
        },
        {
          kind: "timeseries",
          title: "Dispatch calls per second: shared memory vs gRPC",
          description:
            "Dispatch calls per second arriving at the expert-hosts, all of them and those that came through shared memory from a caller on the same machine. High all with low shared memory on one machine means callers started with --shared-memory off or a failed attach (their logs say which); across machines all is gRPC.",
          unit: "ops",
          width: 12,
          targets: [
            { expr: `sum(${rate("expertHostDispatch", "", "_count")})`, legendFormat: "all" },
            { expr: `sum(${rate("expertHostSharedMemoryDispatches")})`, legendFormat: "shared memory" },
          ],
        },
        {
          kind: "timeseries",
          title: "Shared memory: how long messages waited to be read (mean, P99)",
          description:
            "From a dispatch's publication in shared memory to an expert-host reading it (request), and from a host's answer to prefill or decode reading it (answer). Tens of microseconds is a process waking on an idle core. High (hundreds of microseconds) means the reader waited for a core or finished other work first, as when decode and its hosts share too few cores.",
          unit: "s",
          width: 24,
          targets: [
            { expr: mean("expertHostSharedMemoryRequestWait"), legendFormat: "request, mean" },
            { expr: quantile(0.99, "expertHostSharedMemoryRequestWait"), legendFormat: "P99 request" },
            { expr: mean("moeDispatchSharedMemoryAnswerWait"), legendFormat: "answer, mean" },
            { expr: quantile(0.99, "moeDispatchSharedMemoryAnswerWait"), legendFormat: "P99 answer" },
          ],
        },
      ],
    },
  ],
});

const mtp = dashboard({
  uid: "moela-mtp",
  title: "moela / MTP speculation",
  description: "Multi-token prediction: tokens drafted by the MTP block, how many the main model accepted, and what that buys per decode step.",
  rows: [
    {
      title: "Acceptance",
      panels: [
        {
          kind: "stat",
          title: "MTP acceptance rate",
          description:
            "Accepted drafts over drafted tokens, all decode instances, over the interval. High is good: the paper reports 80-90% for DeepSeek-V3, and each accepted draft is a token without a step of its own; low means the MTP block does not fit the traffic.",
          unit: "percentunit",
          width: 6,
          min: 0,
          max: 1,
          targets: [{ expr: `sum(${rate("decodeMtpAcceptedTokens")}) / sum(${rate("decodeMtpDraftedTokens")})`, legendFormat: "accepted / drafted" }],
        },
        {
          kind: "timeseries",
          title: "Drafted vs accepted tokens per second",
          description:
            "Draft tokens proposed by the MTP block and drafts the main model confirmed, per second. High accepted close to drafted is speculation paying off; a high drafted rate with low accepted wastes verification work.",
          unit: "short",
          width: 18,
          targets: [
            { expr: `sum(${rate("decodeMtpDraftedTokens")})`, legendFormat: "drafted" },
            { expr: `sum(${rate("decodeMtpAcceptedTokens")})`, legendFormat: "accepted" },
          ],
        },
        {
          kind: "timeseries",
          title: "Acceptance rate per decode instance",
          description:
            "Accepted over drafted tokens per decode instance. High (towards 1) is good; one instance much lower than the others points at its traffic mix (sampling temperature, prompts).",
          unit: "percentunit",
          targets: [
            {
              expr: `sum by (instance) (${rate("decodeMtpAcceptedTokens")}) / sum by (instance) (${rate("decodeMtpDraftedTokens")})`,
              legendFormat: "{{instance}}",
            },
          ],
        },
        {
          kind: "timeseries",
          title: "Acceptance rate by draft position",
          description:
            "Accepted over drafted tokens for each draft position after the sampled token (vLLM's per-position acceptance; position 0 is a step's first draft, 1-3 the chained drafts of --speculative-tokens, each counted where it was verified). High is good; a position with low acceptance costs verification work for few tokens.",
          unit: "percentunit",
          targets: [
            {
              expr: `sum by (position) (${rate("decodeMtpAcceptedTokens")}) / sum by (position) (${rate("decodeMtpDraftedTokens")})`,
              legendFormat: "position {{position}}",
            },
          ],
        },
        {
          kind: "timeseries",
          title: "Tokens per decode step",
          description:
            "Tokens emitted per decode step, summed over the batch (a step makes one token per running sequence, plus its accepted drafts). High means large batches and accepted drafts: more tokens for each pass over the weights.",
          unit: "short",
          targets: [{ expr: `sum(${rate("decodeGeneratedTokens")}) / sum(${rate("decodeStep", "", "_count")})`, legendFormat: "tokens per step" }],
        },
      ],
    },
  ],
});

/** File name -> dashboard JSON model. */
export function buildDashboards(): Record<string, Dashboard> {
  return {
    "moela-overview.json": overview,
    "moela-disaggregation.json": disaggregation,
    "moela-moe.json": moe,
    "moela-mtp.json": mtp,
  };
}

/** A dashboard file's exact text (2-space JSON and a final newline). */
export function dashboardText(d: Dashboard): string {
  return `${JSON.stringify(d, null, 2)}\n`;
}
