// services/cli/bin/compiled-js.mjs on a small workspace of its own: real esbuild, real files, and each load of the
// output in a fresh node process (a module once imported stays cached in the process that imported it).
import { execFile } from "node:child_process";
import { chmodSync, existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { promisify } from "node:util";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import { REPO_ROOT } from "../../../services/cli/src/paths.js";

const execFileAsync = promisify(execFile);
const COMPILER = join(REPO_ROOT, "services/cli/bin/compiled-js.mjs");

let root: string;

function write(rel: string, text: string): void {
  mkdirSync(dirname(join(root, rel)), { recursive: true });
  writeFileSync(join(root, rel), text);
}

/**
 * Two packages and a CLI the way the repository lays them out: @moela/a (a relative import, an .mjs file, a file
 * found relative to its own module) and @moela/b (a subpath export), and services/cli/src/main.ts importing both.
 */
function makeWorkspace(): void {
  write("tsconfig.json", JSON.stringify({ compilerOptions: { target: "ES2022", module: "NodeNext", strict: true, verbatimModuleSyntax: true } }));
  write("packages/a/package.json", JSON.stringify({ name: "@moela/a", type: "module", exports: { ".": "./src/index.ts" } }));
  write("packages/a/data.txt", "beside src");
  write("packages/a/src/util.ts", "export const twice = (n: number): number => n * 2;\n");
  write("packages/a/src/boot.mjs", "export const boot = 'plain js';\n");
  write(
    "packages/a/src/index.ts",
    [
      'import { readFileSync } from "node:fs";',
      'import { twice } from "./util.js";',
      'export { boot } from "./boot.mjs";',
      "export const a = (n: number): number => twice(n);",
      'export const data = (): string => readFileSync(new URL("../data.txt", import.meta.url), "utf8");',
      "",
    ].join("\n"),
  );
  write("packages/b/package.json", JSON.stringify({ name: "@moela/b", type: "module", exports: { ".": "./src/index.ts", "./extra": "./src/deep/extra.ts" } }));
  write("packages/b/src/index.ts", "export const b = 'b';\n");
  write("packages/b/src/deep/extra.ts", 'import { a } from "@moela/a";\nexport const extra = (): number => a(10) + 1;\n');
  write("services/cli/package.json", JSON.stringify({ name: "@moela/cli", type: "module", exports: { ".": "./src/main.ts" } }));
  write(
    "services/cli/src/main.ts",
    [
      'import { a, boot, data } from "@moela/a";',
      'import { b } from "@moela/b";',
      'import { extra } from "@moela/b/extra";',
      "interface Out { readonly a: number; readonly b: string; readonly extra: number; readonly boot: string; readonly data: string }",
      "export async function run(): Promise<Out> {",
      '  const { version } = await import("./version.js");',
      "  return { a: a(3), b: b + version, extra: extra(), boot, data: data() };",
      "}",
      "",
    ].join("\n"),
  );
  write("services/cli/src/version.ts", "export const version = '-v1';\n");
}

interface Outcome {
  readonly url: string | null;
  readonly result?: unknown;
  readonly stderr: string;
}

/** compiledCli(root) in a fresh node process, and what the compiled CLI's run() returns. */
async function compileAndRun(env: NodeJS.ProcessEnv = {}): Promise<Outcome> {
  const script = [
    `const { compiledCli } = await import(${JSON.stringify(COMPILER)});`,
    `const url = await compiledCli(${JSON.stringify(root)});`,
    "const result = url === undefined ? undefined : await (await import(url)).run();",
    "console.log(JSON.stringify({ url: url ?? null, result }));",
  ].join("\n");
  const { stdout, stderr } = await execFileAsync(process.execPath, ["--input-type=module", "-e", script], { env: { ...process.env, MOELA_TSX: "", ...env } });
  return { ...(JSON.parse(stdout.trim().split("\n").at(-1)!) as Omit<Outcome, "stderr">), stderr };
}

const EXPECTED = { a: 6, b: "b-v1", extra: 21, boot: "plain js", data: "beside src" };

describe("compiled-js: the CLI's TypeScript compiled beside its sources", () => {
  beforeEach(() => {
    root = mkdtempSync(join(tmpdir(), "moela-compiled-js-"));
    makeWorkspace();
  });
  afterEach(() => rmSync(root, { recursive: true, force: true }));

  it("compiles every package to .compiled/ at its sources' depth, rewrites @moela/* imports, and the output runs", async () => {
    const out = await compileAndRun();
    expect(out.url).toBe(`file://${join(root, "services/cli/.compiled/main.js")}`);
    expect(out.result).toEqual(EXPECTED);
    for (const f of ["packages/a/.compiled/index.js", "packages/a/.compiled/util.js", "packages/a/.compiled/boot.mjs", "packages/b/.compiled/deep/extra.js"]) {
      expect(existsSync(join(root, f)), f).toBe(true);
    }
    const extra = readFileSync(join(root, "packages/b/.compiled/deep/extra.js"), "utf8");
    expect(extra).toContain('from "../../../a/.compiled/index.js"');
    expect(extra).not.toContain("@moela/");
    // Source maps, so that stack traces can name the TypeScript.
    expect(extra).toContain("sourceMappingURL=data:application/json");
  });

  it("does not compile again while no source changed, and compiles again when one did", async () => {
    await compileAndRun();
    const out = join(root, "services/cli/.compiled/version.js");
    const first = statSync(out).mtimeMs;
    expect((await compileAndRun()).result).toEqual(EXPECTED);
    expect(statSync(out).mtimeMs, "an unchanged source is not compiled again").toBe(first);

    write("services/cli/src/version.ts", "export const version = '-v2';\n");
    expect((await compileAndRun()).result).toEqual({ ...EXPECTED, b: "b-v2" });
  });

  it("removes the output of a source that is gone", async () => {
    write("packages/a/src/old.ts", "export const old = 1;\n");
    await compileAndRun();
    expect(existsSync(join(root, "packages/a/.compiled/old.js"))).toBe(true);
    rmSync(join(root, "packages/a/src/old.ts"));
    expect((await compileAndRun()).result).toEqual(EXPECTED);
    expect(existsSync(join(root, "packages/a/.compiled/old.js"))).toBe(false);
  });

  it("compiles again when an output was deleted behind its back", async () => {
    await compileAndRun();
    rmSync(join(root, "packages/a/.compiled/util.js"));
    expect((await compileAndRun()).result).toEqual(EXPECTED);
  });

  it("two processes starting at once on a changed checkout both run the new output", async () => {
    const both = await Promise.all([compileAndRun(), compileAndRun()]);
    for (const out of both) expect(out.result).toEqual(EXPECTED);
    expect(existsSync(join(root, "node_modules/.cache/moela/compile.lock")), "the lock is released").toBe(false);
  });

  it("takes over the lock of a compile that was killed part-way, at once", async () => {
    // A pid that has exited: a child that ran and is gone.
    const { stdout } = await execFileAsync(process.execPath, ["-e", "console.log(process.pid)"]);
    mkdirSync(join(root, "node_modules/.cache/moela"), { recursive: true });
    writeFileSync(join(root, "node_modules/.cache/moela/compile.lock"), stdout.trim());
    const t0 = performance.now();
    expect((await compileAndRun()).result).toEqual(EXPECTED);
    // Waiting out LOCK_STALE_MS instead would take a minute.
    expect(performance.now() - t0).toBeLessThan(30_000);
    expect(existsSync(join(root, "node_modules/.cache/moela/compile.lock")), "the lock is released").toBe(false);
  });

  it("falls back to the sources (undefined) with MOELA_TSX=1, on a source that does not compile, and where it cannot write", async () => {
    const asked = await compileAndRun({ MOELA_TSX: "1" });
    expect(asked.url).toBeNull();
    expect(asked.stderr, "asked for the sources: nothing to say").toBe("");
    expect(existsSync(join(root, "services/cli/.compiled")), "MOELA_TSX=1 compiles nothing").toBe(false);

    write("packages/b/src/index.ts", "export const b = ;\n");
    const broken = await compileAndRun();
    expect(broken.url).toBeNull();
    // The developer learns why the CLI starts slowly, and which file is wrong.
    expect(broken.stderr).toMatch(/^moela: the sources did not compile to JavaScript, so they run through tsx .*packages\/b\/src\/index\.ts/);
    expect(broken.stderr.trim().split("\n"), "one line").toHaveLength(1);
    write("packages/b/src/index.ts", "export const b = 'b';\n");

    // The cache folder is a file here, so neither the lock nor the stamp can be written: as in a read-only checkout.
    rmSync(join(root, "node_modules/.cache/moela"), { recursive: true, force: true });
    mkdirSync(join(root, "node_modules/.cache"), { recursive: true });
    writeFileSync(join(root, "node_modules/.cache/moela"), "not a folder");
    chmodSync(join(root, "node_modules/.cache/moela"), 0o444);
    const readOnly = await compileAndRun();
    expect(readOnly.url).toBeNull();
    expect(readOnly.stderr, "a checkout it cannot write to is no mistake: no line on every run").toBe("");
  });
});
