export * from "./config.js";
export * from "./params.js";
export * from "./kv-cache.js";
export * from "./ep-decode.js";
export * from "./paper.js";
export * from "./plan.js";
export * from "./format.js";
