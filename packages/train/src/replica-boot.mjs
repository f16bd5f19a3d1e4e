// Entry of a training replica thread (plain JavaScript, so it starts under any loader): when @moela/train runs
// from its TypeScript sources the worker module is loaded through tsx's scoped tsImport, as the engine's pool does.
import { workerData } from "node:worker_threads";

const url = workerData.moduleUrl;
const mod = url.endsWith(".ts") ? await (await import("tsx/esm/api")).tsImport(url, import.meta.url) : await import(url);
mod.runReplica();
