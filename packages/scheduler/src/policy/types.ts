/**
 * The scheduling framework's contracts: a Policy runs FILTERS (drop instances that cannot take the
 * request), then SCORERS (rate the rest in [0, 1], each with a weight), then a PICKER (choose one from
 * the weighted totals). Every step explains itself, so a decision can be kept and looked up later
 * (decisions.ts). The shape follows llm-d's scheduling plugins (filters, scorers, pickers).
 *
 * Rules every implementation keeps:
 *   - Plugins are synchronous and pure over (request, candidates): a decision never waits on the
 *     network. Data a plugin needs from elsewhere (e.g. the prefix hashes each prefill instance
 *     published) is gathered beforehand by the candidate source into Candidate.attributes.
 *   - Filters and scorers see the whole candidate set (a scorer may normalise over it; a filter may
 *     keep everyone when its preference cannot be met, and say so).
 *   - Scores are finite numbers in [0, 1], one per candidate, in candidate order; 1 is best.
 *   - Pickers are deterministic for a given (request, candidates) (a random picker seeds itself from
 *     its configured seed and the request id), so a decision can be replayed.
 *
 * Each implementation lives in its own folder (filters/<type>/, scorers/<type>/, pickers/<type>/)
 * with a README (type id, parameters, example) and is registered by its type id in registry.ts.
 * Implementations check their conformance with `satisfies FilterFactory` (etc.).
 */

/** Roles of the instances a policy chooses among (the registry's roles). */
export type InstanceRole = "router" | "prefill" | "decode" | "expert-host";

/** What an instance reports about its load (decode: Decode.Status; others: their registry records). */
export interface InstanceLoad {
  readonly freeKvBlocks: number;
  readonly totalKvBlocks: number;
  /** Tokens per KV block. */
  readonly blockSize: number;
  /** Sequences (decode) or jobs (prefill) being worked on now. */
  readonly runningSequences: number;
  /** Admitted but waiting for a slot (decode's waiting sequences; prefill's queued work). */
  readonly waitingSequences: number;
  /** KV transfers in progress towards this instance. */
  readonly pendingTransfers: number;
  /** False while draining. */
  readonly accepting: boolean;
}

/** One instance a policy may choose, with what is known about it now. */
export interface Candidate {
  /** Stable identity: the registry's instance id, or the address of a statically configured one. */
  readonly id: string;
  /** gRPC host:port. */
  readonly address: string;
  /** The last report is recent and nothing has failed since. */
  readonly healthy: boolean;
  /** Why it is unhealthy, when it is. */
  readonly error?: string;
  /** Last report; undefined before the first. */
  readonly load: InstanceLoad | undefined;
  /** Precision profile it runs ("exact" | "paper" | "paper-logfmt8"), when known. */
  readonly precision?: string;
  /** Model identity it serves, when known. */
  readonly modelId?: string;
  /** KV blocks and sequences this router sent there since `load` was measured. */
  readonly reservedBlocks: number;
  readonly reservedSequences: number;
  /**
   * Data gathered for specific plugins before the decision, keyed by the plugin's type id
   * (e.g. attributes["prefix-affinity"] for the prefix-cache scorer). Plugins must tolerate absence.
   */
  readonly attributes?: Readonly<Record<string, unknown>>;
}

/** What is being scheduled. */
export interface SchedulingRequest {
  readonly requestId: string;
  readonly promptTokens: number;
  readonly maxTokens: number;
  /** The deployment's precision profile, for same-precision. */
  readonly precision?: string | undefined;
  /** The prompt itself, for plugins that look at its content (prefix affinity). */
  readonly promptTokenIds?: readonly number[];
  /** The request's prefix-cache namespace (cache_salt): its prefix keys are salted with it. */
  readonly cacheSalt?: string;
}

/**
 * Why a filter dropped a candidate. The kind decides the error when no candidate is left:
 *   unavailable: down, draining, wrong profile (UNAVAILABLE, 503: retry, another instance may come);
 *   busy:        could take it, not now (RESOURCE_EXHAUSTED, 429: retry later);
 *   unfit:       can never take this request (INVALID_ARGUMENT, 400, when every candidate is unfit).
 */
export type RejectionKind = "unavailable" | "busy" | "unfit";

export interface Rejection {
  readonly kind: RejectionKind;
  readonly reason: string;
}

/** A filter's verdict over the set: one entry per candidate (undefined = kept), plus an optional note. */
export interface FilterResult {
  readonly verdicts: readonly (Rejection | undefined)[];
  /** Anything worth recording about the filter's choice (e.g. "nobody has room now: kept all that fit"). */
  readonly note?: string;
}

export interface Filter {
  /** Type id (registry key). */
  readonly type: string;
  /** Name in decisions (the type id unless configured). */
  readonly name: string;
  filter(request: SchedulingRequest, candidates: readonly Candidate[]): FilterResult;
}

export interface Scorer {
  readonly type: string;
  readonly name: string;
  /** One score in [0, 1] per candidate, in order; 1 is best. */
  score(request: SchedulingRequest, candidates: readonly Candidate[]): readonly number[];
}

/** A candidate that passed the filters, with its scores. */
export interface ScoredCandidate {
  readonly candidate: Candidate;
  /** Position among the candidates the policy was given (stable tie-break order). */
  readonly order: number;
  /** Raw score per scorer name, in [0, 1]. */
  readonly scores: Readonly<Record<string, number>>;
  /** Sum of weight x score over the scorers. */
  readonly total: number;
}

export interface PickResult {
  readonly chosen: ScoredCandidate;
  /** One line a person can read: why this one. */
  readonly reason: string;
}

export interface Picker {
  readonly type: string;
  readonly name: string;
  /** `scored` is non-empty, in candidate order. */
  pick(request: SchedulingRequest, scored: readonly ScoredCandidate[]): PickResult;
}

/**
 * How a plugin is made from configuration. `parameters` is the raw JSON of the config entry; the
 * factory validates it (throwing ConfigError naming `path`, e.g. "policy.scorers[1].parameters").
 */
export interface PluginFactory<P> {
  readonly type: string;
  /** One line for listings and errors. */
  readonly description: string;
  create(parameters: unknown, name: string, path: string): P;
}

export type FilterFactory = PluginFactory<Filter>;
export type ScorerFactory = PluginFactory<Scorer>;
export type PickerFactory = PluginFactory<Picker>;

// ---- decisions ------------------------------------------------------------------------------

/** One candidate as the decision saw it. */
export interface CandidateRecord {
  readonly id: string;
  readonly address: string;
  /** "<filter name>: <reason>" when a filter dropped it. */
  readonly rejected?: string;
  /** Raw score per scorer (absent when rejected). */
  readonly scores?: Readonly<Record<string, number>>;
  /** Weighted total (absent when rejected). */
  readonly total?: number;
  /** What the policy knew of its load (free = reported free minus reserved). */
  readonly freeKvBlocks?: number;
  readonly load?: number;
}

/** Everything about one scheduling decision, as kept for lookup by request id. */
export interface Decision {
  readonly requestId: string;
  /** Which choice this was (e.g. "decode"); a request may have several (retries, migrations). */
  readonly role: InstanceRole;
  /** ms since the epoch. */
  readonly atMs: number;
  /** The policy's configuration, as a short string ("filters: healthy, has-free-kv; scorers: ..."). */
  readonly policy: string;
  readonly candidates: readonly CandidateRecord[];
  /** The chosen instance; absent when none could be chosen. */
  readonly chosen?: { readonly id: string; readonly address: string };
  /** Why this one, or why none. */
  readonly reason: string;
  /** Notes the filters left (e.g. a preference that could not be met). */
  readonly notes?: readonly string[];
  /** The error the request got when nothing was chosen. */
  readonly error?: string;
}
