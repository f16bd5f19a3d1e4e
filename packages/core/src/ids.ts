import { randomUUID } from "node:crypto";
import { InvalidArgumentError } from "./errors.js";

/** Request ids follow a request through every service and every log line. */
export function newRequestId(): string {
  return `req-${randomUUID()}`;
}

/**
 * The longest request, job or transfer id a service accepts from a peer: the router's ids are at most 128
 * client characters plus its suffixes (a namespace and migration attempts), far below this.
 */
export const MAX_ID_CHARS = 256;
/** The longest free-text reason (a Cancel's) a service keeps. */
export const MAX_REASON_CHARS = 1024;

/** Throws InvalidArgumentError naming `field` unless `value` is a non-empty id of at most MAX_ID_CHARS. */
export function checkPeerId(field: string, value: string): void {
  if (value === "") throw new InvalidArgumentError(`${field} is empty`);
  if (value.length > MAX_ID_CHARS) throw new InvalidArgumentError(`${field} has ${value.length} characters, at most ${MAX_ID_CHARS}`);
}
