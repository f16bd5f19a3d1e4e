#!/usr/bin/env node
// Runs the TypeScript sources directly through tsx, so no build step stands between a clone and the CLI.
import { register } from "tsx/esm/api";

register();
const { run } = await import("../src/main.ts");
process.exitCode = await run(process.argv.slice(2));
