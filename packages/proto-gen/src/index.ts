/**
 * The moela.v1 wire types and grpc-js service definitions, generated from proto/moela/v1
 * (see those files for the protocol). Only this file is written by hand.
 */
import { fileURLToPath } from "node:url";

export * from "./gen/moela/v1/common.js";
export * from "./gen/moela/v1/expert.js";
export * from "./gen/moela/v1/kv_transfer.js";
export * from "./gen/moela/v1/decode.js";
export * from "./gen/moela/v1/prefill.js";
export * from "./gen/moela/v1/router.js";
/** The protobuf package of every moela message and service. */
export const protobufPackage = "moela.v1";

/** Absolute path of the FileDescriptorSet (`buf build` output) that server reflection serves. */
export const DESCRIPTOR_SET_PATH: string = fileURLToPath(new URL("../descriptors.binpb", import.meta.url));
