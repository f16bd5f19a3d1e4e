/**
 * @moela/client as another project gets it: scripts/build-client.ts output, packed with `npm pack`
 * and unpacked into a consumer folder's node_modules. The consumer folder lies under the
 * repository's git-ignored .moela/ so that the package's third-party dependencies (@grpc/grpc-js,
 * ...) resolve from the repository's node_modules, as they would from the consumer's own.
 */
import { execFile } from "node:child_process";
import { mkdirSync, mkdtempSync, readFileSync, renameSync, rmSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { promisify } from "node:util";
import { buildClient } from "../../scripts/build-client.js";

const execFileAsync = promisify(execFile);
export const REPO_ROOT = fileURLToPath(new URL("../../", import.meta.url));

export interface ConsumerProject {
  /** The consumer folder: node_modules/@moela/client is the unpacked tarball. */
  readonly dir: string;
  /** The .tgz npm pack made. */
  readonly tarball: string;
  /** `tsc --noEmit` over `files` (in dir) with strict settings and skipLibCheck off; resolves with tsc's output, rejects on errors. */
  typecheck(files: readonly string[]): Promise<string>;
  remove(): void;
}

export async function installPackedClient(): Promise<ConsumerProject> {
  const base = join(REPO_ROOT, ".moela", "tmp");
  mkdirSync(base, { recursive: true });
  const work = mkdtempSync(join(base, "client-"));
  const dist = join(work, "dist");
  buildClient(dist);
  const { stdout } = await execFileAsync("npm", ["pack", dist, "--pack-destination", work, "--json", "--offline"], { cwd: work });
  const packed = JSON.parse(stdout) as Array<{ filename: string }>;
  const tarball = join(work, packed[0]!.filename);
  const dir = join(work, "consumer");
  const scope = join(dir, "node_modules", "@moela");
  mkdirSync(scope, { recursive: true });
  await execFileAsync("tar", ["xzf", tarball, "-C", scope]);
  renameSync(join(scope, "package"), join(scope, "client"));
  writeFileSync(join(dir, "package.json"), `${JSON.stringify({ name: "consumer", private: true, type: "module" }, null, 2)}\n`);
  const tsc = join(REPO_ROOT, "node_modules", "typescript", "bin", "tsc");
  return {
    dir,
    tarball,
    typecheck: async (files) => {
      const tsconfig = {
        compilerOptions: { target: "ES2022", module: "NodeNext", moduleResolution: "NodeNext", strict: true, noEmit: true, skipLibCheck: false, types: ["node"] },
        files,
      };
      writeFileSync(join(dir, "tsconfig.json"), JSON.stringify(tsconfig));
      try {
        const { stdout: out } = await execFileAsync(process.execPath, [tsc, "-p", "tsconfig.json"], { cwd: dir });
        return out;
      } catch (err) {
        const e = err as { stdout?: string; stderr?: string };
        throw new Error(`the consumer does not type-check against the packed @moela/client:\n${e.stdout ?? ""}${e.stderr ?? ""}`);
      }
    },
    remove: () => rmSync(work, { recursive: true, force: true }),
  };
}

/** The code block under "## Example" in packages/client/README.md. */
export function readmeExample(): string {
  const readme = readFileSync(join(REPO_ROOT, "packages/client/README.md"), "utf8");
  const section = readme.split(/^## Example\s*$/m)[1];
  const block = section === undefined ? null : /```ts\n([\s\S]*?)```/.exec(section);
  if (block === null) throw new Error('packages/client/README.md has no ```ts block under "## Example"');
  return block[1]!;
}
