export * from "./rows.js";
export * from "./checksum.js";
