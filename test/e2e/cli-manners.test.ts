/**
 * `moela --version` prints the repository's package.json version, and `moela serve --role R --help` prints
 * that service's usage on stdout and exits 0 for every role (the CLI spawned as a user runs it).
 */
import { execFile } from "node:child_process";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { promisify } from "node:util";
import { describe, expect, it } from "vitest";
import { REPO_ROOT } from "../helpers/helm.js";
import { SERVICE_ROLES } from "../helpers/service-flags.js";

const execFileAsync = promisify(execFile);
const BIN = join(REPO_ROOT, "services/cli/bin/moela.js");

async function moela(...args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  try {
    const { stdout, stderr } = await execFileAsync(process.execPath, [BIN, ...args], { cwd: REPO_ROOT, timeout: 60_000 });
    return { code: 0, stdout, stderr };
  } catch (err) {
    const e = err as { code?: number; stdout?: string; stderr?: string };
    return { code: e.code ?? -1, stdout: e.stdout ?? "", stderr: e.stderr ?? "" };
  }
}

describe("moela CLI manners", () => {
  it("--version prints the package.json version", async () => {
    const { version } = JSON.parse(readFileSync(join(REPO_ROOT, "package.json"), "utf8")) as { version: string };
    for (const flag of ["--version", "-V"]) expect(await moela(flag)).toEqual({ code: 0, stdout: `${version}\n`, stderr: "" });
  });

  it.each(SERVICE_ROLES)("serve --role %s --help prints the service's usage and exits 0", async (role) => {
    const r = await moela("serve", "--role", role, "--help");
    expect(r.stderr).toBe("");
    expect(r.code).toBe(0);
    expect(r.stdout.startsWith(`usage: ${role} --model DIR`)).toBe(true);
    expect(r.stdout).toContain("--precision <v>");
    expect(r.stdout).toContain("--log-level <v>");
  });
});
