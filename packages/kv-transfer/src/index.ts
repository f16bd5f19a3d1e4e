/**
 * @moela/kv-transfer: latent KV transfer from prefill to decode. Roles: KvSender (prefill; the
 * engine's KvSink) and KvReceiver (decode, opened by a KvInbox), each with poll(): KvPoll and
 * abort(); the contract is in contract.ts. KvLedger: every KV block a service holds for a request, and
 * the one path that gives them back. Codec: KV dtype rows and SHA-256. Transports: gRPC
 * (KvTransfer.Push) and in-process.
 */
export * from "./contract.js";
export * from "./codec/index.js";
export { KvSender, kvTransferMeta, batchKvSink, transferBytes, type KvSenderOptions, type KvTransferIds } from "./sender.js";
export { KvInbox, KvReceiver, type KvInboxOptions, type KvReceiveStats } from "./receiver.js";
export { KvLedger, KvHold, KV_RELEASE_REASONS, type KvLedgerOptions, type KvHoldKind, type KvReleaseReason } from "./ledger.js";
export { connectInProcess, type InProcessOptions } from "./transports/in-process.js";
export {
  grpcKvConnector,
  kvTransferService,
  frameToWire,
  frameFromWire,
  generationParamsFromWire,
  generationParamsToWire,
  peerHost,
  REQUEST_ID_METADATA_KEY,
  type GrpcKvConnectorOptions,
  type PushCallContext,
} from "./transports/grpc.js";
