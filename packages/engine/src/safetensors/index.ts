export * from "./reader.js";
export * from "./writer.js";
export * from "./checkpoint.js";
export * from "./hf-writer.js";
