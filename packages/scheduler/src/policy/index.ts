export * from "./types.js";
export * from "./config.js";
export * from "./params.js";
export * from "./registry.js";
export * from "./policy.js";
