import { pino, type Logger } from "pino";

export type { Logger };

/** Structured JSON logs on stderr (stdout belongs to machine-readable output). */
export function createLogger(name: string, level: string = "info"): Logger {
  return pino({ name, level, base: { service: name } }, pino.destination(2));
}

/**
 * The log field that carries a request id on every line about that request, in every service,
 * so one query (`requestId = "req-..."`) finds a request's whole path.
 */
export const REQUEST_ID_FIELD = "requestId";

/** A child logger whose every line carries `requestId` (and `fields`): use one per request. */
export function requestLogger(logger: Logger, requestId: string, fields: Record<string, unknown> = {}): Logger {
  return logger.child({ ...fields, [REQUEST_ID_FIELD]: requestId });
}
