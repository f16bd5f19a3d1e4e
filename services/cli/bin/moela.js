#!/usr/bin/env node
// The CLI from its compiled JavaScript (compiled-js.mjs compiles it when a source has changed), or from the
// TypeScript sources through tsx where it cannot be compiled: no build step stands between a clone and the CLI.
import { fileURLToPath } from "node:url";
import { compiledCli } from "./compiled-js.mjs";

const compiled = await compiledCli(fileURLToPath(new URL("../../../", import.meta.url)));
let run;
if (compiled === undefined) {
  (await import("tsx/esm/api")).register();
  ({ run } = await import("../src/main.ts"));
} else {
  // The output carries source maps, so stack traces name the TypeScript files, as they do under tsx.
  process.setSourceMapsEnabled(true);
  ({ run } = await import(compiled));
}
process.exitCode = await run(process.argv.slice(2));
