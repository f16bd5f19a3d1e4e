/**
 * `moela serve --role <role> [service flags...]`: run one service in this process. The flags after
 * the role go to that service's `main(argv, env)` untouched; the service parses and validates them
 * (services/<role>/src/config.ts) and prints its ready line when serving.
 *
 * The service is loaded by path from services/<role>/src/main.ts rather than by package name:
 * the CLI is the one place that hosts every service, services never import each other, and a
 * path keeps `moela serve` working in a checkout whose workspace links predate a new service.
 *
 * `--role all` runs router, prefill, decode and the experts in this one process, with the OpenAI API on it
 * (services/router/src/one-process.ts: the router's HTTP handlers over the engine's own batching loop).
 *
 * Started by the launcher, a service exits when the launcher dies, whatever killed it
 * (parent-watch.ts): the watch is installed here, once, for every role.
 */
import { existsSync } from "node:fs";
import { basename, dirname } from "node:path";
import { fileURLToPath, pathToFileURL } from "node:url";
import { InternalError, InvalidArgumentError, applyHeapGrowth } from "@moela/core";
import { ROLES, isRole, type Role } from "./topology.js";
import { exitWithParent } from "./parent-watch.js";

export type ServiceMain = (argv: string[], env: NodeJS.ProcessEnv) => Promise<number>;

/** The role that runs everything in one process. */
export const ALL_ROLE = "all";

/**
 * services/<role>/src/main.ts; `all`: services/router/src/one-process.ts. Run from the compiled JavaScript
 * (bin/compiled-js.mjs), the same files in services/<role>/.compiled/, as .js.
 */
export function serviceMainPath(role: Role | typeof ALL_ROLE): string {
  const self = import.meta.url;
  const folder = basename(dirname(fileURLToPath(self)));
  const ext = self.endsWith(".ts") ? ".ts" : ".js";
  if (role === ALL_ROLE) return fileURLToPath(new URL(`../../router/${folder}/one-process${ext}`, self));
  return fileURLToPath(new URL(`../../${role}/${folder}/main${ext}`, self));
}

export async function loadServiceMain(role: string): Promise<ServiceMain> {
  if (role !== ALL_ROLE && !isRole(role)) throw new InvalidArgumentError(`--role must be one of ${[...ROLES, ALL_ROLE].join(", ")}, got "${role}"`);
  const file = serviceMainPath(role);
  if (!existsSync(file)) throw new InternalError(`the ${role} service is not in this checkout (${file} is missing)`);
  const mod = (await import(pathToFileURL(file).href)) as { main?: unknown };
  if (typeof mod.main !== "function") throw new InternalError(`${file} does not export main(argv, env)`);
  return mod.main as ServiceMain;
}

/** Run the role's main with the remaining flags; returns its exit code. */
export async function runServe(role: string, argv: readonly string[], env: NodeJS.ProcessEnv = process.env): Promise<number> {
  // Its stdout and stderr went to the launcher too, so there is nobody left to tell when it fires.
  exitWithParent(env);
  // Fewer full collections under load (packages/core/src/heap-growth.ts says why).
  applyHeapGrowth(env);
  const main = await loadServiceMain(role);
  const code = await main([...argv], env);
  // The service closed what it opened; should a stray handle (a socket, a timer) still hold the
  // event loop, leave anyway once stdout and stderr drained, so a stopped service never lingers.
  setTimeout(() => process.exit(code), 3_000).unref();
  return code;
}

/** `moela cluster` options that mean the same under `--role all`: their serve --role all flag. */
const ONE_PROCESS_FLAGS: Readonly<Record<string, string>> = {
  model: "--model",
  precision: "--precision",
  host: "--host",
  port: "--port",
  servedModelName: "--served-model-name",
  logLevel: "--log-level",
};

/**
 * `moela cluster --role all ...` (so `npm start -- --role all` works): the serve --role all flags for the
 * cluster options that have a meaning in one process (--api-key travels in the environment, never argv).
 * A cluster-only option the user gave (`given`) is an error naming it rather than silently dropped.
 */
export function oneProcessFromCluster(
  opts: Readonly<Record<string, unknown>>,
  given: (key: string) => boolean,
  env: NodeJS.ProcessEnv,
): { argv: string[]; env: NodeJS.ProcessEnv } {
  const argv: string[] = [];
  for (const [key, value] of Object.entries(opts)) {
    if (key === "role" || value === undefined) continue;
    const flag = ONE_PROCESS_FLAGS[key];
    if (flag !== undefined) argv.push(flag, String(value));
    else if (key !== "apiKey" && given(key)) {
      throw new InvalidArgumentError(
        `--${key.replace(/[A-Z]/g, (c) => `-${c.toLowerCase()}`)} applies to the cluster only, not to --role all (see moela serve --role all --help)`,
      );
    }
  }
  const apiKey = typeof opts["apiKey"] === "string" ? opts["apiKey"] : env["MOELA_ROUTER_API_KEY"];
  return { argv, env: apiKey === undefined ? env : { ...env, MOELA_ALL_API_KEY: apiKey } };
}
