export * from "./tensor/dtype.js";
export * from "./config.js";
