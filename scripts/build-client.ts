/**
 * Build the publishable @moela/client package.
 *
 *   npx tsx scripts/build-client.ts [--out packages/client/dist]
 *   npm pack ./packages/client/dist     # or npm publish ./packages/client/dist
 *
 * Inside this repository every package exports its TypeScript source (run by tsx). A package on a
 * registry must ship JavaScript and declarations instead, and cannot depend on the private
 * workspace packages it imports (@moela/core for the error classes, @moela/proto-gen for the wire
 * types). So this compiles the client with the TypeScript compiler together with exactly the files
 * of those two packages it reaches, rewrites the two package specifiers to relative paths, and
 * writes a package.json whose dependencies are the third-party packages the emitted code imports,
 * at the versions the root package.json pins. The output has no "@moela/" import left (checked).
 */
import { copyFileSync, mkdirSync, readFileSync, readdirSync, rmSync, statSync, writeFileSync } from "node:fs";
import { dirname, join, relative, resolve, sep } from "node:path";
import { fileURLToPath } from "node:url";
import ts from "typescript";

const ROOT = fileURLToPath(new URL("..", import.meta.url));
const PACKAGES = join(ROOT, "packages");
const CLIENT = join(PACKAGES, "client");

/** Workspace package -> its entry, relative to the packages folder (mirrored in the output). */
const INLINED: Record<string, string> = {
  "@moela/core": "core/src/index.js",
  "@moela/proto-gen": "proto-gen/src/index.js",
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

const SPECIFIER = /(\bfrom\s*|\bimport\s*\(\s*|\bimport\s+)(["'])([^"']+)\2/g;

export function buildClient(outDir: string): { outDir: string; files: string[]; dependencies: Record<string, string> } {
  rmSync(outDir, { recursive: true, force: true });
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
    outDir,
    rootDir: PACKAGES,
    noEmitOnError: true,
    // Resolved through node_modules, the workspace packages would count as external libraries and
    // not be emitted; mapped by path they are compiled like the client's own files.
    paths: Object.fromEntries(Object.entries(INLINED).map(([spec, entry]) => [spec, [join(PACKAGES, entry.replace(/\.js$/, ".ts"))]])),
  };
  const program = ts.createProgram([join(CLIENT, "src/index.ts")], options);
  const result = program.emit();
  const diagnostics = [...ts.getPreEmitDiagnostics(program), ...result.diagnostics];
  if (diagnostics.length > 0 || result.emitSkipped) {
    const host: ts.FormatDiagnosticsHost = { getCanonicalFileName: (f) => f, getCurrentDirectory: () => ROOT, getNewLine: () => "\n" };
    throw new Error(`@moela/client does not compile:\n${ts.formatDiagnostics(diagnostics, host)}`);
  }

  // Point the workspace imports at the compiled copies, and collect the third-party imports.
  const external = new Set<string>();
  const files = walk(outDir);
  for (const file of files.filter((f) => f.endsWith(".js") || f.endsWith(".d.ts"))) {
    const text = readFileSync(file, "utf8").replace(SPECIFIER, (whole, lead: string, q: string, spec: string) => {
      const target = INLINED[spec];
      if (target !== undefined) {
        let rel = relative(dirname(file), join(outDir, target)).split(sep).join("/");
        if (!rel.startsWith(".")) rel = `./${rel}`;
        return `${lead}${q}${rel}${q}`;
      }
      if (spec.startsWith("@moela/")) throw new Error(`${relative(outDir, file)} imports ${spec}, which is not inlined (add it to INLINED)`);
      const pkg = packageOf(spec);
      if (pkg !== undefined) external.add(pkg);
      return whole;
    });
    writeFileSync(file, text);
  }

  // proto-gen's index names the descriptor set file next to it; ship it so that path is real.
  const descriptors = join(PACKAGES, "proto-gen/descriptors.binpb");
  mkdirSync(join(outDir, "proto-gen"), { recursive: true });
  copyFileSync(descriptors, join(outDir, "proto-gen/descriptors.binpb"));
  copyFileSync(join(CLIENT, "README.md"), join(outDir, "README.md"));

  const rootPkg = JSON.parse(readFileSync(join(ROOT, "package.json"), "utf8")) as { dependencies?: Record<string, string> };
  const clientPkg = JSON.parse(readFileSync(join(CLIENT, "package.json"), "utf8")) as Record<string, unknown>;
  const dependencies: Record<string, string> = {};
  for (const pkg of [...external].sort()) {
    const version = rootPkg.dependencies?.[pkg];
    if (version === undefined) throw new Error(`the client's code imports ${pkg}, which the root package.json does not pin`);
    dependencies[pkg] = version;
  }
  const entry = "./client/src/index";
  const manifest = {
    name: clientPkg["name"],
    version: clientPkg["version"],
    description: clientPkg["description"],
    type: "module",
    exports: { ".": { types: `${entry}.d.ts`, import: `${entry}.js`, default: `${entry}.js` } },
    main: `${entry}.js`,
    types: `${entry}.d.ts`,
    files: ["client", "core", "proto-gen", "README.md"],
    sideEffects: false,
    engines: clientPkg["engines"],
    dependencies,
  };
  writeFileSync(join(outDir, "package.json"), `${JSON.stringify(manifest, null, 2)}\n`);
  return { outDir, files: walk(outDir).map((f) => relative(outDir, f)).sort(), dependencies };
}

const isMain = process.argv[1] !== undefined && resolve(process.argv[1]) === fileURLToPath(import.meta.url);
if (isMain) {
  const i = process.argv.indexOf("--out");
  const out = resolve(i >= 0 && process.argv[i + 1] !== undefined ? process.argv[i + 1]! : join(CLIENT, "dist"));
  const built = buildClient(out);
  process.stdout.write(`@moela/client built in ${relative(process.cwd(), out) || "."}: ${built.files.length} files; dependencies ${JSON.stringify(built.dependencies)}\n`);
}
