export * from "./errors.js";
export * from "./log.js";
export * from "./ids.js";
