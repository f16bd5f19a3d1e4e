export * from "./codec/index.js";
export * from "./placement.js";
