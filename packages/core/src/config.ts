/**
 * The flag + env twin mechanism every service's config.ts shares (STYLE.md point 2): a settings table
 * (key -> flag, env twin, kind, help) becomes node:util parseArgs options; each setting's raw string is
 * the flag's value, else its env twin's; the service's own zod schema validates the strings, and an
 * error names both spellings. The validation rules themselves stay in each service.
 */
import { parseArgs } from "node:util";
import { errorMessage } from "./errors.js";

/** One setting: `--flag VALUE` by default; `bool`: `--flag` alone; `switch`: `--flag` / `--no-flag`. */
export interface Setting {
  readonly flag: string;
  readonly env: string;
  readonly bool?: boolean;
  readonly switch?: boolean;
  readonly help?: string;
}

export type Settings<K extends string = string> = { readonly [k in K]: Setting };

/** An error class that takes just a message (InvalidArgumentError, ConfigError). */
export type MessageError = new (message: string) => Error;

/** camelCase key -> kebab-case flag without dashes ("grpcAddress" -> "grpc-address"). */
export function kebabOf(key: string): string {
  return key.replace(/[A-Z]/g, (c) => `-${c.toLowerCase()}`);
}

/** camelCase key -> `${prefix}SNAKE_CASE` ("grpcAddress", "MOELA_ROUTER_" -> "MOELA_ROUTER_GRPC_ADDRESS"). */
export function envNameOf(prefix: string, key: string): string {
  return `${prefix}${key.replace(/[A-Z]/g, (c) => `_${c}`).toUpperCase()}`;
}

/** A table whose flags and env twins are derived from the keys; `switches` are --x / --no-x keys; `help`: --help lines. */
export function settingsFromKeys<K extends string>(
  keys: readonly K[],
  envPrefix: string,
  switches: readonly K[] = [],
  help: Partial<Record<K, string>> = {},
): Settings<K> {
  return Object.fromEntries(
    keys.map((k) => [
      k,
      {
        flag: `--${kebabOf(k)}`,
        env: envNameOf(envPrefix, k),
        ...(switches.includes(k) ? { switch: true } : {}),
        ...(help[k] !== undefined ? { help: help[k] } : {}),
      },
    ]),
  ) as Settings<K>;
}

/** Every flag, switches as "--x --no-x", space-separated. */
export function flagList(settings: Settings): string {
  return Object.values<Setting>(settings)
    .map((s) => (s.switch === true ? `${s.flag} --no-${s.flag.slice(2)}` : s.flag))
    .join(" ");
}

/** One usage line per setting: `  --flag <v>   help [env NAME]`. */
export function usageLines(settings: Settings, width = 26): string[] {
  const spelling = (s: Setting): string => (s.switch === true ? `${s.flag}, --no-${s.flag.slice(2)}` : s.flag + (s.bool === true ? "" : " <v>"));
  return Object.values<Setting>(settings).map((s) => `  ${spelling(s).padEnd(width)} ${s.help ?? ""} [env ${s.env}]`);
}

export interface ReadSettingsOptions {
  /** The service: every message starts "<name>: ". */
  readonly name: string;
  readonly error: MessageError;
  /** Accept --help (then `help` is true). */
  readonly help?: boolean;
  /** Appended to parseArgs' own message (an unknown flag, a missing value): the usage, or the flag list. */
  readonly argvErrorSuffix: string;
}

/**
 * Flags (argv) over env twins: each setting's raw string, absent when neither is given. A bool flag
 * reads "true"; a switch reads "true" / "false" (both given: an error).
 */
export function readSettings<K extends string>(
  settings: Settings<K>,
  argv: readonly string[],
  env: NodeJS.ProcessEnv,
  o: ReadSettingsOptions,
): { help: boolean; raw: Partial<Record<K, string>> } {
  const options: Record<string, { type: "string" | "boolean" }> = o.help === true ? { help: { type: "boolean" } } : {};
  for (const s of Object.values<Setting>(settings)) {
    const name = s.flag.slice(2);
    options[name] = { type: s.bool === true || s.switch === true ? "boolean" : "string" };
    if (s.switch === true) options[`no-${name}`] = { type: "boolean" };
  }
  let values: Record<string, string | boolean | undefined>;
  try {
    values = parseArgs({ args: [...argv], options, strict: true, allowPositionals: false }).values;
  } catch (err) {
    throw new o.error(`${o.name}: ${errorMessage(err)}${o.argvErrorSuffix}`);
  }
  const raw: Partial<Record<K, string>> = {};
  for (const [key, s] of Object.entries(settings) as [K, Setting][]) {
    let v: string | boolean | undefined = values[s.flag.slice(2)];
    if (s.switch === true) {
      const off = values[`no-${s.flag.slice(2)}`];
      if (v === true && off === true) throw new o.error(`${o.name}: ${s.flag} and --no-${s.flag.slice(2)} both given`);
      v = v === true ? "true" : off === true ? "false" : undefined;
    }
    const value = v !== undefined ? String(v) : env[s.env];
    if (value !== undefined) raw[key] = value;
  }
  return { help: values.help === true, raw };
}

/** The shape of a zod safeParse result this module reads (no zod dependency in core). */
export interface SchemaResult<T> {
  readonly success: boolean;
  readonly data?: T;
  readonly error?: { readonly issues: readonly { readonly path: readonly PropertyKey[]; readonly message: string }[] };
}

export interface ValidateOptions {
  readonly name: string;
  readonly error: MessageError;
  /**
   * "all": every issue, one line each, `--flag / ENV: message (got "v")`, under "invalid configuration:";
   * "first": the first issue only, `--flag (env ENV) message, got "v"`.
   */
  readonly report: "all" | "first";
}

/** The schema's output for the raw strings, or an error naming each bad setting's flag and env twin. */
export function validateSettings<K extends string, T>(settings: Settings<K>, raw: Partial<Record<K, string>>, result: SchemaResult<T>, o: ValidateOptions): T {
  if (result.success) return result.data as T;
  const issues = result.error?.issues ?? [];
  const describe = (issue: (typeof issues)[number]): { s: Setting; given: string | undefined } => {
    const key = String(issue.path[0] ?? "") as K;
    const s: Setting = settings[key] ?? { flag: `--${kebabOf(key)}`, env: "" };
    return { s, given: raw[key] };
  };
  if (o.report === "first") {
    const issue = issues[0]!;
    const { s, given } = describe(issue);
    throw new o.error(`${o.name}: ${s.flag} (env ${s.env}) ${issue.message}${given === undefined ? "" : `, got "${given}"`}`);
  }
  const lines = issues.map((issue) => {
    const { s, given } = describe(issue);
    return `${s.flag} / ${s.env}: ${issue.message}${given === undefined ? "" : ` (got "${given}")`}`;
  });
  throw new o.error(`${o.name}: invalid configuration:\n  ${lines.join("\n  ")}`);
}

/** "host:port" -> {host, port} (brackets of an IPv6 host removed). */
export function splitHostPort(address: string): { host: string; port: number } {
  const i = address.lastIndexOf(":");
  return { host: address.slice(0, i).replace(/^\[(.*)\]$/, "$1"), port: Number(address.slice(i + 1)) };
}
