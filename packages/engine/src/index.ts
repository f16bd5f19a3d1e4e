export * from "./tensor/dtype.js";
export * from "./config.js";
export * from "./safetensors/index.js";
export * from "./quant/fp8-block.js";
