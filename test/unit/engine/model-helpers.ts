export { DeepseekModel, Engine, PagedLatentCache, type ForwardSeq } from "@moela/engine";
export const ResourceExhaustedErrorName = "ResourceExhaustedError";
