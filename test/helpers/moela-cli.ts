/** The moela CLI as a process (node services/cli/bin/moela.js), run from the repository root as the tests are. */
import { execFile } from "node:child_process";
import { promisify } from "node:util";

const run = promisify(execFile);

/** Runs `moela <args>` (with `env` added to this process's environment); rejects when it exits non-zero. */
export async function moela(args: string[], env: NodeJS.ProcessEnv = {}): Promise<{ stdout: string; stderr: string }> {
  return run("node", ["services/cli/bin/moela.js", ...args], { cwd: process.cwd(), maxBuffer: 64 << 20, env: { ...process.env, ...env } });
}

/** Runs `moela <args>`, which must fail: its exit code and stderr. */
export async function moelaFails(args: string[]): Promise<{ code: number; stderr: string }> {
  try {
    await moela(args);
  } catch (err) {
    const e = err as { code: number; stderr: string };
    return { code: e.code, stderr: e.stderr };
  }
  throw new Error("moela succeeded");
}
