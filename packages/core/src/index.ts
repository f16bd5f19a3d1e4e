export * from "./errors.js";
export * from "./log.js";
export * from "./ids.js";
export * from "./prefix-hash.js";
export * from "./service.js";
export * from "./config.js";
export * from "./progress.js";
