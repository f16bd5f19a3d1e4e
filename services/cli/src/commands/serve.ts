/** `moela serve --role R`: one service in this process (serve.ts); the flags after --role go to it. */
import { type Command } from "commander";
import { runServe } from "../serve.js";

/** `--role R` / `--role=R` given after a service flag (commander passed it through): take it out. */
function extractRole(flags: string[]): { role: string | undefined; serviceFlags: string[] } {
  const i = flags.findIndex((f) => f === "--role" || f.startsWith("--role="));
  if (i < 0) return { role: undefined, serviceFlags: flags };
  const f = flags[i]!;
  const role = f === "--role" ? flags[i + 1] : f.slice("--role=".length);
  return { role, serviceFlags: flags.filter((_, j) => j !== i && !(f === "--role" && j === i + 1)) };
}

export function addServeCommand(program: Command): void {
  program
    .command("serve")
    .description("run one service in this process; flags after --role go to the service (see its --help)")
    .option("--role <role>", "router | prefill | decode | expert-host | all (everything in this process, OpenAI API on --port) (required)")
    .argument("[service-flags...]", "the service's own flags, e.g. --model DIR --grpc-address 127.0.0.1:0")
    // --help after --role is the service's; without a role it is this command's
    .helpOption(false)
    .passThroughOptions()
    .allowUnknownOption()
    .action(async (flags: string[], opts: { role?: string }, cmd: Command) => {
      const { role, serviceFlags } = opts.role !== undefined ? { role: opts.role, serviceFlags: flags } : extractRole(flags);
      if (role === undefined) {
        const asked = serviceFlags.some((f) => f === "--help" || f === "-h");
        if (!asked) process.stderr.write("error: --role is required (moela serve --role ROLE [service flags...])\n\n");
        (asked ? process.stdout : process.stderr).write(cmd.helpInformation());
        process.exitCode = asked ? 0 : 2;
        return;
      }
      process.exitCode = await runServe(role, serviceFlags);
    });
}
