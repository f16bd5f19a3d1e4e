/**
 * Lint check (npm run lint): every package and service declares what it imports. A file under packages/<x>/src
 * or services/<x>/src that imports a package (static, type-only, dynamic import() or require()) must find that
 * package in <x>/package.json: dependencies, or devDependencies, optionalDependencies, peerDependencies (the
 * published @moela/client inlines its workspace imports at build time and lists them as devDependencies).
 * Node built-ins, relative paths and a package's own name need nothing. Exits 1 with one line per undeclared
 * import (file, package), 0 when all are declared.
 *
 *   npx tsx scripts/check-deps.ts
 */
import { readFileSync, readdirSync, statSync, existsSync } from "node:fs";
import { builtinModules } from "node:module";
import { join, relative } from "node:path";
import { fileURLToPath } from "node:url";
import ts from "typescript";

const ROOT = fileURLToPath(new URL("..", import.meta.url));
const SOURCE = /\.(ts|mts|cts|js|mjs|cjs)$/;
const BUILTINS = new Set(builtinModules);

export interface Undeclared {
  /** The importing file, relative to the repository root. */
  readonly file: string;
  /** The package name it imports. */
  readonly pkg: string;
  /** The package.json that should declare it, relative to the repository root. */
  readonly manifest: string;
}

/** "@scope/name/sub" -> "@scope/name", "name/sub" -> "name"; null for relative paths, node built-ins and absolute paths. */
export function packageOf(specifier: string): string | null {
  if (specifier.startsWith(".") || specifier.startsWith("/") || specifier.startsWith("node:")) return null;
  const parts = specifier.split("/");
  const name = specifier.startsWith("@") ? parts.slice(0, 2).join("/") : parts[0]!;
  return BUILTINS.has(name) ? null : name;
}

function sourceFiles(dir: string): string[] {
  const out: string[] = [];
  for (const entry of readdirSync(dir)) {
    if (entry === "node_modules") continue;
    const path = join(dir, entry);
    if (statSync(path).isDirectory()) out.push(...sourceFiles(path));
    else if (SOURCE.test(entry) && !entry.endsWith(".d.ts")) out.push(path);
  }
  return out;
}

/** The undeclared imports of every packages/<x>/src and services/<x>/src under root. */
export function findUndeclaredImports(root: string = ROOT): Undeclared[] {
  const found: Undeclared[] = [];
  for (const group of ["packages", "services"]) {
    for (const name of readdirSync(join(root, group)).sort()) {
      const dir = join(root, group, name);
      const manifestPath = join(dir, "package.json");
      if (!existsSync(manifestPath) || !existsSync(join(dir, "src"))) continue;
      const manifest = JSON.parse(readFileSync(manifestPath, "utf8")) as Record<string, unknown>;
      const declared = new Set<string>([String(manifest.name)]);
      for (const field of ["dependencies", "devDependencies", "optionalDependencies", "peerDependencies"]) {
        for (const dep of Object.keys((manifest[field] as Record<string, string> | undefined) ?? {})) declared.add(dep);
      }
      for (const file of sourceFiles(join(dir, "src"))) {
        const info = ts.preProcessFile(readFileSync(file, "utf8"), true, true);
        const packages = new Set(info.importedFiles.map((f) => packageOf(f.fileName)).filter((p): p is string => p !== null));
        for (const pkg of [...packages].sort()) {
          if (!declared.has(pkg)) found.push({ file: relative(root, file), pkg, manifest: relative(root, manifestPath) });
        }
      }
    }
  }
  return found;
}

if (process.argv[1] !== undefined && fileURLToPath(import.meta.url) === process.argv[1]) {
  const undeclared = findUndeclaredImports();
  for (const u of undeclared) console.error(`${u.file}: imports "${u.pkg}", which ${u.manifest} does not declare`);
  if (undeclared.length > 0) {
    console.error(`${undeclared.length} undeclared import(s): add each package to its package.json dependencies (workspace packages as "0.1.0")`);
    process.exit(1);
  }
  console.log("every package and service declares what it imports");
}
