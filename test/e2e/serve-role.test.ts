// `moela serve` refusing a bad or missing --role: the CLI run as a process.
import { execFile } from "node:child_process";
import { promisify } from "node:util";
import { describe, expect, it } from "vitest";
import { MOELA_BIN } from "../../services/cli/src/launcher.js";

describe("moela serve", () => {
  const run = promisify(execFile);
  async function moela(args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
    try {
      const { stdout, stderr } = await run(process.execPath, [MOELA_BIN, ...args]);
      return { code: 0, stdout, stderr };
    } catch (err) {
      const e = err as { code: number; stdout: string; stderr: string };
      return { code: e.code, stdout: e.stdout, stderr: e.stderr };
    }
  }

  it("refuses an unknown role, listing the roles", async () => {
    const r = await moela(["serve", "--role", "gateway", "--model", "x"]);
    expect(r.code).toBe(2);
    expect(r.stderr).toMatch(/--role must be one of router, prefill, decode, expert-host, all, got "gateway"/);
  });

  it("without --role says it is required and exits 2; --help alone prints help and exits 0", async () => {
    const missing = await moela(["serve", "--model", "x"]);
    expect(missing.code).toBe(2);
    expect(missing.stderr).toMatch(/--role is required/);
    const help = await moela(["serve", "--help"]);
    expect(help.code).toBe(0);
    expect(help.stdout).toMatch(/Usage: moela serve/);
  });
});
