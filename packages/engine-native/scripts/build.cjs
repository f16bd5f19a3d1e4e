// npm install hook: build the native kernels with node-gyp, offline, against the headers of the Node that runs
// this (Debian's nodejs ships them under <prefix>/include/node). A failed build is not fatal: the engine then
// runs its TypeScript kernels ("portable" backend), only slower, and this says so once, clearly.
const { spawnSync } = require("node:child_process");
const { existsSync } = require("node:fs");
const { dirname, join } = require("node:path");

const prefix = join(dirname(process.execPath), "..");
// npm tells its lifecycle scripts where its own node-gyp is; run by hand, look where npm keeps it.
const gyp = process.env.npm_config_node_gyp || join(prefix, "lib", "node_modules", "npm", "node_modules", "node-gyp", "bin", "node-gyp.js");
const args = [gyp, "rebuild"];
if (!process.env.npm_config_nodedir && existsSync(join(prefix, "include", "node", "node_api.h"))) args.push(`--nodedir=${prefix}`);
const r = spawnSync(process.execPath, args, { stdio: "inherit", cwd: join(__dirname, "..") });
if (r.status !== 0) {
  process.stderr.write(
    "\n@moela/engine-native: the native kernels could not be built (node-gyp needs python3, make, a C++17 compiler\n" +
      "and Node's headers). moela still works: the engine falls back to its TypeScript kernels, more slowly.\n\n",
  );
}
