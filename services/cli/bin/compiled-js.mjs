// The CLI's and the services' TypeScript, compiled to JavaScript once and kept beside the sources.
//
// Run through tsx, every module a process loads goes through Node's loader hooks, which Node 20 runs on a thread of
// their own: a round trip between two threads per import, and tsx loaded again in every worker thread. On a 2-core
// VM an expert-host took a median 1.5 s from spawn to ready that way and 1.1 s from compiled JavaScript, and `moela
// cluster` of the tiny model was up in 9.5 s instead of 5.3 (scripts/bench/startup.ts; docs/PERFORMANCE.md,
// "Services from compiled JavaScript"). A service that dies is back sooner for the same reason.
//
// So the first `moela` of a checkout compiles every workspace package's src/ with esbuild, one file in and one file
// out, to a `.compiled/` folder beside that src/. Each output sits at its source's depth, so whatever the code finds
// relative to its own file (a native addon's build/, the descriptor set, the repository's package.json, a worker's
// boot file) is where it was; imports of @moela/* are rewritten to the packages' compiled files. Later runs only check
// that no source changed (the sizes and modification times of about 260 files, a few milliseconds) and load the
// output. Where it cannot be written (a read-only checkout), or with MOELA_TSX=1, the CLI runs from its sources; so it
// does, with a line on stderr, when a source does not compile.
import { createHash } from "node:crypto";
import { closeSync, existsSync, mkdirSync, openSync, readdirSync, readFileSync, renameSync, rmSync, statSync, writeFileSync } from "node:fs";
import { createRequire } from "node:module";
import { dirname, join, relative, sep } from "node:path";
import { pathToFileURL } from "node:url";

/** The folder beside each package's src/ that holds its compiled JavaScript. */
export const OUT_DIR = ".compiled";
/** A lock older than this was left by a compile that died; compiling the whole repository takes about a second. */
const LOCK_STALE_MS = 60_000;

/** Workspace packages with a src/ folder: name, folder and export map of each, in a stable order. */
function workspacePackages(root) {
  const out = [];
  for (const group of ["packages", "services"]) {
    for (const name of readdirSync(join(root, group)).sort()) {
      const dir = join(root, group, name);
      const manifest = join(dir, "package.json");
      if (!existsSync(manifest) || !existsSync(join(dir, "src"))) continue;
      const pkg = JSON.parse(readFileSync(manifest, "utf8"));
      out.push({ name: pkg.name, dir, exports: pkg.exports ?? {} });
    }
  }
  return out;
}

/** Every file under `dir`, in a stable order. */
function walk(dir, files = []) {
  for (const e of readdirSync(dir, { withFileTypes: true }).sort((a, b) => (a.name < b.name ? -1 : 1))) {
    const p = join(dir, e.name);
    if (e.isDirectory()) walk(p, files);
    else if (e.isFile()) files.push(p);
  }
  return files;
}

/** What a package's compile reads: the .ts files (not .d.ts) and .mjs files under its src/. */
function sourcesOf(pkg) {
  return walk(join(pkg.dir, "src")).filter((f) => (f.endsWith(".ts") && !f.endsWith(".d.ts")) || f.endsWith(".mjs"));
}

/** Where a source compiles to: src/a/b.ts -> .compiled/a/b.js; an .mjs file is copied as it is. */
function outputOf(pkg, source) {
  return join(pkg.dir, OUT_DIR, relative(join(pkg.dir, "src"), source)).replace(/\.ts$/, ".js");
}

/** Each package's sources, read once per run: a compile's input, and what the freshness check stats. */
function scan(root) {
  return workspacePackages(root).map((pkg) => ({ ...pkg, sources: sourcesOf(pkg) }));
}

/** A digest of everything the output depends on: each source's size and time, the export maps, the compiler. */
function fingerprint(root, pkgs, esbuildVersion) {
  const h = createHash("sha256");
  h.update(`${esbuildVersion}\0${process.version}\0${readFileSync(new URL(import.meta.url))}\0${readFileSync(join(root, "tsconfig.json"))}\0`);
  for (const pkg of pkgs) {
    h.update(`${pkg.name}\0${JSON.stringify(pkg.exports)}\0`);
    for (const f of pkg.sources) {
      const s = statSync(f);
      h.update(`${relative(root, f)}\0${s.size}\0${s.mtimeMs}\0`);
    }
  }
  return h.digest("hex");
}

/** "@moela/x" and "@moela/x/sub" -> the compiled file each exports (the "moela-source" entry of a conditional one). */
function exportTable(pkgs) {
  const table = new Map();
  for (const pkg of pkgs) {
    for (const [sub, value] of Object.entries(pkg.exports)) {
      const target = typeof value === "string" ? value : value?.["moela-source"];
      if (typeof target !== "string" || !target.startsWith("./src/")) continue;
      table.set(sub === "." ? pkg.name : `${pkg.name}/${sub.slice(2)}`, outputOf(pkg, join(pkg.dir, target)));
    }
  }
  return table;
}

/** Write `data` to `file` so that a reader sees the old file or the new one, never part of it. */
function writeAtomic(file, data) {
  mkdirSync(dirname(file), { recursive: true });
  const tmp = `${file}.${process.pid}.tmp`;
  writeFileSync(tmp, data);
  renameSync(tmp, file);
}

/** The import of `specifier` from the output of `importer`: compiled @moela/* files by relative path, the rest as written. */
function rewrite(table, pkg, importer, specifier) {
  const target = table.get(specifier);
  if (target === undefined) return specifier;
  const rel = relative(dirname(outputOf(pkg, importer)), target)
    .split(sep)
    .join("/");
  return rel.startsWith(".") ? rel : `./${rel}`;
}

async function compilePackages(root, pkgs) {
  const { default: esbuild } = await import("esbuild");
  const tsconfig = JSON.parse(readFileSync(join(root, "tsconfig.json"), "utf8"));
  const table = exportTable(pkgs);
  for (const pkg of pkgs) {
    const sources = pkg.sources;
    // Bundle mode only so that the plugin sees every import: each one is left external, none is followed.
    const result = await esbuild.build({
      entryPoints: sources.filter((f) => f.endsWith(".ts")),
      outbase: join(pkg.dir, "src"),
      outdir: join(pkg.dir, OUT_DIR),
      bundle: true,
      write: false,
      format: "esm",
      platform: "node",
      target: `node${process.versions.node}`,
      // Stack traces name the TypeScript file and line (bin/moela.js turns source maps on).
      sourcemap: "inline",
      sourcesContent: false,
      tsconfigRaw: { compilerOptions: tsconfig.compilerOptions },
      logLevel: "silent",
      plugins: [
        {
          name: "moela-workspace-imports",
          setup(build) {
            build.onResolve({ filter: /.*/ }, (a) =>
              a.kind === "entry-point" ? undefined : { path: rewrite(table, pkg, a.importer, a.path), external: true },
            );
          },
        },
      ],
    });
    const written = new Set();
    for (const f of result.outputFiles) {
      writeAtomic(f.path, f.contents);
      written.add(f.path);
    }
    for (const f of sources.filter((s) => s.endsWith(".mjs"))) {
      writeAtomic(outputOf(pkg, f), readFileSync(f));
      written.add(outputOf(pkg, f));
    }
    // A source that was deleted or renamed leaves no output behind.
    for (const f of walk(join(pkg.dir, OUT_DIR))) if (!written.has(f)) rmSync(f, { force: true });
  }
}

/** Whether the process that wrote `lock` (its pid, on this machine) has gone: a compile killed part-way. */
function holderGone(lock) {
  const pid = Number(readFileSync(lock, "utf8"));
  if (!Number.isInteger(pid) || pid <= 0) return false; // written a moment ago, its pid not yet in it
  try {
    process.kill(pid, 0);
    return false;
  } catch (err) {
    return err.code === "ESRCH";
  }
}

/**
 * Run `fn` holding `lock`, a file created exclusively that holds the holder's pid. A lock whose holder has exited,
 * or older than LOCK_STALE_MS (a holder in another container, whose pid means nothing here), is taken over.
 */
async function withLock(lock, fn) {
  mkdirSync(dirname(lock), { recursive: true });
  for (;;) {
    try {
      const fd = openSync(lock, "wx");
      writeFileSync(fd, String(process.pid));
      closeSync(fd);
      break;
    } catch (err) {
      if (err.code !== "EEXIST") throw err;
      try {
        if (holderGone(lock) || Date.now() - statSync(lock).mtimeMs > LOCK_STALE_MS) rmSync(lock, { force: true });
      } catch {
        // Released between the calls: try again.
      }
      await new Promise((r) => setTimeout(r, 50));
    }
  }
  try {
    return await fn();
  } finally {
    rmSync(lock, { force: true });
  }
}

/**
 * The file URL of `services/cli/.compiled/main.js` under `root`, compiled first when a source changed since the last
 * compile; undefined when the CLI should run from its TypeScript sources instead (MOELA_TSX=1, or the output could not
 * be written or compiled: a compile error is named on stderr, and tsx then reports it the way it always has).
 */
export async function compiledCli(root) {
  if (process.env.MOELA_TSX === "1") return undefined;
  try {
    // The compiler's version from its manifest: importing esbuild costs 40-50 ms, paid only when compiling.
    const esbuildVersion = JSON.parse(readFileSync(createRequire(import.meta.url).resolve("esbuild/package.json"), "utf8")).version;
    let pkgs = scan(root);
    const cache = join(root, "node_modules", ".cache", "moela");
    const stampFile = join(cache, "compiled.json");
    const fresh = (digest) => {
      try {
        if (JSON.parse(readFileSync(stampFile, "utf8")).fingerprint !== digest) return false;
      } catch {
        return false;
      }
      return pkgs.every((pkg) => pkg.sources.every((f) => existsSync(outputOf(pkg, f))));
    };
    if (!fresh(fingerprint(root, pkgs, esbuildVersion))) {
      await withLock(join(cache, "compile.lock"), async () => {
        pkgs = scan(root);
        const before = fingerprint(root, pkgs, esbuildVersion);
        if (fresh(before)) return; // another process compiled it while this one waited
        await compilePackages(root, pkgs);
        // A source saved during the compile leaves the stamp as it was, so the next run compiles again.
        if (fingerprint(root, scan(root), esbuildVersion) === before) writeAtomic(stampFile, JSON.stringify({ fingerprint: before }));
      });
    }
    return pathToFileURL(join(root, "services", "cli", OUT_DIR, "main.js")).href;
  } catch (err) {
    // A checkout it cannot write to falls back without a word (it would say so on every run). A source esbuild
    // refused is a developer's mistake: say so, since the slower start is all that would show it otherwise.
    if (Array.isArray(err?.errors)) {
      const why = String(err.message).split("\n").slice(0, 2).join(" ");
      process.stderr.write(`moela: the sources did not compile to JavaScript, so they run through tsx (a slower start): ${why}\n`);
    }
    return undefined;
  }
}
