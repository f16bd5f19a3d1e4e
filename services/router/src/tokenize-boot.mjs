// Entry of a router tokenizer thread (plain JavaScript, so it starts under any loader). Node 20 workers do
// not pick up tsx from the parent's --import, so when the router runs from its TypeScript sources the
// worker module is loaded through tsx's scoped tsImport (as the engine's matmul pool does); compiled JS
// loads directly.
import { workerData } from "node:worker_threads";

const url = workerData.moduleUrl;
const mod = url.endsWith(".ts") ? await (await import("tsx/esm/api")).tsImport(url, import.meta.url) : await import(url);
mod.runTokenizeWorker();
