/**
 * @moela/rpc: the grpc-js kit every moela service uses. Servers: createServer/addService with
 * async handlers, serve, drainAndClose, health and reflection built in. Errors: toStatus at the
 * server edge, fromStatus at the client edge. Clients: connect, unaryCall, serverStreamCall,
 * clientStreamCall, waitForServing. Deadlines: absolute ms, propagated with childDeadline. Internal
 * security: a shared secret in metadata and TLS/mTLS (security.ts), given to createServer and connect.
 */
export {
  createServer,
  serve,
  drainAndClose,
  serviceNameOf,
  RpcServer,
  DEFAULT_MAX_MESSAGE_BYTES,
  DEFAULT_CHANNEL_OPTIONS,
  type AsyncHandler,
  type AsyncServiceImplementation,
  type CreateServerOptions,
  type DrainOptions,
  type MethodDefinitionLike,
  type ServeOptions,
  type ServiceDefinitionLike,
} from "./server.js";
export {
  unaryHandler,
  serverStreamHandler,
  clientStreamHandler,
  bidiStreamHandler,
  type BidiStreamHandler,
  type CallContext,
  type CallEndEvent,
  type ClientStreamHandler,
  type HandlerOptions,
  type LiveCall,
  type ServerStreamHandler,
  type UnaryHandler,
} from "./handlers.js";
export { toStatus, fromStatus, errorForCode, asMoelaError, isServiceError, FAILURE_REASON_METADATA, INTERNAL_DETAILS } from "./errors.js";
export {
  checkHealth,
  waitForServing,
  watchHealth,
  HEALTH_SERVICE_NAME,
  type HealthQueryOptions,
  type HealthStatus,
  type WaitForServingOptions,
} from "./health.js";
export { childDeadline, deadlineAfter, deadlineExceeded, deadlineSignal, deadlineToMs, remainingMs, throwIfExpired } from "./deadlines.js";
export {
  channelCredentials,
  clientChannel,
  internalSecurity,
  internalSecurityNames,
  internalSecuritySettings,
  parseInternalSecurity,
  secretClientInterceptor,
  secretMatches,
  secretServerInterceptor,
  serverCredentials,
  INTERNAL_SECRET_METADATA_KEY,
  INTERNAL_SECURITY_FLAGS,
  INTERNAL_SECURITY_HELP,
  MAX_SECRET_CHARS,
  MIN_SECRET_CHARS,
  NO_INTERNAL_SECURITY,
  OPEN_METHOD_PREFIXES,
  type ClientChannel,
  type InternalSecurity,
  type InternalSecurityFlags,
  type InternalSecurityNames,
  type RefusedCall,
} from "./security.js";
export {
  INTERNAL_SECURITY_SCHEMA,
  internalSecurityOf,
  withInternalSecurity,
  type InternalSecurityKey,
  type WithInternalSecurity,
} from "./security-settings.js";
export { connect, unaryCall, serverStreamCall, clientStreamCall, type CallOpts } from "./client.js";
