/**
 * Build @moela/client for publication: packages/client/dist, which packages/client/package.json's
 * `exports` name (`import` -> dist/esm, `require` -> dist/cjs, each with its declarations).
 *
 *   npm run build -w @moela/client      # or: npx tsx scripts/build-client.ts [--out DIR]
 *   cd packages/client && npm pack       # prepack runs the build; or npm publish
 *
 * Inside this repository the package is resolved to its TypeScript source (the `moela-source` export
 * condition, which tsconfig.json and vitest.config.ts set). A package on a registry must ship
 * JavaScript and declarations, and cannot depend on the private workspace packages it imports. So
 * this compiles the client with the TypeScript compiler together with exactly two slices of them:
 *
 *   @moela/core      -> core/src/errors.ts and clock.ts only (the error classes and codes, the Clock; no logger, config or service code)
 *   @moela/proto-gen -> the generated moela.v1 common + router messages and the Generate client only
 *
 * rewrites those two specifiers to relative paths, and emits it twice: ES modules (dist/esm) and
 * CommonJS (dist/cjs, the same sources transpiled file by file, with a {"type":"commonjs"} marker and
 * the same declarations). The third-party packages the emitted code imports must be exactly the
 * manifest's `dependencies` (checked), so an install from the tarball resolves everything it needs.
 *
 * Error classes are one set per module system: an application that loads the package both ways gets
 * two, and `instanceof` only matches within one (the dual-package hazard; pick one).
 */
import { copyFileSync, mkdirSync, readFileSync, readdirSync, renameSync, rmSync, statSync, writeFileSync } from "node:fs";
import { dirname, join, relative, resolve, sep } from "node:path";
import { fileURLToPath } from "node:url";
import ts from "typescript";

const ROOT = fileURLToPath(new URL("..", import.meta.url));
const PACKAGES = join(ROOT, "packages");
const CLIENT = join(PACKAGES, "client");

/** The slice of proto-gen the client needs, compiled as if it were a file of proto-gen (it exists only in this build). */
const WIRE_ENTRY = join(PACKAGES, "proto-gen/src/client-wire.ts");
const WIRE_SOURCE = [
  "// The moela.v1 types @moela/client uses (written by scripts/build-client.ts).",
  'export * from "./gen/moela/v1/common.js";',
  'export * from "./gen/moela/v1/router.js";',
  "",
].join("\n");

/** The slice of core the client needs, likewise. */
const CORE_ENTRY = join(PACKAGES, "core/src/client-core.ts");
const CORE_SOURCE = [
  "// The @moela/core modules @moela/client uses (written by scripts/build-client.ts).",
  'export * from "./errors.js";',
  'export * from "./clock.js";',
  "",
].join("\n");

/** Build-only entry files: path -> source. */
const VIRTUAL = new Map([
  [WIRE_ENTRY, WIRE_SOURCE],
  [CORE_ENTRY, CORE_SOURCE],
]);

/** Workspace package -> the file it stands for in the build, relative to the packages folder (mirrored in the output). */
const INLINED: Record<string, string> = {
  "@moela/core": relative(PACKAGES, CORE_ENTRY),
  "@moela/proto-gen": relative(PACKAGES, WIRE_ENTRY),
};

function walk(dir: string): string[] {
  return readdirSync(dir).flatMap((name) => {
    const p = join(dir, name);
    return statSync(p).isDirectory() ? walk(p) : [p];
  });
}

/** The npm package a bare import specifier belongs to ("@grpc/grpc-js/build/x" -> "@grpc/grpc-js"); undefined for relative and node: imports. */
function packageOf(spec: string): string | undefined {
  if (spec.startsWith(".") || spec.startsWith("node:") || spec.startsWith("/")) return undefined;
  const parts = spec.split("/");
  return spec.startsWith("@") ? parts.slice(0, 2).join("/") : parts[0];
}

const SPECIFIER = /(\bfrom\s*|\bimport\s*\(\s*|\bimport\s+|\brequire\s*\(\s*)(["'])([^"']+)\2/g;

/** Point the workspace specifiers in `file` (under `tree`) at their compiled copies; returns the third-party packages it imports. */
function rewriteSpecifiers(file: string, tree: string): Set<string> {
  const external = new Set<string>();
  const text = readFileSync(file, "utf8").replace(SPECIFIER, (whole, lead: string, q: string, spec: string) => {
    const target = INLINED[spec];
    if (target !== undefined) {
      let rel = relative(dirname(file), join(tree, target.replace(/\.ts$/, ".js")))
        .split(sep)
        .join("/");
      if (!rel.startsWith(".")) rel = `./${rel}`;
      return `${lead}${q}${rel}${q}`;
    }
    if (spec.startsWith("@moela/")) throw new Error(`${relative(tree, file)} imports ${spec}, which is not inlined (add it to INLINED)`);
    const pkg = packageOf(spec);
    if (pkg !== undefined) external.add(pkg);
    return whole;
  });
  writeFileSync(file, text);
  return external;
}

export interface BuiltClient {
  readonly outDir: string;
  /** Every file written, relative to outDir. */
  readonly files: string[];
  /** Third-party packages the emitted code imports. */
  readonly imports: string[];
}

export function buildClient(outDir: string = join(CLIENT, "dist")): BuiltClient {
  // Built beside the target and moved in at the end, so a failed build leaves the last good one.
  const work = `${outDir}.building-${process.pid}`;
  rmSync(work, { recursive: true, force: true });
  const esm = join(work, "esm");
  const cjs = join(work, "cjs");
  const options: ts.CompilerOptions = {
    target: ts.ScriptTarget.ES2022,
    lib: ["lib.es2022.d.ts"],
    module: ts.ModuleKind.NodeNext,
    moduleResolution: ts.ModuleResolutionKind.NodeNext,
    strict: true,
    noUncheckedIndexedAccess: true,
    verbatimModuleSyntax: true,
    isolatedModules: true,
    skipLibCheck: true,
    types: ["node"],
    declaration: true,
    outDir: esm,
    rootDir: PACKAGES,
    noEmitOnError: true,
    // Resolved through node_modules, the workspace packages would count as external libraries and
    // not be emitted; mapped by path they are compiled like the client's own files.
    paths: Object.fromEntries(Object.entries(INLINED).map(([spec, file]) => [spec, [join(PACKAGES, file)]])),
  };
  const host = ts.createCompilerHost(options);
  const { fileExists, readFile, getSourceFile } = host;
  host.fileExists = (f) => VIRTUAL.has(f) || fileExists.call(host, f);
  host.readFile = (f) => VIRTUAL.get(f) ?? readFile.call(host, f);
  host.getSourceFile = (f, languageVersion, onError, shouldCreate) => {
    const virtual = VIRTUAL.get(f);
    return virtual !== undefined ? ts.createSourceFile(f, virtual, languageVersion) : getSourceFile.call(host, f, languageVersion, onError, shouldCreate);
  };
  const program = ts.createProgram([join(CLIENT, "src/index.ts")], options, host);
  const result = program.emit();
  const diagnostics = [...ts.getPreEmitDiagnostics(program), ...result.diagnostics];
  if (diagnostics.length > 0 || result.emitSkipped) {
    const fmt: ts.FormatDiagnosticsHost = { getCanonicalFileName: (f) => f, getCurrentDirectory: () => ROOT, getNewLine: () => "\n" };
    rmSync(work, { recursive: true, force: true });
    throw new Error(`@moela/client does not compile:\n${ts.formatDiagnostics(diagnostics, fmt)}`);
  }

  // CommonJS: the same sources, transpiled one by one (they type-checked above), declarations copied.
  const sources = program.getSourceFiles().filter((sf) => !sf.isDeclarationFile && sf.fileName.startsWith(PACKAGES + sep));
  for (const sf of sources) {
    const out = join(cjs, relative(PACKAGES, sf.fileName)).replace(/\.ts$/, ".js");
    const js = ts.transpileModule(sf.text, {
      fileName: sf.fileName,
      compilerOptions: { target: ts.ScriptTarget.ES2022, module: ts.ModuleKind.CommonJS, esModuleInterop: true, isolatedModules: true },
    }).outputText;
    mkdirSync(dirname(out), { recursive: true });
    writeFileSync(out, js);
  }
  for (const dts of walk(esm).filter((f) => f.endsWith(".d.ts"))) {
    const out = join(cjs, relative(esm, dts));
    mkdirSync(dirname(out), { recursive: true });
    copyFileSync(dts, out);
  }
  // dist/cjs's .js (and .d.ts) files are CommonJS: the package itself is "type": "module".
  writeFileSync(join(cjs, "package.json"), `${JSON.stringify({ type: "commonjs" })}\n`);

  const imports = new Set<string>();
  for (const tree of [esm, cjs]) {
    for (const file of walk(tree).filter((f) => f.endsWith(".js") || f.endsWith(".d.ts"))) {
      for (const pkg of rewriteSpecifiers(file, tree)) imports.add(pkg);
    }
  }
  const manifest = JSON.parse(readFileSync(join(CLIENT, "package.json"), "utf8")) as { dependencies?: Record<string, string> };
  const declared = Object.keys(manifest.dependencies ?? {}).sort();
  const used = [...imports].sort();
  if (JSON.stringify(declared) !== JSON.stringify(used)) {
    rmSync(work, { recursive: true, force: true });
    throw new Error(`packages/client/package.json's dependencies ${JSON.stringify(declared)} must be what the built code imports: ${JSON.stringify(used)}`);
  }

  rmSync(outDir, { recursive: true, force: true });
  renameSync(work, outDir);
  return {
    outDir,
    files: walk(outDir)
      .map((f) => relative(outDir, f).split(sep).join("/"))
      .sort(),
    imports: used,
  };
}

const isMain = process.argv[1] !== undefined && resolve(process.argv[1]) === fileURLToPath(import.meta.url);
if (isMain) {
  const i = process.argv.indexOf("--out");
  const out = resolve(i >= 0 && process.argv[i + 1] !== undefined ? process.argv[i + 1]! : join(CLIENT, "dist"));
  const built = buildClient(out);
  process.stdout.write(
    `@moela/client built in ${relative(process.cwd(), out) || "."}: ${built.files.length} files; imports ${JSON.stringify(built.imports)}\n`,
  );
}
