/**
 * A policy's configuration: which filters, scorers (with weights) and picker, by type id, each with
 * its parameters. The same shape in JSON (the router's --policy) or YAML (Helm values):
 *
 *   { "filters": [{ "type": "healthy" }, { "type": "has-free-kv" }],
 *     "scorers": [{ "type": "free-kv", "weight": 2 }, { "type": "load", "weight": 1 }],
 *     "picker":  { "type": "max-score" } }
 *
 * Every entry may carry a `name` (how decisions label it; default its type, which must then be unique
 * among the scorers) and `parameters` (validated by the plugin). Omitted sections take the default's.
 */
import { ConfigError, errorMessage } from "@moela/core";
import { z } from "zod";

const name = z.string().regex(/^[a-z0-9][a-z0-9._-]{0,63}$/, "must be 1-64 of a-z 0-9 . _ - (starting with a letter or digit)");

const plugin = z.strictObject({
  type: z.string().min(1, "is required"),
  name: name.optional(),
  parameters: z.record(z.string(), z.unknown()).optional(),
});

const scorer = plugin.extend({
  weight: z.number().min(0, "must be >= 0").max(1000).default(1),
});

const schema = z.strictObject({
  filters: z.array(plugin).max(32).optional(),
  scorers: z.array(scorer).max(32).optional(),
  picker: plugin.optional(),
});

export type PluginSpec = z.output<typeof plugin>;
export type ScorerSpec = z.output<typeof scorer>;

export interface PolicyConfig {
  readonly filters: readonly PluginSpec[];
  readonly scorers: readonly ScorerSpec[];
  readonly picker: PluginSpec;
}

/**
 * The default decode policy: only healthy instances whose cache can hold the request, preferring room
 * now (free-kv, weight 2) over idleness (load, weight 1), the highest total wins.
 */
export const DEFAULT_POLICY: PolicyConfig = Object.freeze({
  filters: [{ type: "healthy" }, { type: "has-free-kv" }],
  scorers: [
    { type: "free-kv", weight: 2 },
    { type: "load", weight: 1 },
  ],
  picker: { type: "max-score" },
});

/**
 * `value` (parsed JSON/YAML) as a PolicyConfig over the defaults; ConfigError naming `source` and the
 * path of the bad field (e.g. `--policy: scorers[1].weight: must be >= 0`).
 */
export function parsePolicyConfig(value: unknown, source = "policy"): PolicyConfig {
  const r = schema.safeParse(value);
  if (!r.success) {
    const issue = r.error.issues[0]!;
    const path = issue.path
      .map((p) => (typeof p === "number" ? `[${p}]` : `.${String(p)}`))
      .join("")
      .replace(/^\./, "");
    throw new ConfigError(`${source}: ${path === "" ? "" : `${path}: `}${issue.message}`);
  }
  return Object.freeze({
    filters: r.data.filters ?? DEFAULT_POLICY.filters,
    scorers: r.data.scorers ?? DEFAULT_POLICY.scorers,
    picker: r.data.picker ?? DEFAULT_POLICY.picker,
  });
}

/** `text` (JSON) as a PolicyConfig; ConfigError naming `source` when it is not JSON or not a policy. */
export function parsePolicyJson(text: string, source = "policy"): PolicyConfig {
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch (err) {
    throw new ConfigError(`${source}: not valid JSON (${errorMessage(err)})`);
  }
  return parsePolicyConfig(value, source);
}
