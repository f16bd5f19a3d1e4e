// npm install hook of moela's native addons (this package's kernels, and @moela/shm-native, whose install runs
// this same file): build the addon in the current package with node-gyp, offline, against the headers of the
// Node that runs this (Debian's nodejs ships them under <prefix>/include/node). A failed build is not fatal:
// moela then runs without that addon (the package.json's "nativeFallback" says how), and this says so once.
const { spawnSync } = require("node:child_process");
const { existsSync, readFileSync } = require("node:fs");
const { dirname, join } = require("node:path");

const pkg = JSON.parse(readFileSync(join(process.cwd(), "package.json"), "utf8"));
const prefix = join(dirname(process.execPath), "..");
// npm tells its lifecycle scripts where its own node-gyp is; run by hand, look where npm keeps it.
const gyp = process.env.npm_config_node_gyp || join(prefix, "lib", "node_modules", "npm", "node_modules", "node-gyp", "bin", "node-gyp.js");
const args = [gyp, "rebuild"];
if (!process.env.npm_config_nodedir && existsSync(join(prefix, "include", "node", "node_api.h"))) args.push(`--nodedir=${prefix}`);
const r = spawnSync(process.execPath, args, { stdio: "inherit", cwd: process.cwd() });
if (r.status !== 0) {
  process.stderr.write(
    `\n${pkg.name}: the native addon could not be built (node-gyp needs python3, make, a C++17 compiler\n` +
      `and Node's headers). moela still works: ${pkg.nativeFallback}\n\n`,
  );
}
