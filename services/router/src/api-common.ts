/**
 * What the router's front doors (http-handlers.ts with sse.ts, grpc-handlers.ts) share: the context they
 * run in, how a request's end is counted, n choices merged into one stream, request ids, API keys, and
 * what clients are told of an error (handlers.ts has the whole picture).
 */
import { createHash, randomBytes, timingSafeEqual } from "node:crypto";
import { readFileSync } from "node:fs";
import { Code, errorForCode, InvalidArgumentError, UnauthenticatedError, MoelaError, type Logger } from "@moela/core";
import type { MetricsOf } from "@moela/metrics";
import {
  ModelNotFoundError,
  RequestValidationError,
  tokenRenderer,
  type AsyncPromptEncoder,
  type GenerationRequest,
  type SamplingRequest,
  type TokenText,
  type ValidationContext,
} from "@moela/openai-api";
import type { AdmissionController } from "@moela/scheduler";
import type { Tokenizer } from "@moela/tokenizer";
import type { GenerateEvent, GenerationBackend } from "./backend.js";
import { errorKind, type ErrorKind } from "./request-metrics.js";

export interface RouterContext {
  readonly validation: ValidationContext;
  /** null when the checkpoint has no tokenizer (token-id prompts only). */
  readonly tokenizer: Tokenizer | null;
  /** Runs the requests' tokenizer operations (the TokenizerPool: long prompts off the event loop). */
  readonly encoder: AsyncPromptEncoder;
  /** The API keys clients must present; null: no authentication. */
  readonly apiKeys: ApiKeys | null;
  /** Largest HTTP body (fastify's bodyLimit). */
  readonly maxBodyBytes: number;
  /** Addresses, hosts and instance ids of the cluster right now: scrubbed from what clients are told. */
  readonly internalNames: () => Iterable<string>;
  /** What runs the generations: the cluster (pipeline.ts) or this process's engine (engine-backend.ts). */
  readonly backend: GenerationBackend;
  readonly admission: AdmissionController;
  readonly metrics: MetricsOf<"router">;
  readonly logger: Logger;
  /** Seconds since the epoch when the router started (the model's `created`). */
  readonly startedAt: number;
  /** Aborts every request in flight when the router's shutdown grace period runs out. */
  readonly shutdown: AbortSignal;
  /** True once the router is shutting down (health answers 503). */
  readonly draining: () => boolean;
  /** The router's metrics registry, served at GET /metrics on the API port too; absent: no such route. */
  readonly registry?: { metrics(): Promise<string>; readonly contentType: string };
}

/** The platform's version (the repository's package.json, as `moela --version`), for GET /version. */
export const MOELA_VERSION: string = (() => {
  const pkg = JSON.parse(readFileSync(new URL("../../../package.json", import.meta.url), "utf8")) as { version?: unknown };
  return typeof pkg.version === "string" ? pkg.version : "unknown";
})();

/** How a request ended (routerRequests' outcome label): ok, or its error's kind. */
export type Outcome = "ok" | ErrorKind;

/** The outcome of a request that threw `err` (request-metrics.ts's errorKind). */
export function outcomeOf(err: unknown): Outcome {
  return errorKind(err);
}

/** A request ended: routerRequests by API and outcome, and its end-to-end latency since `arrivedAt`. */
export function recordRequest(ctx: RouterContext, api: "openai" | "grpc", outcome: Outcome, arrivedAt: number): void {
  const model = ctx.validation.servedModelName;
  ctx.metrics.routerRequests.inc({ model, api, outcome });
  ctx.metrics.routerE2eLatency.observe({ model }, (performance.now() - arrivedAt) / 1000);
}

/** Yields the events of several generations as they come, tagged with their index. */
export async function* mergeEvents(gens: AsyncGenerator<GenerateEvent>[]): AsyncGenerator<{ index: number; event: GenerateEvent }> {
  type Step = { index: number; r: IteratorResult<GenerateEvent> };
  const pending = new Map<number, Promise<Step>>();
  const pull = (index: number): void => {
    const p = gens[index]!.next().then((r) => ({ index, r }));
    p.catch(() => {});
    pending.set(index, p);
  };
  gens.forEach((_, i) => pull(i));
  try {
    while (pending.size > 0) {
      const { index, r } = await Promise.race(pending.values());
      if (r.done) {
        pending.delete(index);
        continue;
      }
      pull(index);
      yield { index, event: r.value };
    }
  } finally {
    // The caller aborts the generations' signal; their own cleanup then cancels them on decode.
    for (const g of gens) void g.return(undefined).catch(() => undefined);
  }
}

/** The response header naming the unknown request fields that were ignored (comma-separated paths). */
export const IGNORED_FIELDS_HEADER = "x-moela-ignored-fields";

/**
 * Choice k of a prompt: the prompt's sampling, with seed + k for k > 0 when the client chose a seed (so
 * n seeded choices differ from each other and are each reproducible); without a seed the pipeline picks
 * one per generation.
 */
export function choiceSampling(s: SamplingRequest, k: number): SamplingRequest {
  if (k === 0 || s.seed === undefined) return s;
  // seed + k modulo 2^53, without forming seed + k past 2^53 (where doubles skip odd numbers: two choices
  // would share a seed).
  const room = Number.MAX_SAFE_INTEGER - s.seed;
  return { ...s, seed: k <= room ? s.seed + k : k - room - 1 };
}

/**
 * Token strings for logprobs: the tokenizer's text of each id ("" for an id it has no token for: a padded
 * vocabulary slot), or token_id:<id> (asked for, or no tokenizer).
 */
export function renderTokens(ctx: RouterContext, parsed: GenerationRequest): TokenText {
  const tokenizer = ctx.tokenizer;
  return tokenRenderer((tid) => (tokenizer!.idToToken(tid) === undefined ? "" : tokenizer!.decode([tid])), parsed.returnTokensAsTokenIds || tokenizer === null);
}

/** A client-chosen request id (x-request-id, GenerateRequest.request_id): 1-128 of A-Z a-z 0-9 . _ - */
export const REQUEST_ID = /^[A-Za-z0-9._-]{1,128}$/;

// ---- request ids, API keys, what clients are told ---------------------------------------------

/** The response header with the id the cluster knows a request by (logs, GET /v1/routing/<id>). */
export const INTERNAL_ID_HEADER = "x-moela-request-id";

/**
 * The id a request with a client-chosen id runs under: `<client id>-<12 random hex>`. Unique whatever
 * the clients choose (48 random bits per request), still found by grepping for the client's id.
 */
export function namespacedRequestId(clientId: string): string {
  return `${clientId}-${randomBytes(6).toString("hex")}`;
}

/** The token of an `Authorization: Bearer <token>` value (scheme case-insensitive), else undefined. */
export function bearerToken(authorization: string | undefined): string | undefined {
  if (authorization === undefined) return undefined;
  const m = /^\s*Bearer\s+(\S+)\s*$/i.exec(authorization);
  return m === null ? undefined : m[1];
}

/** The router's API keys (--api-key): checked in constant time, never logged. */
export class ApiKeys {
  private readonly digests: readonly Buffer[];

  constructor(keys: readonly string[]) {
    if (keys.length === 0) throw new InvalidArgumentError("ApiKeys needs at least one key");
    this.digests = keys.map(digest);
  }

  /**
   * Throws UNAUTHENTICATED unless `authorization` (the header or metadata value) is `Bearer <a key>`.
   * Every key is compared, each in constant time, so the time taken says nothing about any key.
   */
  authenticate(authorization: string | undefined): void {
    const token = bearerToken(authorization);
    if (token === undefined) {
      throw new UnauthenticatedError(
        authorization === undefined
          ? "You didn't provide an API key. Send it as 'Authorization: Bearer <key>'."
          : "The Authorization value must be 'Bearer <key>'.",
      );
    }
    const d = digest(token);
    let ok = false;
    for (const k of this.digests) ok = timingSafeEqual(d, k) || ok;
    if (!ok) throw new UnauthenticatedError("Incorrect API key provided.");
  }
}

function digest(key: string): Buffer {
  return createHash("sha256").update(key, "utf8").digest();
}

const INTERNAL = "<internal>";

/** Shapes of internal names in messages: URLs, [IPv6]:port, IPv4[:port], host:port, registry instance ids. */
const INTERNAL_PATTERNS: readonly RegExp[] = [
  /\b[a-z][a-z0-9+.-]*:\/\/[^\s"'<>()]+/gi,
  /\[[0-9A-Fa-f:.]+\](?::\d{1,5})?/g,
  /\b(?:\d{1,3}\.){3}\d{1,3}(?::\d{1,5})?\b/g,
  /\b[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)*:\d{1,5}\b/g,
  /\b(?:router|prefill|decode|expert-host)-[A-Za-z0-9.-]+-\d+-[0-9a-f]{6}\b/g,
];

/** `message` with every internal address, host and instance id replaced by "<internal>". */
export function redactInternal(message: string, names: Iterable<string>): string {
  // URLs whole first (credentials, host and path go together), then the names the router knows (longest
  // first, so an address goes whole before its host alone), then whatever else looks like an address.
  let out = message.replace(INTERNAL_PATTERNS[0]!, INTERNAL);
  const known = [...new Set(names)].filter((n) => n.length >= 3).sort((a, b) => b.length - a.length);
  for (const n of known) out = out.split(n).join(INTERNAL);
  for (const re of INTERNAL_PATTERNS.slice(1)) out = out.replace(re, INTERNAL);
  return out;
}

/**
 * What a client may be told of `err`. The router's own refusals (validation, unknown model) are built from
 * the client's input and our limits: as they are. A server-side failure's details stay in the log: its
 * message is scrubbed of internal names (INTERNAL, UNKNOWN and DATA_LOSS say only "internal error"). Not
 * a MoelaError: left to the edges' "internal error".
 */
export function publicError(err: unknown, ctx: Pick<RouterContext, "internalNames">): unknown {
  if (!(err instanceof MoelaError) || err instanceof RequestValidationError || err instanceof ModelNotFoundError) return err;
  if (err.code === Code.INTERNAL || err.code === Code.UNKNOWN || err.code === Code.DATA_LOSS) return errorForCode(err.code, "internal error");
  const message = redactInternal(err.message, ctx.internalNames());
  return message === err.message ? err : errorForCode(err.code, message);
}
