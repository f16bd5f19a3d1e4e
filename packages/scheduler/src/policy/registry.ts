/**
 * Every policy plugin by its type id: the one place a configuration's `type` is looked up. To add a
 * plugin, give it a folder (index.ts + README.md) and one line here.
 */
import { ConfigError } from "@moela/core";
import { hasFreeKvFilter } from "./filters/has-free-kv/index.js";
import { healthyFilter } from "./filters/healthy/index.js";
import { samePrecisionFilter } from "./filters/same-precision/index.js";
import { maxScorePicker } from "./pickers/max-score/index.js";
import { weightedRandomPicker } from "./pickers/weighted-random/index.js";
import { freeKvScorer } from "./scorers/free-kv/index.js";
import { loadScorer } from "./scorers/load/index.js";
import { prefixAffinityScorer } from "./scorers/prefix-affinity/index.js";
import { queueDepthScorer } from "./scorers/queue-depth/index.js";
import type { FilterFactory, PickerFactory, PluginFactory, ScorerFactory } from "./types.js";

export const FILTERS: Readonly<Record<string, FilterFactory>> = {
  healthy: healthyFilter,
  "same-precision": samePrecisionFilter,
  "has-free-kv": hasFreeKvFilter,
};

export const SCORERS: Readonly<Record<string, ScorerFactory>> = {
  "free-kv": freeKvScorer,
  load: loadScorer,
  "queue-depth": queueDepthScorer,
  "prefix-affinity": prefixAffinityScorer,
};

export const PICKERS: Readonly<Record<string, PickerFactory>> = {
  "max-score": maxScorePicker,
  "weighted-random": weightedRandomPicker,
};

/** Type ids promised to plugins that are built elsewhere; a config naming one gets a clear error until it lands. */
export const RESERVED: Readonly<Record<string, string>> = {};

function lookup<F extends PluginFactory<unknown>>(kind: string, table: Readonly<Record<string, F>>, type: string, path: string): F {
  const f = Object.hasOwn(table, type) ? table[type] : undefined;
  if (f !== undefined) return f;
  if (Object.hasOwn(RESERVED, type)) throw new ConfigError(`${path}: ${kind} "${type}" (${RESERVED[type]}) is not available in this build`);
  throw new ConfigError(`${path}: unknown ${kind} "${type}" (known: ${Object.keys(table).join(", ")})`);
}

export const filterFactory = (type: string, path: string): FilterFactory => lookup("filter", FILTERS, type, path);
export const scorerFactory = (type: string, path: string): ScorerFactory => lookup("scorer", SCORERS, type, path);
export const pickerFactory = (type: string, path: string): PickerFactory => lookup("picker", PICKERS, type, path);
