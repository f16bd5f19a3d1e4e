/** `moela plan <config.json | folder>`: read the config, plan it with @moela/planner, print a table or JSON. */
import { readFileSync, statSync } from "node:fs";
import { join } from "node:path";
import { ConfigError, errorMessage, InvalidArgumentError } from "@moela/core";
import { formatPlanTable, planModel, planToJson, type PlanOptions } from "@moela/planner";

/** What commander parses: `--bandwidth-gbps` arrives as bandwidthGbps, the rest by PlanOptions' names. */
export interface PlanCliOptions extends Omit<PlanOptions, "bandwidthGBps"> {
  bandwidthGbps?: number;
  json?: boolean;
}

/** The config.json a path names: the file itself, or config.json inside a folder. */
export function resolveConfigPath(path: string): string {
  let st;
  try {
    st = statSync(path);
  } catch {
    throw new InvalidArgumentError(`${path}: no such file or folder`);
  }
  return st.isDirectory() ? join(path, "config.json") : path;
}

export function readConfigJson(file: string): unknown {
  let text: string;
  try {
    text = readFileSync(file, "utf8");
  } catch (err) {
    throw new InvalidArgumentError(`${file}: cannot read it (${(err as NodeJS.ErrnoException).code ?? String(err)})`);
  }
  try {
    return JSON.parse(text);
  } catch (err) {
    throw new ConfigError(`${file}: not valid JSON (${errorMessage(err)})`);
  }
}

export async function runPlan(path: string, opts: PlanCliOptions): Promise<number> {
  const file = resolveConfigPath(path);
  const { json, bandwidthGbps, ...rest } = opts;
  const plan = planModel(readConfigJson(file), { ...rest, ...(bandwidthGbps === undefined ? {} : { bandwidthGBps: bandwidthGbps }) }, file);
  process.stdout.write(json ? `${JSON.stringify(planToJson(plan, file), null, 2)}\n` : formatPlanTable(plan, file));
  return 0;
}
