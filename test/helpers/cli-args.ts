/** The moela CLI's argument parsing, without running a command. */
import type { ClusterCliOptions } from "../../services/cli/src/cluster.js";
import { buildProgram } from "../../services/cli/src/main.js";

/** The options `moela cluster <argv>` would run with. */
export async function parseClusterArgs(argv: string[]): Promise<ClusterCliOptions> {
  const program = buildProgram();
  let got: ClusterCliOptions | undefined;
  program.commands
    .find((c) => c.name() === "cluster")!
    .action((opts: ClusterCliOptions) => {
      got = opts;
    });
  await program.parseAsync(["cluster", ...argv], { from: "user" });
  return got!;
}
