export * from "./ops.js";
export * from "./params.js";
export * from "./layers.js";
export * from "./mla.js";
export * from "./moe.js";
export * from "./model.js";
export * from "./engine-bridge.js";
