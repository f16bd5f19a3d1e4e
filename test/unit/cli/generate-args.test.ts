// `moela generate --speculative`: auto | on | off, --no-speculative the same as off, anything else refused.
import { describe, expect, it } from "vitest";
import { CommanderError } from "commander";
import type { GenerateCliOptions } from "../../../services/cli/src/generate.js";
import { buildProgram } from "../../../services/cli/src/main.js";

async function parseGenerate(argv: string[]): Promise<GenerateCliOptions> {
  const program = buildProgram();
  let got: GenerateCliOptions | undefined;
  const generate = program.commands.find((c) => c.name() === "generate")!;
  generate.action((opts: GenerateCliOptions) => {
    got = opts;
  });
  generate.configureOutput({ writeErr: () => {}, writeOut: () => {} });
  await program.parseAsync(["generate", "--model", "/m", ...argv], { from: "user" });
  return got!;
}

describe("moela generate --speculative", () => {
  it.each([
    [[], "auto"],
    [["--speculative", "auto"], "auto"],
    [["--speculative", "on"], "on"],
    [["--speculative=off"], "off"],
    [["--no-speculative"], false],
  ])("%j gives %j", async (argv, want) => {
    expect((await parseGenerate(argv)).speculative).toBe(want);
  });

  it("refuses another mode, naming the choices", async () => {
    const err = await parseGenerate(["--speculative", "sometimes"]).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(CommanderError);
    expect((err as CommanderError).message).toMatch(/argument 'sometimes' is invalid\. Allowed choices are auto, on, off/);
  });
});
