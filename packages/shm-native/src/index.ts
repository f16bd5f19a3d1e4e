export * from "./native.js";
export * from "./channel.js";
export * from "./doorbell.js";
