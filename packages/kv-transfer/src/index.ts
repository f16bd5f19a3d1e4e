/**
 * @moela/kv-transfer: latent KV transfer from prefill to decode. Roles: KvSender (prefill; the
 * engine's KvSink) and KvReceiver (decode, opened by a KvInbox), each with poll(): KvPoll and
 * abort(); the contract is in contract.ts. Codec: KV dtype rows and SHA-256. Transports: gRPC
 * (KvTransfer.Push) and in-process.
 */
export * from "./contract.js";
export * from "./codec/index.js";
export { KvSender, kvTransferMeta, batchKvSink, transferBytes, type KvSenderOptions, type KvTransferIds } from "./sender.js";
export { KvInbox, KvReceiver, type KvInboxOptions, type KvReceiveStats } from "./receiver.js";
export { connectInProcess, type InProcessOptions } from "./transports/in-process.js";
export {
  grpcKvConnector,
  kvTransferService,
  frameToWire,
  frameFromWire,
  generationParamsFromWire,
  generationParamsToWire,
  REQUEST_ID_METADATA_KEY,
  type GrpcKvConnectorOptions,
  type PushCallContext,
} from "./transports/grpc.js";
