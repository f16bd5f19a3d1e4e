/**
 * zod pieces the services' settings schemas share (STYLE.md point 2: each service validates its raw
 * strings once, with zod, at start-up), and the read-then-validate step of a config.ts.
 */
import { z } from "zod";
import { readSettings, validateSettings, type ReadSettingsOptions, type SchemaResult, type Settings, type ValidateOptions } from "./config.js";

/** host:port to listen on; port 0 picks a free one. */
export const listenAddressSetting = z
  .string()
  .regex(/^(\[[0-9a-fA-F:.]+\]|[^\s:[\]]+):(\d{1,5})$/, "must be host:port, e.g. 127.0.0.1:50051 or 0.0.0.0:0")
  .refine((s) => Number(s.slice(s.lastIndexOf(":") + 1)) <= 65535, "port must be in [0, 65535]");

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
 * (`o.help`). Throws `o.error` naming the flag and its env twin.
 */
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
