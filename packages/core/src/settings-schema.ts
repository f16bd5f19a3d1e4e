/**
 * zod pieces the services' settings schemas share (STYLE.md point 2: each service validates its raw
 * strings once, with zod, at start-up), and the read-then-validate step of a config.ts.
 */
import { existsSync } from "node:fs";
import { join, resolve } from "node:path";
import { z } from "zod";
import {
  readSettings,
  validateSettings,
  type MessageError,
  type ReadSettingsOptions,
  type SchemaResult,
  type Setting,
  type Settings,
  type ValidateOptions,
} from "./config.js";

/** host:port to listen on; port 0 picks a free one. */
export const listenAddressSetting = z
  .string()
  .regex(/^(\[[0-9a-fA-F:.]+\]|[^\s:[\]]+):(\d{1,5})$/, "must be host:port, e.g. 127.0.0.1:50051 or 0.0.0.0:0")
  .refine((s) => Number(s.slice(s.lastIndexOf(":") + 1)) <= 65535, "port must be in [0, 65535]");

/** host:port to dial or listen on (the port's range is not checked). */
export const hostPortSetting = z.string().regex(/^(\[[0-9a-fA-F:.]+\]|[^:\s]+):\d{1,5}$/, "must be host:port");

/** The Redis of BullMQ's queues and the instance registry. */
export const redisUrlSetting = z.string().regex(/^rediss?:\/\/.+/, "must be a redis:// or rediss:// URL");

/** The Redis key prefix of a deployment's queues and registry; { } so that a prefix can be a Redis Cluster hash tag. */
export const queuePrefixSetting = z.string().regex(/^[A-Za-z0-9_.{}-]+$/, "may only hold letters, digits and _ . - { }");

/** The Redis settings of a service that needs one (router, prefill): the queues and the registry, a local Redis by default. */
export const REDIS_SCHEMA = { redisUrl: redisUrlSetting.default("redis://127.0.0.1:6379"), queuePrefix: queuePrefixSetting.default("moela") } as const;

/** The Redis settings of a service that joins the instance registry only when given a Redis (decode, expert-host). */
export const OPTIONAL_REDIS_SCHEMA = { redisUrl: redisUrlSetting.optional(), queuePrefix: queuePrefixSetting.optional() } as const;

/** A comma-separated list: its items, trimmed, the empty ones dropped. */
export const commaListSetting = z.string().transform((s) =>
  s
    .split(",")
    .map((x) => x.trim())
    .filter((x) => x.length > 0),
);

/** A non-negative integer of at least `min`, written in decimal digits. */
export const intSetting = (min: number) =>
  z
    .string()
    .regex(/^\d+$/, "must be a non-negative integer")
    .transform(Number)
    .pipe(z.number().int().min(min, `must be >= ${min}`).max(Number.MAX_SAFE_INTEGER));

/** A switch: true | false | 1 | 0, or "" (set but empty). */
export const boolSetting = z.enum(["true", "false", "1", "0", ""], { message: "must be true or false" }).transform((s) => s === "true" || s === "1");

/**
 * Flags (argv) over env twins, validated by `schema`: its output, or null when --help was asked for
 * (only accepted with `o.help`). Throws `o.error` naming the flag and its env twin.
 */
export function parseSettings<K extends string, T>(
  settings: Settings<K>,
  argv: readonly string[],
  env: NodeJS.ProcessEnv,
  schema: { safeParse(raw: unknown): SchemaResult<T> },
  o: ReadSettingsOptions & ValidateOptions & { readonly help: true },
): T | null;
export function parseSettings<K extends string, T>(
  settings: Settings<K>,
  argv: readonly string[],
  env: NodeJS.ProcessEnv,
  schema: { safeParse(raw: unknown): SchemaResult<T> },
  o: ReadSettingsOptions & ValidateOptions & { readonly help?: false },
): T;
export function parseSettings<K extends string, T>(
  settings: Settings<K>,
  argv: readonly string[],
  env: NodeJS.ProcessEnv,
  schema: { safeParse(raw: unknown): SchemaResult<T> },
  o: ReadSettingsOptions & ValidateOptions,
): T | null {
  const { help, raw } = readSettings(settings, argv, env, o);
  if (help) return null;
  return validateSettings(settings, raw, schema.safeParse(raw), o);
}

/** A service's two ways into its config: main()'s, which takes --help, and its callers' (tests, tools), which do not. */
export interface ConfigParsers<C> {
  /** The config, or null when --help was asked for (main() then prints the usage). */
  readonly parseArgs: (argv: readonly string[], env: NodeJS.ProcessEnv) => C | null;
  /** The config; --help is an unknown flag here. */
  readonly parseConfig: (argv: readonly string[], env: NodeJS.ProcessEnv) => C;
}

/**
 * Both parsers of a service's config over one settings table: flags (argv) over env twins, validated by
 * `schema`, then made into the config by `configOf`. Throw `o.error` naming the flag and its env twin.
 */
export function configParsers<K extends string, T, C>(
  settings: Settings<K>,
  schema: { safeParse(raw: unknown): SchemaResult<T> },
  o: ReadSettingsOptions & ValidateOptions,
  configOf: (validated: T) => C,
): ConfigParsers<C> {
  return {
    parseArgs: (argv, env) => {
      const validated = parseSettings(settings, argv, env, schema, { ...o, help: true });
      return validated === null ? null : configOf(validated);
    },
    parseConfig: (argv, env) => configOf(parseSettings(settings, argv, env, schema, { ...o, help: false })),
  };
}

/**
 * The absolute checkpoint folder a --model setting names, checked at start-up to hold config.json, so a
 * wrong path stops the service with an error naming the flag and its env twin rather than at the first load.
 */
export function checkpointFolderOf(value: string, setting: Setting, o: { readonly name: string; readonly error: MessageError }): string {
  const folder = resolve(value);
  if (!existsSync(join(folder, "config.json"))) throw new o.error(`${o.name}: ${setting.flag} (env ${setting.env}) "${value}" has no config.json`);
  return folder;
}
