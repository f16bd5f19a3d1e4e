export * from "./tensor/dtype.js";
export * from "./config.js";
export * from "./rng.js";
export * from "./sampler.js";
export * from "./speculative.js";
export * from "./safetensors/index.js";
export * from "./quant/fp8-block.js";
