/**
 * How far V8's old generation may grow past what survived the last full collection before the next one starts
 * (V8's --heap-growing-percent), set for every service process by `moela serve`, and by `moela generate`.
 *
 * Why a fixed figure: with V8's own factor the decode service, serving 16 streams, began incremental marking again
 * right after each full collection (33 MB live, 24 MB of room, "Start (task)" in --trace-incremental-marking), so it
 * ran a full collection about every 250 ms: about 300 in a 30-second run, with V8's marking threads busy on the cores
 * the expert-hosts compute on. At 200 % the same run had 13 (docs/PERFORMANCE.md, "Full collections in decode, and the hosts yielding the core"). The price is
 * memory: a service's old generation may reach about three times its live size (a decode instance lives in about
 * 35 MB of JavaScript heap; its weights and KV cache are outside it).
 */
import { setFlagsFromString } from "node:v8";
import { InvalidArgumentError } from "./errors.js";

/** What `moela serve` sets unless told otherwise. */
export const DEFAULT_HEAP_GROWING_PERCENT = 200;

/** The environment variable that overrides it; 0 leaves V8's own factor. */
export const HEAP_GROWING_PERCENT_ENV = "MOELA_HEAP_GROWING_PERCENT";

const V8_FLAG = "--heap-growing-percent";

/**
 * The V8 flag to set for this process, or null to set none: when the variable is 0, or when the process was started
 * with the flag already (node's own arguments or NODE_OPTIONS), which wins.
 */
export function heapGrowthFlag(env: NodeJS.ProcessEnv, execArgv: readonly string[]): string | null {
  const raw = env[HEAP_GROWING_PERCENT_ENV];
  let percent = DEFAULT_HEAP_GROWING_PERCENT;
  if (raw !== undefined && raw.trim() !== "") {
    const n = Number(raw);
    if (!Number.isInteger(n) || n < 0 || n > 1000)
      throw new InvalidArgumentError(`${HEAP_GROWING_PERCENT_ENV} must be an integer from 0 (V8's own factor) to 1000, got "${raw}"`);
    percent = n;
  }
  if (percent === 0) return null;
  const given = [...execArgv, ...(env["NODE_OPTIONS"] ?? "").split(/\s+/)];
  if (given.some((a) => a === V8_FLAG || a.startsWith(`${V8_FLAG}=`) || a === "--heap_growing_percent" || a.startsWith("--heap_growing_percent="))) return null;
  return `${V8_FLAG}=${percent}`;
}

/**
 * Sets the factor for this process (see heapGrowthFlag); returns the flag set, or null. V8 reads the factor each time
 * it sets the next collection's limit, so setting it at start, before the work allocates, acts as starting node
 * with it.
 */
export function applyHeapGrowth(env: NodeJS.ProcessEnv, execArgv: readonly string[] = process.execArgv): string | null {
  const flag = heapGrowthFlag(env, execArgv);
  if (flag !== null) setFlagsFromString(flag);
  return flag;
}
