/**
 * Router configuration: every setting is a flag with an env twin MOELA_ROUTER_<NAME> (the flag wins),
 * validated once at startup; an error names both the flag and the env variable.
 *
 *   --model DIR              checkpoint folder: config.json (limits), tokenizer.json/tokenizer_config.json
 *                            (optional: without them only token-id prompts are served, text is ""),
 *                            generation_config.json (sampling defaults)                     (required)
 *   --http-address H:P       OpenAI-compatible HTTP API                          (127.0.0.1:8000)
 *   --grpc-address H:P       gRPC Generate API; port 0 picks a free one          (127.0.0.1:0)
 *   --metrics-address H:P    Prometheus /metrics                                 (127.0.0.1:0)
 *   --redis-url URL          BullMQ's Redis                                      (redis://127.0.0.1:6379)
 *   --queue-prefix NAME      Redis key prefix of the queues                      (moela)
 *   --decode H:P[,H:P...]    static decode instances (seeds: always candidates; the registry adds every
 *                            decode instance registered in Redis under the same prefix)      (none)
 *   --policy JSON|FILE       the decode-choice policy: filters, scorers, picker (packages/scheduler/src/
 *                            policy/README.md), as JSON text or a .json file   (healthy + has-free-kv;
 *                                                                               free-kv x2 + load; max-score)
 *   --decision-ttl-s N       how long routing decisions stay readable at GET /v1/routing/<id>  (3600)
 *   --served-model-name S    the model name clients use                          (the model folder's name)
 *   --max-model-len N        prompt + completion tokens at most                  (config max_position_embeddings)
 *   --precision P            exact | paper | paper-logfmt8: the deployment's profile, stamped on every
 *                            prefill job                                         (exact)
 *   --request-timeout-s N    a request's deadline, queueing included             (600)
 *   --max-in-flight N        generations admitted (queued for prefill + running) before 429  (1024)
 *   --api-key KEY[,KEY...]   clients must send `Authorization: Bearer KEY` (HTTP /v1/*) or the same as gRPC
 *                            metadata (Generate); several keys (comma-separated) allow rotation. Prefer
 *                            the env twin: a flag shows in `ps`. /health and /metrics stay open.  (none: open)
 *   --max-body-bytes N       largest HTTP request body, and gRPC request message  (32 MiB)
 *   --max-prompt-chars N     most characters of prompt text per request before tokenizing
 *                                                    (16 per context token, at least 65536)
 *   --max-prompt-tokens N    longest prompt in tokens; keep it at prefill's --max-batch-tokens
 *                                                    (min(max-model-len - 1, 32768): prefill's default)
 *   --tokenizer-threads N    threads that tokenize prompts over 4096 characters; 0 = on the event loop  (1)
 *   --strict-api             unknown request fields are a 400 naming the first, instead of ignored with a
 *                            warning (logged, and named in an x-moela-ignored-fields header)  (off)
 *   --log-level L            pino level                                          (info)
 *   --internal-secret S, --internal-secret-file F, --tls-cert F, --tls-key F, --tls-ca F
 *                            internal gRPC security of the calls to decode (@moela/rpc security.ts)  (none)
 *
 * docs/SECURITY.md says what each bound protects and what an operator must still do.
 */
import { existsSync, readFileSync } from "node:fs";
import { basename, join, resolve } from "node:path";
import {
  checkpointFolderOf,
  commaListSetting,
  ConfigError,
  configParsers,
  envNameOf,
  errorMessage,
  flagList,
  hostPortSetting,
  REDIS_SCHEMA,
  settingsFromKeys,
  usageLines,
} from "@moela/core";
import { INTERNAL_SECURITY_HELP, withInternalSecurity, type InternalSecurity } from "@moela/rpc";
import { PREFILL_DEFAULT_MAX_PROMPT_TOKENS } from "@moela/openai-api";
import { DEFAULT_POLICY, parsePolicyJson, Policy, PRECISIONS, type PolicyConfig, type PrecisionProfile } from "@moela/scheduler";
import { z } from "zod";

/** Default --max-body-bytes: a full-context prompt as token ids or escaped text fits with room to spare. */
export const DEFAULT_MAX_BODY_BYTES = 32 * 1024 * 1024;

const schema = z.strictObject({
  model: z.string({ error: "is required" }).min(1, "is required"),
  httpAddress: hostPortSetting.default("127.0.0.1:8000"),
  grpcAddress: hostPortSetting.default("127.0.0.1:0"),
  metricsAddress: hostPortSetting.default("127.0.0.1:0"),
  ...REDIS_SCHEMA,
  decode: commaListSetting.pipe(z.array(hostPortSetting)).default([]),
  policy: z.string().optional(),
  decisionTtlS: z.coerce
    .number()
    .int("must be an integer")
    .min(1, "must be at least 1")
    .max(30 * 86_400)
    .default(3_600),
  servedModelName: z.string().min(1).optional(),
  maxModelLen: z.coerce.number().int("must be an integer").min(2, "must be at least 2").optional(),
  precision: z.enum(PRECISIONS, { error: `must be one of ${PRECISIONS.join(", ")}` }).default("exact"),
  requestTimeoutS: z.coerce.number().positive("must be positive").max(86_400).default(600),
  maxInFlight: z.coerce.number().int("must be an integer").min(1, "must be at least 1").default(1024),
  // Checked in parseRouterConfig, whose errors never repeat a key.
  apiKey: z.string().optional(),
  maxBodyBytes: z.coerce
    .number()
    .int("must be an integer")
    .min(1024, "must be at least 1024")
    .max(2 ** 31 - 1)
    .default(DEFAULT_MAX_BODY_BYTES),
  maxPromptChars: z.coerce.number().int("must be an integer").min(1, "must be at least 1").optional(),
  maxPromptTokens: z.coerce.number().int("must be an integer").min(1, "must be at least 1").optional(),
  tokenizerThreads: z.coerce.number().int("must be an integer").min(0, "must be at least 0").max(64).default(1),
  strictApi: z
    .enum(["true", "false", "1", "0", "on", "off"], { error: "must be true or false" })
    .default("false")
    .transform((v) => v === "true" || v === "1" || v === "on"),
  logLevel: z.enum(["fatal", "error", "warn", "info", "debug", "trace", "silent"]).default("info"),
  // Internal gRPC security towards decode (@moela/rpc security.ts), checked and read by parseInternalSecurity.
  // No --tls-client-auth: the router serves no internal gRPC (its Generate API is public, behind --api-key).
  internalSecret: z.string().optional(),
  internalSecretFile: z.string().optional(),
  tlsCert: z.string().optional(),
  tlsKey: z.string().optional(),
  tlsCa: z.string().optional(),
});

export type RouterFlags = z.output<typeof schema>;

export interface RouterConfig {
  /** Absolute checkpoint folder. */
  readonly model: string;
  readonly httpAddress: string;
  readonly grpcAddress: string;
  readonly metricsAddress: string;
  readonly redisUrl: string;
  readonly queuePrefix: string;
  /** Static decode instances (seeds); the registry adds the registered ones. */
  readonly decode: readonly string[];
  /** The decode-choice policy (default DEFAULT_POLICY). */
  readonly policy?: PolicyConfig;
  /** How long routing decisions are kept for lookup (default 3600). */
  readonly decisionTtlS?: number;
  readonly servedModelName: string;
  /** undefined = the model's max_position_embeddings (resolved when the model is read). */
  readonly maxModelLen: number | undefined;
  readonly precision: PrecisionProfile;
  readonly requestTimeoutMs: number;
  readonly maxInFlight: number;
  /** Accepted API keys; empty: no authentication (the API is open to whoever reaches it). */
  readonly apiKeys?: readonly string[];
  /** Largest HTTP body / gRPC request message (default DEFAULT_MAX_BODY_BYTES). */
  readonly maxBodyBytes?: number;
  /** Prompt characters per request before tokenizing; undefined = defaultMaxPromptChars(max model len). */
  readonly maxPromptChars?: number | undefined;
  /** Longest prompt in tokens; undefined = min(max model len - 1, PREFILL_DEFAULT_MAX_PROMPT_TOKENS). */
  readonly maxPromptTokens?: number | undefined;
  /** Tokenizer worker threads (default 1; 0 = the event loop). */
  readonly tokenizerThreads?: number;
  /** Unknown request fields are a 400 (default false: ignored with a warning header). */
  readonly strictApi?: boolean;
  readonly logLevel: string;
  /** Internal gRPC security of its calls to decode: TLS (its cert as client cert for mTLS), the shared secret (absent: none). */
  readonly security?: InternalSecurity;
}

/** The prompt-token cap the router applies: the flag, else prefill's default, within the context. */
export function resolveMaxPromptTokens(config: Pick<RouterConfig, "maxPromptTokens">, maxModelLen: number): number {
  return Math.min(maxModelLen - 1, config.maxPromptTokens ?? PREFILL_DEFAULT_MAX_PROMPT_TOKENS);
}

/**
 * --api-key: comma-separated keys, each 1-512 printable ASCII characters without spaces or commas (they
 * travel in an HTTP header). The error never repeats the value.
 */
export function parseApiKeys(value: string | undefined): readonly string[] {
  if (value === undefined) return Object.freeze([]);
  const where = `router: --api-key (env ${envOf("apiKey")})`;
  const keys = value.split(",").map((k) => k.trim());
  keys.forEach((k, i) => {
    if (k.length === 0) throw new ConfigError(`${where}: key ${i + 1} of ${keys.length} is empty`);
    if (k.length > 512) throw new ConfigError(`${where}: key ${i + 1} of ${keys.length} is longer than 512 characters`);
    if (!/^[\x21-\x7e]+$/.test(k)) throw new ConfigError(`${where}: key ${i + 1} of ${keys.length} holds a character other than printable ASCII`);
  });
  return Object.freeze([...new Set(keys)]);
}

/** camelCase key -> MOELA_ROUTER_SNAKE_CASE. */
export function envOf(key: string): string {
  return envNameOf("MOELA_ROUTER_", key);
}

/** --help lines (the table above, one line each). */
const HELP = {
  model: "checkpoint folder: config.json, tokenizer.json + tokenizer_config.json (optional), generation_config.json (required)",
  httpAddress: "OpenAI-compatible HTTP API host:port (default 127.0.0.1:8000)",
  grpcAddress: "gRPC Generate API host:port; port 0 picks a free one (default 127.0.0.1:0)",
  metricsAddress: "Prometheus /metrics host:port (default 127.0.0.1:0)",
  redisUrl: "BullMQ's Redis (default redis://127.0.0.1:6379)",
  queuePrefix: "Redis key prefix of the queues and the registry (default moela)",
  decode: "static decode instances H:P[,H:P...], seeds; the registry adds the registered ones (default none)",
  policy: "decode-choice policy as JSON text or a .json file (default healthy + has-free-kv; free-kv x2 + load; max-score)",
  decisionTtlS: "how long routing decisions stay readable at GET /v1/routing/<id> (default 3600)",
  servedModelName: "the model name clients use (default the model folder's name)",
  maxModelLen: "prompt + completion tokens at most (default config max_position_embeddings)",
  precision: "exact | paper | paper-logfmt8: the deployment's profile, stamped on every prefill job (default exact)",
  requestTimeoutS: "a request's deadline, queueing included (default 600)",
  maxInFlight: "generations admitted (queued for prefill + running) before 429 (default 1024)",
  apiKey: "KEY[,KEY...] clients must send as Authorization: Bearer KEY; prefer the env twin (default none: open)",
  maxBodyBytes: "largest HTTP request body and gRPC request message (default 32 MiB)",
  maxPromptChars: "most prompt characters per request before tokenizing (default 16 per context token, at least 65536)",
  maxPromptTokens: "longest prompt in tokens; keep it at prefill's --max-batch-tokens (default min(max-model-len - 1, 32768))",
  tokenizerThreads: "threads that tokenize prompts over 4096 characters; 0 = on the event loop (default 1)",
  strictApi: "unknown request fields are a 400 instead of ignored with a warning header; env true|false (default off)",
  logLevel: "pino level (default info)",
  internalSecret: INTERNAL_SECURITY_HELP.internalSecret,
  internalSecretFile: INTERNAL_SECURITY_HELP.internalSecretFile,
  tlsCert: "PEM certificate presented to decode as client cert under mTLS (default none)",
  tlsKey: INTERNAL_SECURITY_HELP.tlsKey,
  tlsCa: "PEM CA bundle decode's certificate is verified against; calls to decode use TLS when it is set (default none: plaintext)",
} as const satisfies Record<keyof typeof schema.shape, string>;

/** Every schema key is a flag (--kebab-case VALUE) with its env twin. */
const SETTINGS = settingsFromKeys(Object.keys(schema.shape) as (keyof typeof schema.shape)[], "MOELA_ROUTER_", ["strictApi"], HELP);

/** How settings errors read: the first bad setting, with the flag list after an unknown flag. */
const PARSE = { name: "router", error: ConfigError, argvErrorSuffix: `; flags: ${flagList(SETTINGS)}`, report: "first" } as const;

/**
 * The validated settings with the checkpoint folder checked (only config.json: without tokenizer.json the
 * router serves token-id prompts only), the policy, API keys and internal security read.
 */
function routerConfigOf(settings: RouterFlags): RouterConfig {
  // Of several bad settings the first in this order is reported: model, policy, API keys, internal security.
  const model = checkpointFolderOf(settings.model, SETTINGS.model, PARSE);
  const policy = settings.policy === undefined ? DEFAULT_POLICY : readPolicy(settings.policy);
  const apiKeys = parseApiKeys(settings.apiKey);
  const secured = withInternalSecurity(settings, "MOELA_ROUTER_", "router", ConfigError);
  const { decode, servedModelName, requestTimeoutS, policy: _policy, apiKey: _apiKey, ...rest } = secured;
  return Object.freeze({
    ...rest,
    model,
    decode: Object.freeze([...new Set(decode)]),
    policy,
    servedModelName: servedModelName ?? basename(model),
    maxModelLen: rest.maxModelLen,
    requestTimeoutMs: Math.round(requestTimeoutS * 1000),
    apiKeys,
    ...apiLimitsOf(rest),
  });
}

export const USAGE = ["usage: router --model DIR [--decode H:P,...] [options]", "", ...usageLines(SETTINGS)].join("\n");

const PARSERS = configParsers(SETTINGS, schema, PARSE, routerConfigOf);

/** parseRouterConfig, or null when --help was asked for (main() then prints USAGE). */
export const parseRouterArgs = PARSERS.parseArgs;

/** Parse and validate flags (argv) over env twins; throws ConfigError naming the flag and its env twin. */
export const parseRouterConfig = PARSERS.parseConfig;

/** The request limits the router and `serve --role all` (one-process.ts) both take. */
export interface ApiLimitSettings {
  readonly maxBodyBytes: number;
  readonly maxPromptChars: number | undefined;
  readonly maxPromptTokens: number | undefined;
  readonly tokenizerThreads: number;
  readonly strictApi: boolean;
}

/** The request limits among validated settings. */
export function apiLimitsOf(
  c: Omit<ApiLimitSettings, "maxPromptChars" | "maxPromptTokens"> & {
    readonly maxPromptChars?: number | undefined;
    readonly maxPromptTokens?: number | undefined;
  },
): ApiLimitSettings {
  return {
    maxBodyBytes: c.maxBodyBytes,
    maxPromptChars: c.maxPromptChars,
    maxPromptTokens: c.maxPromptTokens,
    tokenizerThreads: c.tokenizerThreads,
    strictApi: c.strictApi,
  };
}

/**
 * --policy: JSON text (starts with "{") or the path of a .json file; checked by building the policy
 * once, so a bad plugin or parameter stops the router at start-up naming the flag.
 */
function readPolicy(value: string): PolicyConfig {
  const where = `--policy (env ${envOf("policy")})`;
  let text = value;
  let source = where;
  if (!value.trimStart().startsWith("{")) {
    const file = resolve(value);
    if (!existsSync(file)) throw new ConfigError(`router: ${where}: "${value}" is neither JSON nor an existing file`);
    text = readFileSync(file, "utf8");
    source = `${where} ${file}`;
  }
  const config = parsePolicyJson(text, `router: ${source}`);
  new Policy(config, `router: ${source}`);
  return config;
}

/** Sampling defaults from generation_config.json (as vLLM reads them); temperature 1, top_p 1, top_k off otherwise. */
export function readGenerationDefaults(model: string): { temperature: number; topP: number; topK: number } {
  const file = join(model, "generation_config.json");
  let g: Record<string, unknown> = {};
  if (existsSync(file)) {
    try {
      g = JSON.parse(readFileSync(file, "utf8")) as Record<string, unknown>;
    } catch (err) {
      throw new ConfigError(`${file}: not valid JSON (${errorMessage(err)})`);
    }
  }
  const num = (k: string, d: number): number => (typeof g[k] === "number" && Number.isFinite(g[k]) ? (g[k] as number) : d);
  const topK = num("top_k", -1);
  return { temperature: num("temperature", 1), topP: num("top_p", 1), topK: topK === 0 ? -1 : topK };
}
