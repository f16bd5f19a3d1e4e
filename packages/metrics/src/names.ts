/**
 * Every metric and label name of the platform, in one place. Names are
 * moela_<component>_<what>[_<unit>]: counters end in _total, times are _seconds, sizes _bytes
 * (base units only), and nothing but a counter ends in _total (so a capacity gauge is
 * ..._capacity, not ..._total). test/unit/metrics/names.test.ts enforces these rules.
 *
 * Each entry: `name`, `kind`, `unit` (what one unit of the value is), `labels`, `help` (the
 * # HELP line), `buckets` (a bucket set of buckets.ts) for histograms, and `values` where every
 * value of every label is known in advance (see MetricDef.values). The comment above an
 * entry says who records it and when. Which service exports which metric is in registry.ts.
 *
 * The `model` label (the served model's name, as clients name it in requests) is on the request-level
 * metrics, as vLLM's model_name: every router request, latency and token metric (requests, time to first
 * token, inter-token, end-to-end, queue, prefill and decode times, prompt and generation tokens and
 * lengths, finish reasons) and the token throughput of prefill (prefillTokens) and decode
 * (decodeGeneratedTokens). The router's value is --served-model-name (default the model folder's name);
 * prefill and decode, which have no such flag, use the model folder's name, the router's default. It is not
 * on per-step, per-layer, KV or RPC metrics: one process serves one model, so those would only repeat it.
 * moela_build_info carries it too, so one join gives any series its model.
 */

/** Every label name. Values stay low-cardinality except layer/expert (see expertHostExpertTokens). */
export const LABEL = {
  /** How a request, job or call ended: ok | error | cancelled | rejected | timeout. */
  outcome: "outcome",
  /** The API a request came in on: openai | grpc. */
  api: "api",
  /** Full gRPC method path, /moela.v1.Service/Method. */
  method: "method",
  /** gRPC status code name: OK, UNAVAILABLE, DEADLINE_EXCEEDED, ... */
  code: "code",
  /** Dispatch/combine codec name (moe-dispatch DISPATCH_CODECS): f32 | bf16 | fp8-tile | logfmt8. */
  codec: "codec",
  /** Model layer index of an MoE layer. */
  layer: "layer",
  /** Global routed-expert id within the layer. */
  expert: "expert",
  /** Why something happened (a retry, a failure, a reclaim); the values are listed on each metric. */
  reason: "reason",
  /** Part of a forward pass or of a dispatch (the cluster's time breakdown); values listed on each metric. */
  phase: "phase",
  /** The served model's name (router: --served-model-name; prefill, decode: the model folder's name). See the file comment. */
  model: "model",
  /** Why a generation ended: stop | length | abort (the client went away or cancelled) | timeout | error. */
  finish_reason: "finish_reason",
  /** 0-based position of a speculative (MTP) draft token after the sampled one; MTP drafts one today: 0. */
  position: "position",
  /** moela_build_info: the platform version (the repository's package.json). */
  version: "version",
  /**
   * moela_build_info: router | prefill | decode | expert-host. Not `role`, which the scrape configs attach as
   * a target label (deploy/prometheus, the chart's ServiceMonitor), nor `service`, which the Prometheus
   * Operator attaches: Prometheus would rename a clashing exposed label to exported_<name>.
   */
  component: "component",
  /** moela_build_info: the precision profile (exact | paper | ...); "none" where the service computes nothing. */
  precision: "precision",
  /** moela_build_info: the kernel set (fast | portable | reference); "none" where the service computes nothing. */
  kernels: "kernels",
} as const;

export type LabelName = (typeof LABEL)[keyof typeof LABEL];

export type MetricKind = "counter" | "gauge" | "histogram";
export type BucketSet = "latency" | "wakeup" | "tokens" | "batch" | "hosts";

export interface MetricDef {
  readonly name: string;
  readonly kind: MetricKind;
  /** ratio: a fraction in [0, 1]; info: always 1, the labels are the data (moela_build_info). */
  readonly unit: "seconds" | "bytes" | "tokens" | "sequences" | "blocks" | "hosts" | "requests" | "jobs" | "calls" | "events" | "ratio" | "info";
  readonly labels: readonly LabelName[];
  readonly help: string;
  readonly buckets?: BucketSet;
  /**
   * The values each label takes, for counters whose labels all have a short fixed set of values.
   * The registry starts every combination at 0, so a series exists before its first event and
   * rate()/increase() count that event (a series born at 1 shows no increase). Recording a value
   * not listed still works; list it here so it starts at 0 too.
   */
  readonly values?: { readonly [L in LabelName]?: readonly string[] };
}

/** How a request or job ended (LABEL.outcome). */
const OUTCOMES = ["ok", "error", "cancelled", "rejected", "timeout"] as const;
/**
 * Why KV blocks held for a request went back to the pool (the KV ledger's release reasons, @moela/kv-transfer
 * KV_RELEASE_REASONS): finished (normal end; prefill: rows encoded and sent), cancelled (client disconnect,
 * router Cancel), deadline, rejected (refused: full, draining, bad transfer, duplicate), sender_failed (the
 * transfer broke or arrived corrupt: prefill crashed or aborted), lost (nobody progressed it in time: a
 * silent sender, a Stream that never came back), failed (a step or prefill that threw: an expert-host lost),
 * shutdown.
 */
const RECLAIM_REASONS = ["finished", "cancelled", "deadline", "rejected", "sender_failed", "lost", "failed", "shutdown"] as const;
/** The engine's forward phases (@moela/engine FORWARD_PHASES; test/unit/metrics checks they agree). */
export const FORWARD_PHASE_VALUES = ["attention", "gate", "shared_expert", "routed_experts", "routed_wait", "dense_mlp", "lm_head"] as const;
/** The dispatcher's own work per MoE layer: encode and send, then decode and add the replies. */
export const DISPATCH_PHASE_VALUES = ["encode", "combine"] as const;
/**
 * How a generation (one choice of a request) ended (routerGenerations): stop (EOS, a stop token or string),
 * length (max_tokens or the context), abort (the client went away or cancelled it), timeout (the request's
 * deadline), error (the server failed it). vLLM's finished_reason, plus the two failures it has no name for.
 */
export const FINISH_REASON_VALUES = ["stop", "length", "abort", "timeout", "error"] as const;
/**
 * Speculative draft positions (LABEL.position): 0 is a step's first draft, 1-3 the chained ones after it (the engine's
 * MAX_SPECULATIVE_TOKENS is 4; a test holds the two together).
 */
export const DRAFT_POSITION_VALUES = ["0", "1", "2", "3"] as const;
/** Why the router retried or migrated a request (routerRetries). */
const RETRY_REASONS = ["prefill_failed", "prefill_stalled", "prefill_vanished", "decode_unavailable", "decode_failed", "kv_transfer_failed"] as const;

export const METRICS = {
  // ---- every service -------------------------------------------------------------------------
  /**
   * every service, set once at start-up to 1 (an info metric: the labels are the data, as vLLM's
   * cache_config_info); model as LABEL.model (expert-hosts: the model folder's name too). Join on instance
   * to label any series: `x * on (instance) group_left (version) moela_build_info`.
   */
  buildInfo: {
    name: "moela_build_info",
    kind: "gauge",
    unit: "info",
    labels: ["version", "component", "model", "precision", "kernels"],
    help: "Build and configuration of this process; always 1.",
  },

  // ---- every gRPC service (the rpc kit's interceptors) -------------------------------------
  /** rpc server interceptor, when a call ends. */
  rpcServerHandled: {
    name: "moela_rpc_server_handled_total",
    kind: "counter",
    unit: "calls",
    labels: ["method", "code"],
    help: "gRPC calls completed by this server, by method and status code.",
  },
  /** rpc server interceptor, when a call ends (unary: whole call; streaming: until the stream closes). */
  rpcServerHandling: {
    name: "moela_rpc_server_handling_seconds",
    kind: "histogram",
    unit: "seconds",
    labels: ["method"],
    buckets: "latency",
    help: "Time from a gRPC call's arrival to its last response message.",
  },
  /** rpc client interceptor, when a call this process made ends. */
  rpcClientHandled: {
    name: "moela_rpc_client_handled_total",
    kind: "counter",
    unit: "calls",
    labels: ["method", "code"],
    help: "gRPC calls made by this process, by method and status code.",
  },
  /** rpc client interceptor, when a call this process made ends. */
  rpcClientHandling: {
    name: "moela_rpc_client_handling_seconds",
    kind: "histogram",
    unit: "seconds",
    labels: ["method"],
    buckets: "latency",
    help: "Time from starting a gRPC call to its last response message.",
  },

  // ---- router ------------------------------------------------------------------------------
  /** router, once per request when its response ends; outcome ok | error | cancelled | rejected | timeout. */
  routerRequests: {
    name: "moela_router_requests_total",
    kind: "counter",
    unit: "requests",
    labels: ["model", "api", "outcome"],
    values: { api: ["openai", "grpc"], outcome: OUTCOMES },
    help: "Generation requests finished by the router, by API and outcome.",
  },
  /** router, read at scrape time: requests admitted and not yet finished. */
  routerRequestsInFlight: {
    name: "moela_router_requests_in_flight",
    kind: "gauge",
    unit: "requests",
    labels: [],
    help: "Generation requests admitted and not yet finished.",
  },
  /** router, when the first generated token reaches the client stream. */
  routerTimeToFirstToken: {
    name: "moela_router_time_to_first_token_seconds",
    kind: "histogram",
    unit: "seconds",
    labels: ["model"],
    buckets: "latency",
    help: "Time from request arrival to the first generated token.",
  },
  /** router, for every generated token after the first. */
  routerInterTokenLatency: {
    name: "moela_router_inter_token_latency_seconds",
    kind: "histogram",
    unit: "seconds",
    labels: ["model"],
    buckets: "latency",
    help: "Time between consecutive generated tokens of one request.",
  },
  /** router, when a request finishes (any outcome). */
  routerE2eLatency: {
    name: "moela_router_e2e_latency_seconds",
    kind: "histogram",
    unit: "seconds",
    labels: ["model"],
    buckets: "latency",
    help: "Time from request arrival to its last token or error.",
  },
  /** router, once per admitted request. */
  routerPromptTokens: {
    name: "moela_router_prompt_tokens_total",
    kind: "counter",
    unit: "tokens",
    labels: ["model"],
    help: "Prompt tokens of admitted requests.",
  },
  /** router, per token streamed back. */
  routerGenerationTokens: {
    name: "moela_router_generation_tokens_total",
    kind: "counter",
    unit: "tokens",
    labels: ["model"],
    help: "Tokens generated and streamed to clients.",
  },
  /** router, read at scrape time from the prefill queue. */
  routerQueueDepth: { name: "moela_router_queue_depth", kind: "gauge", unit: "jobs", labels: [], help: "Prefill jobs waiting in the queue." },
  /** router, read at scrape time from the prefill queue. */
  routerQueueActive: { name: "moela_router_queue_active", kind: "gauge", unit: "jobs", labels: [], help: "Prefill jobs a worker is processing now." },
  /** router, when it removes a job no worker took yet because its request ended; reason cancelled | timeout | error. */
  routerQueueRemoved: {
    name: "moela_router_queue_removed_total",
    kind: "counter",
    unit: "jobs",
    labels: ["reason"],
    values: { reason: ["cancelled", "timeout", "error"] },
    help: "Prefill jobs removed from the queue before a worker took them, by why their request ended.",
  },
  /**
   * router, when a job leaves the queue for a prefill worker (one-process: when the engine admits the request):
   * the request's queue time (vLLM's request_queue_time_seconds), per attempt.
   */
  routerQueueWait: {
    name: "moela_router_queue_wait_seconds",
    kind: "histogram",
    unit: "seconds",
    labels: ["model"],
    buckets: "latency",
    help: "Time a prefill job waited in the queue before a worker took it.",
  },
  /**
   * router, per retry or migration of one of its requests: prefill_failed (BullMQ retries a failed attempt
   * after its backoff), prefill_stalled (the job's worker died; BullMQ gave it to another), prefill_vanished (the
   * job was gone from Redis before its first token: the router enqueued it again), decode_unavailable
   * (the Decode.Stream broke or the instance drained: migrated), decode_failed (decode ended it with a
   * retryable error, e.g. a step that lost an expert-host: migrated), kv_transfer_failed.
   */
  routerRetries: {
    name: "moela_router_retries_total",
    kind: "counter",
    unit: "events",
    labels: ["reason"],
    values: { reason: RETRY_REASONS },
    help: "Requests retried or migrated to another instance, by reason.",
  },
  /**
   * router, when a generation the backend started ends (one per choice: n=2 counts two; best_of's candidates
   * too); finish_reason stop | length | abort | timeout | error. Requests refused before generating are not
   * here (routerRequests outcome rejected).
   */
  routerGenerations: {
    name: "moela_router_generations_total",
    kind: "counter",
    unit: "requests",
    labels: ["model", "finish_reason"],
    values: { finish_reason: FINISH_REASON_VALUES },
    help: "Generations (one per choice of a request) finished, by finish reason: stop, length, abort, timeout, error.",
  },
  /** router, when a generation ends (any finish reason): its prompt's length. */
  routerRequestPromptTokens: {
    name: "moela_router_request_prompt_tokens",
    kind: "histogram",
    unit: "tokens",
    labels: ["model"],
    buckets: "tokens",
    help: "Prompt length of finished generations, in tokens.",
  },
  /** router, when a generation ends (any finish reason): tokens it sent to the client. */
  routerRequestGenerationTokens: {
    name: "moela_router_request_generation_tokens",
    kind: "histogram",
    unit: "tokens",
    labels: ["model"],
    buckets: "tokens",
    help: "Generated length of finished generations, in tokens.",
  },
  /**
   * router, at a generation's first token: from its prefill starting (the job taken by a worker; one-process:
   * admitted to the engine) to that token, so prefill compute, KV transfer and the first decode step.
   */
  routerRequestPrefill: {
    name: "moela_router_request_prefill_seconds",
    kind: "histogram",
    unit: "seconds",
    labels: ["model"],
    buckets: "latency",
    help: "Time from a generation's prefill starting to its first token at the router.",
  },
  /** router, when a generation that produced tokens ends: from its first token to its last. */
  routerRequestDecode: {
    name: "moela_router_request_decode_seconds",
    kind: "histogram",
    unit: "seconds",
    labels: ["model"],
    buckets: "latency",
    help: "Time from a generation's first token to its last.",
  },

  // ---- prefill -----------------------------------------------------------------------------
  /** prefill worker, when a job ends; outcome ok | error | cancelled. */
  prefillJobs: {
    name: "moela_prefill_jobs_total",
    kind: "counter",
    unit: "jobs",
    labels: ["outcome"],
    values: { outcome: ["ok", "error", "cancelled"] },
    help: "Prefill jobs finished, by outcome.",
  },
  /** prefill, per forward batch. */
  prefillBatchSize: {
    name: "moela_prefill_batch_size",
    kind: "histogram",
    unit: "sequences",
    labels: [],
    buckets: "batch",
    help: "Sequences in one prefill forward batch.",
  },
  /** prefill, per forward batch. */
  prefillBatchTokens: {
    name: "moela_prefill_batch_tokens",
    kind: "histogram",
    unit: "tokens",
    labels: [],
    buckets: "tokens",
    help: "Prompt tokens computed in one prefill forward batch.",
  },
  /** prefill, per forward batch: tokens actually computed (prefix-cache hits excluded). */
  prefillTokens: { name: "moela_prefill_tokens_total", kind: "counter", unit: "tokens", labels: ["model"], help: "Prompt tokens computed by prefill." },
  /** prefill, per forward batch (one chunk of every sequence in it). */
  prefillForward: {
    name: "moela_prefill_forward_seconds",
    kind: "histogram",
    unit: "seconds",
    labels: [],
    buckets: "latency",
    help: "Time of one prefill forward pass over a batch of chunks.",
  },
  /** prefill, per job: prompt tokens looked up in the prefix cache. */
  prefillPrefixCacheQueries: {
    name: "moela_prefill_prefix_cache_queries_total",
    kind: "counter",
    unit: "tokens",
    labels: [],
    help: "Prompt tokens looked up in the prefix cache.",
  },
  /** prefill, per job: prompt tokens whose KV was found in the prefix cache. */
  prefillPrefixCacheHits: {
    name: "moela_prefill_prefix_cache_hits_total",
    kind: "counter",
    unit: "tokens",
    labels: [],
    help: "Prompt tokens found in the prefix cache.",
  },
  /** prefill, per forward batch with hits: cached tokens x the seconds per token of recent batches without hits (an estimate). */
  prefillPrefixCacheSaved: {
    name: "moela_prefill_prefix_cache_saved_seconds_total",
    kind: "counter",
    unit: "seconds",
    labels: [],
    help: "Estimated prefill compute time the prefix cache saved (cached tokens at the seconds per token of batches without hits).",
  },
  /** prefill, read at scrape time: blocks the prefix cache holds (in use by jobs or kept for reuse). */
  prefillPrefixCacheBlocks: {
    name: "moela_prefill_prefix_cache_blocks",
    kind: "gauge",
    unit: "blocks",
    labels: [],
    help: "KV blocks held by the prefix cache, in use or kept for reuse.",
  },
  /** kv-transfer sender in prefill, per layer frame sent. */
  prefillKvTransferBytes: {
    name: "moela_prefill_kv_transfer_bytes_total",
    kind: "counter",
    unit: "bytes",
    labels: [],
    help: "Latent KV bytes sent to decode instances.",
  },
  /** prefill, per job: its prompt queued in the batcher until its batch's turn (KvBegin sent). */
  prefillBatchWait: {
    name: "moela_prefill_batch_wait_seconds",
    kind: "histogram",
    unit: "seconds",
    labels: [],
    buckets: "latency",
    help: "Time a prompt waited in prefill's batcher for its batch's turn.",
  },
  /** kv-transfer sender in prefill, per request: KvBegin sent (its batch's turn) to last layer acknowledged. */
  prefillKvTransferDuration: {
    name: "moela_prefill_kv_transfer_seconds",
    kind: "histogram",
    unit: "seconds",
    labels: [],
    buckets: "latency",
    help: "Time to transfer one request's latent KV to its decode instance.",
  },
  /** prefill, read at scrape time from its KV ledger: blocks held by jobs being prefilled (0 when idle). */
  prefillKvBlocksUsed: { name: "moela_prefill_kv_blocks_used", kind: "gauge", unit: "blocks", labels: [], help: "KV blocks held by prefill jobs in progress." },
  /** prefill KV ledger, per released hold; reason as decodeKvReclaims (finished = rows encoded and sent). */
  prefillKvReclaims: {
    name: "moela_prefill_kv_reclaims_total",
    kind: "counter",
    unit: "events",
    labels: ["reason"],
    values: { reason: RECLAIM_REASONS },
    help: "Prefill jobs' KV holds given back, by why they ended.",
  },
  /** prefill KV ledger, per released hold: the blocks it gave back. */
  prefillKvReclaimedBlocks: {
    name: "moela_prefill_kv_reclaimed_blocks_total",
    kind: "counter",
    unit: "blocks",
    labels: ["reason"],
    values: { reason: RECLAIM_REASONS },
    help: "KV blocks prefill jobs gave back, by why they ended.",
  },
  /** kv-transfer sender in prefill; reason unavailable | aborted | timeout | rejected. */
  prefillKvTransferFailures: {
    name: "moela_prefill_kv_transfer_failures_total",
    kind: "counter",
    unit: "events",
    labels: ["reason"],
    values: { reason: ["unavailable", "aborted", "timeout", "rejected"] },
    help: "KV transfers that failed, by reason.",
  },

  // ---- decode ------------------------------------------------------------------------------
  /** decode, read at scrape time from the scheduler. */
  decodeRunningSequences: {
    name: "moela_decode_running_sequences",
    kind: "gauge",
    unit: "sequences",
    labels: [],
    help: "Sequences in the running decode batch.",
  },
  /** decode, read at scrape time: sequences whose KV arrived, waiting for a batch slot or blocks. */
  decodeWaitingSequences: {
    name: "moela_decode_waiting_sequences",
    kind: "gauge",
    unit: "sequences",
    labels: [],
    help: "Sequences waiting to join the decode batch.",
  },
  /** decode, read at scrape time from the paged latent KV cache. */
  decodeKvBlocksUsed: { name: "moela_decode_kv_blocks_used", kind: "gauge", unit: "blocks", labels: [], help: "Latent KV cache blocks in use." },
  /** decode, read at scrape time: used / capacity blocks, 0..1 (vLLM's kv_cache_usage_perc); 0 before the cache exists. */
  decodeKvUsage: {
    name: "moela_decode_kv_usage_ratio",
    kind: "gauge",
    unit: "ratio",
    labels: [],
    help: "Fraction of the latent KV cache's blocks in use, 0 to 1.",
  },
  /** decode, read at scrape time; not ..._total because it is a gauge. */
  decodeKvBlocksCapacity: { name: "moela_decode_kv_blocks_capacity", kind: "gauge", unit: "blocks", labels: [], help: "Latent KV cache blocks in the pool." },
  /** decode, per engine step (one token per sequence, plus MTP drafts). */
  decodeStep: {
    name: "moela_decode_step_seconds",
    kind: "histogram",
    unit: "seconds",
    labels: [],
    buckets: "latency",
    help: "Time of one decode step over the running batch.",
  },
  /** decode, per token emitted (accepted MTP drafts included). */
  decodeGeneratedTokens: {
    name: "moela_decode_generated_tokens_total",
    kind: "counter",
    unit: "tokens",
    labels: ["model"],
    help: "Tokens generated by this decode instance.",
  },
  /** decode, per MTP draft token proposed, by its position after the sampled token (0: the first draft). */
  decodeMtpDraftedTokens: {
    name: "moela_decode_mtp_drafted_tokens_total",
    kind: "counter",
    unit: "tokens",
    labels: ["position"],
    values: { position: DRAFT_POSITION_VALUES },
    help: "Tokens drafted by multi-token prediction, by draft position.",
  },
  /**
   * decode, per MTP draft token the main model confirmed, by position (vLLM's num_accepted_tokens_per_pos):
   * accepted{position} / drafted{position} is the acceptance rate of the position-th draft.
   */
  decodeMtpAcceptedTokens: {
    name: "moela_decode_mtp_accepted_tokens_total",
    kind: "counter",
    unit: "tokens",
    labels: ["position"],
    values: { position: DRAFT_POSITION_VALUES },
    help: "Drafted tokens accepted by verification, by draft position.",
  },
  /** kv-transfer receiver in decode, per layer frame received. */
  decodeKvReceivedBytes: {
    name: "moela_decode_kv_received_bytes_total",
    kind: "counter",
    unit: "bytes",
    labels: [],
    help: "Latent KV bytes received from prefill instances.",
  },
  /** kv-transfer receiver in decode, per admitted transfer: KvBegin received to sequence admitted. */
  decodeKvTransferDuration: {
    name: "moela_decode_kv_transfer_seconds",
    kind: "histogram",
    unit: "seconds",
    labels: [],
    buckets: "latency",
    help: "Time from a KV transfer's begin to the sequence's admission.",
  },
  /**
   * decode KV ledger, read at scrape time: blocks of requests nobody has progressed for the stranded threshold
   * (a transfer whose sender went silent, a sequence whose Stream went away); their timeouts reclaim them.
   */
  decodeKvStrandedBlocks: {
    name: "moela_decode_kv_stranded_blocks",
    kind: "gauge",
    unit: "blocks",
    labels: [],
    help: "KV blocks held by requests that made no progress recently (silent sender, no Stream attached).",
  },
  /** decode KV ledger, per released hold (transfer reservation or sequence); reason finished | cancelled | deadline | rejected | sender_failed | lost | failed | shutdown. */
  decodeKvReclaims: {
    name: "moela_decode_kv_reclaims_total",
    kind: "counter",
    unit: "events",
    labels: ["reason"],
    values: { reason: RECLAIM_REASONS },
    help: "Requests' KV holds given back (transfer reservations and sequences), by why they ended.",
  },
  /** decode KV ledger, per released hold: the blocks it gave back. */
  decodeKvReclaimedBlocks: {
    name: "moela_decode_kv_reclaimed_blocks_total",
    kind: "counter",
    unit: "blocks",
    labels: ["reason"],
    values: { reason: RECLAIM_REASONS },
    help: "KV blocks given back, by why their request (or transfer) ended.",
  },

  /** prefill and decode, after each forward: its wall time per phase (PhaseTimes); routed_wait is what the expert-hosts cost beyond local work. */
  forwardPhase: {
    name: "moela_engine_forward_phase_seconds_total",
    kind: "counter",
    unit: "seconds",
    labels: ["phase"],
    values: { phase: FORWARD_PHASE_VALUES },
    help: "Forward-pass time by phase (attention, gate, shared and routed experts, waiting on expert-hosts, dense MLP, output head).",
  },

  // ---- MoE dispatch (the dispatcher inside prefill and decode) -----------------------------
  /** dispatcher, per MoE layer per micro-batch: time encoding and sending (encode) and decoding and adding replies (combine). */
  moeDispatchPhase: {
    name: "moela_moe_dispatch_phase_seconds_total",
    kind: "counter",
    unit: "seconds",
    labels: ["phase"],
    values: { phase: DISPATCH_PHASE_VALUES },
    help: "Dispatcher time by phase: encoding and sending activations, decoding and adding partial sums.",
  },
  /** dispatcher, per token per MoE layer: distinct expert-hosts its top-k reaches. */
  moeDispatchHostsReached: {
    name: "moela_moe_dispatch_hosts_reached",
    kind: "histogram",
    unit: "hosts",
    labels: [],
    buckets: "hosts",
    help: "Expert-hosts one token's routed experts live on, per MoE layer.",
  },
  /** dispatcher, per dispatch call: encoded activation bytes sent. */
  moeDispatchSentBytes: {
    name: "moela_moe_dispatch_sent_bytes_total",
    kind: "counter",
    unit: "bytes",
    labels: ["codec"],
    help: "Activation bytes sent to expert-hosts, by codec.",
  },
  /** dispatcher, per combine reply: encoded partial-sum bytes received. */
  moeCombineReceivedBytes: {
    name: "moela_moe_combine_received_bytes_total",
    kind: "counter",
    unit: "bytes",
    labels: ["codec"],
    help: "Combine bytes received from expert-hosts, by codec.",
  },
  /** dispatcher, per MoE layer per micro-batch: first dispatch sent to last combine received. */
  moeDispatchRoundTrip: {
    name: "moela_moe_dispatch_round_trip_seconds",
    kind: "histogram",
    unit: "seconds",
    labels: [],
    buckets: "latency",
    help: "Time of one MoE layer's dispatch and combine over all hosts.",
  },
  /**
   * dispatcher, per expert-host answer read from shared memory: from the host publishing it to this process reading
   * it (this process waking up and getting a core, or finishing other work first). gRPC answers are not counted.
   */
  moeDispatchSharedMemoryAnswerWait: {
    name: "moela_moe_dispatch_shared_memory_answer_wait_seconds",
    kind: "histogram",
    unit: "seconds",
    labels: [],
    buckets: "wakeup",
    help: "Time an expert-host's answer waited in shared memory before this process read it (waking up, getting a core, or finishing other work first).",
  },

  // ---- expert-host -------------------------------------------------------------------------
  /** expert-host, per dispatch call: (token, expert) pairs computed, by layer. Always on. */
  expertHostLayerTokens: {
    name: "moela_expert_host_layer_tokens_total",
    kind: "counter",
    unit: "tokens",
    labels: ["layer"],
    help: "Token-expert pairs computed, by MoE layer.",
  },
  /** expert-host, per dispatch call, only with perExpertSeries (layers x local experts series). */
  expertHostExpertTokens: {
    name: "moela_expert_host_expert_tokens_total",
    kind: "counter",
    unit: "tokens",
    labels: ["layer", "expert"],
    help: "Tokens routed to each local expert, by layer and expert.",
  },
  /** expert-host, per dispatch call: rows in it. */
  expertHostBatchTokens: {
    name: "moela_expert_host_batch_tokens",
    kind: "histogram",
    unit: "tokens",
    labels: [],
    buckets: "tokens",
    help: "Tokens in one dispatch call.",
  },
  /** expert-host, per dispatch call: encoded activation bytes received (dispatch in). */
  expertHostReceivedBytes: {
    name: "moela_expert_host_received_bytes_total",
    kind: "counter",
    unit: "bytes",
    labels: ["codec"],
    help: "Dispatched activation bytes received, by codec.",
  },
  /** expert-host, per dispatch call that arrived through shared memory (ExpertHost.AttachSharedMemory) rather than gRPC. */
  expertHostSharedMemoryDispatches: {
    name: "moela_expert_host_shared_memory_dispatches_total",
    kind: "counter",
    unit: "calls",
    labels: [],
    help: "Dispatch calls that arrived through shared memory from a caller on this machine (the others came over gRPC).",
  },
  /**
   * expert-host, per dispatch read from shared memory: from the caller publishing it to this host reading it (the host
   * waking up and getting a core, or finishing the requests before it). gRPC requests are not counted.
   */
  expertHostSharedMemoryRequestWait: {
    name: "moela_expert_host_shared_memory_request_wait_seconds",
    kind: "histogram",
    unit: "seconds",
    labels: [],
    buckets: "wakeup",
    help: "Time a dispatch waited in shared memory before this host read it (waking up, getting a core, or finishing the requests before it).",
  },
  /** expert-host, per dispatch reply: encoded partial-sum bytes sent (combine out). */
  expertHostSentBytes: {
    name: "moela_expert_host_sent_bytes_total",
    kind: "counter",
    unit: "bytes",
    labels: ["codec"],
    help: "Combine bytes sent back, by codec.",
  },
  /** expert-host, per dispatch call: decode, expert MLPs and weighted sum, transport excluded. */
  expertHostCompute: {
    name: "moela_expert_host_compute_seconds",
    kind: "histogram",
    unit: "seconds",
    labels: [],
    buckets: "latency",
    help: "Time computing one dispatch call's experts.",
  },
  /** expert-host, per dispatch: from the request message's arrival to its reply being ready (checks, compute, encoding). */
  expertHostDispatch: {
    name: "moela_expert_host_dispatch_seconds",
    kind: "histogram",
    unit: "seconds",
    labels: [],
    buckets: "latency",
    help: "Time from a dispatch's arrival to its reply being ready.",
  },
} as const satisfies Record<string, MetricDef>;

export type MetricKey = keyof typeof METRICS;
