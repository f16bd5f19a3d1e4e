/**
 * @moela/client as another project gets it: `npm pack` in packages/client (its prepack script builds
 * dist/ with scripts/build-client.ts), then `npm install <tarball>` in a scratch project under the
 * system temp folder, outside this repository, so nothing resolves from the repository's
 * node_modules: the package's dependencies come from the npm cache or the registry, as for a user.
 */
import { execFile } from "node:child_process";
import { mkdirSync, mkdtempSync, readFileSync, readdirSync, rmSync, statSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import { fileURLToPath } from "node:url";
import { promisify } from "node:util";

const execFileAsync = promisify(execFile);
export const REPO_ROOT = fileURLToPath(new URL("../../", import.meta.url));
const CLIENT_DIR = join(REPO_ROOT, "packages", "client");

export interface ConsumerProject {
  /** The scratch project: `npm install`ed the tarball, so node_modules/@moela/client is the package. */
  readonly dir: string;
  /** The .tgz npm pack made. */
  readonly tarball: string;
  /** `tsc --noEmit` over `files` (in dir) with strict settings and skipLibCheck off; resolves with tsc's output, rejects on errors. */
  typecheck(files: readonly string[]): Promise<string>;
  /** Writes `source` to `file` in dir: a program written inline in a test, indented as the test is (see dedent). */
  write(file: string, source: string): void;
  /** `node file` in dir; resolves with its output, rejects as execFile does (non-zero exit, timeout). */
  node(file: string, options?: { env?: NodeJS.ProcessEnv; timeout?: number }): Promise<{ stdout: string; stderr: string }>;
  remove(): void;
}

/** `text` less its first and last line breaks and the indentation all its lines share. */
function dedent(text: string): string {
  const lines = text
    .replace(/^\n/, "")
    .replace(/\n[ ]*$/, "")
    .split("\n");
  const indent = Math.min(...lines.filter((l) => l.trim() !== "").map((l) => l.length - l.trimStart().length));
  return lines.map((l) => l.slice(indent)).join("\n");
}

/**
 * Runs `work` holding a lock folder under .moela/tmp: `npm pack` rebuilds packages/client/dist, and two
 * test files packing at once would pack each other's half-written build. A lock older than 10 min is stale.
 */
async function withPackLock<T>(work: () => Promise<T>): Promise<T> {
  const base = join(REPO_ROOT, ".moela", "tmp");
  mkdirSync(base, { recursive: true });
  const lock = join(base, "client-pack.lock");
  const giveUpAt = Date.now() + 10 * 60_000;
  for (;;) {
    try {
      mkdirSync(lock);
      break;
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== "EEXIST") throw err;
      const held = statSync(lock, { throwIfNoEntry: false });
      if (held !== undefined && Date.now() - held.mtimeMs > 10 * 60_000) rmSync(lock, { recursive: true, force: true });
      else if (Date.now() > giveUpAt) throw new Error(`${lock} is held for too long`);
      else await sleep(500);
    }
  }
  try {
    return await work();
  } finally {
    rmSync(lock, { recursive: true, force: true });
  }
}

export async function installPackedClient(): Promise<ConsumerProject> {
  const work = mkdtempSync(join(tmpdir(), "moela-client-"));
  try {
    await withPackLock(() => execFileAsync("npm", ["pack", "--pack-destination", work], { cwd: CLIENT_DIR, timeout: 300_000 }));
    const tgz = readdirSync(work).filter((f) => f.endsWith(".tgz"));
    if (tgz.length !== 1) throw new Error(`npm pack left ${JSON.stringify(tgz)} in ${work}, expected one .tgz`);
    const tarball = join(work, tgz[0]!);
    const dir = join(work, "consumer");
    mkdirSync(dir);
    writeFileSync(join(dir, "package.json"), `${JSON.stringify({ name: "consumer", private: true, type: "module" }, null, 2)}\n`);
    await execFileAsync("npm", ["install", tarball, "--prefer-offline", "--no-audit", "--no-fund"], { cwd: dir, timeout: 300_000 });
    const tsc = join(REPO_ROOT, "node_modules", "typescript", "bin", "tsc");
    return {
      dir,
      tarball,
      typecheck: async (files) => {
        const tsconfig = {
          compilerOptions: {
            target: "ES2022",
            module: "NodeNext",
            moduleResolution: "NodeNext",
            strict: true,
            noEmit: true,
            skipLibCheck: false,
            types: ["node"],
            // @types/node is the consumer's own business; borrow the repository's rather than install it.
            typeRoots: [join(REPO_ROOT, "node_modules", "@types")],
          },
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
      write: (file, source) => writeFileSync(join(dir, file), dedent(source)),
      node: (file, options = {}) => execFileAsync(process.execPath, [file], { cwd: dir, ...options }),
      remove: () => rmSync(work, { recursive: true, force: true }),
    };
  } catch (err) {
    rmSync(work, { recursive: true, force: true });
    throw err;
  }
}

/** The code block under "## Example" in packages/client/README.md. */
export function readmeExample(): string {
  const readme = readFileSync(join(CLIENT_DIR, "README.md"), "utf8");
  const section = readme.split(/^## Example\s*$/m)[1];
  const block = section === undefined ? null : /```ts\n([\s\S]*?)```/.exec(section);
  if (block === null) throw new Error('packages/client/README.md has no ```ts block under "## Example"');
  return block[1]!;
}
