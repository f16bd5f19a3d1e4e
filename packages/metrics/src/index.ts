export * from "./names.js";
export * from "./buckets.js";
export * from "./registry.js";
export * from "./server.js";
export * from "./rpc.js";
