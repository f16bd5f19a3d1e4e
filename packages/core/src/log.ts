import { pino, type Logger } from "pino";

export type { Logger };

/** Structured JSON logs on stderr (stdout belongs to machine-readable output). */
export function createLogger(name: string, level: string = "info"): Logger {
  return pino({ name, level, base: { service: name } }, pino.destination(2));
}
