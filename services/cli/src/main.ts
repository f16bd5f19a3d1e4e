/**
 * The `moela` command line. `moela generate` runs the whole model in this process (the single-process
 * path that the disaggregated cluster must agree with).
 */
import { readFileSync } from "node:fs";
import { Command, CommanderError } from "commander";
import { MoelaError } from "@moela/core";
import { addBenchCommand } from "./commands/bench.js";
import { addClusterCommand } from "./commands/cluster.js";
import { addCodecStudyCommand } from "./commands/codec-study.js";
import { addGenerateCommand } from "./commands/generate.js";
import { addPlanCommand } from "./commands/plan.js";
import { addServeCommand } from "./commands/serve.js";
import { addTrainCommand } from "./commands/train.js";

/** The platform's version: the repository's package.json (services/cli/src -> the root). */
export function moelaVersion(): string {
  const pkg = JSON.parse(readFileSync(new URL("../../../package.json", import.meta.url), "utf8")) as { version?: unknown };
  return typeof pkg.version === "string" ? pkg.version : "unknown";
}

export function buildProgram(): Command {
  const program = new Command("moela")
    .description("Serve DeepSeek-V3-family models (MLA, DeepSeekMoE, MTP), disaggregated or in one process")
    .version(moelaVersion(), "-V, --version", "print the moela version")
    .exitOverride()
    .configureOutput({ writeErr: (s) => process.stderr.write(s), writeOut: (s) => process.stdout.write(s) })
    // lets `serve` hand every flag after --role to the service untouched
    .enablePositionalOptions();

  addGenerateCommand(program);
  addServeCommand(program);
  addClusterCommand(program);
  addBenchCommand(program);
  addPlanCommand(program);
  addTrainCommand(program);
  addCodecStudyCommand(program);
  return program;
}

/** Entry point used by bin/moela.js; returns the process exit code. */
export async function run(argv: readonly string[]): Promise<number> {
  const program = buildProgram();
  try {
    await program.parseAsync([...argv], { from: "user" });
    return typeof process.exitCode === "number" ? process.exitCode : 0;
  } catch (err) {
    if (err instanceof CommanderError) return err.exitCode === 0 ? 0 : 2;
    if (err instanceof MoelaError) {
      process.stderr.write(`moela: ${err.message}\n`);
      return 2;
    }
    throw err;
  }
}
