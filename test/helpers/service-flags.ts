/**
 * Runs a deployment's flags through the real service's config parser (services/<role>/src/config.ts),
 * so docker-compose.yml and the Helm chart cannot pass a flag or value the service would reject.
 */
import { existsSync } from "node:fs";
import { join } from "node:path";
import { pathToFileURL } from "node:url";
import { REPO_ROOT } from "./helm.js";

export const SERVICE_ROLES = ["router", "prefill", "decode", "expert-host"] as const;
export type ServiceRole = (typeof SERVICE_ROLES)[number];

export function serviceConfigPath(role: ServiceRole): string {
  return join(REPO_ROOT, "services", role, "src", "config.ts");
}

/** Whether the role's config.ts exists in this checkout (services land one by one). */
export function hasServiceConfig(role: ServiceRole): boolean {
  return existsSync(serviceConfigPath(role));
}

type Parse = (argv: readonly string[], env: NodeJS.ProcessEnv) => unknown;

/**
 * Parse `args` as the role's service would at start-up (flags only, empty environment). The --model
 * value (a path inside the container) is swapped for the repository's tiny model, because parsers
 * that read config.json need a folder that exists here; every other flag is checked as given.
 * Returns the frozen config; throws the service's own error for a bad flag.
 */
export async function parseServiceFlags(role: ServiceRole, args: readonly string[]): Promise<Record<string, unknown>> {
  const mod = (await import(pathToFileURL(serviceConfigPath(role)).href)) as Record<string, unknown>;
  const names = Object.keys(mod).filter((k) => /^parse\w*Config$/.test(k) && typeof mod[k] === "function");
  if (names.length !== 1) throw new Error(`${serviceConfigPath(role)}: expected one parse*Config export, found [${names.join(", ")}]`);
  const parse = mod[names[0]!] as Parse;
  const at = args.indexOf("--model");
  const local = args.map((a, i) => (at >= 0 && i === at + 1 ? join(REPO_ROOT, "models/tiny-v3") : a));
  const cfg = parse(local, {});
  if (cfg === null || typeof cfg !== "object") throw new Error(`${role}: parser returned ${String(cfg)} for ${local.join(" ")}`);
  return cfg as Record<string, unknown>;
}

/** The value following `flag` in an argument list (undefined when absent). */
export function flagValue(args: readonly string[], flag: string): string | undefined {
  const i = args.indexOf(flag);
  return i >= 0 ? args[i + 1] : undefined;
}
