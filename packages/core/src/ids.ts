import { randomUUID } from "node:crypto";

/** Request ids follow a request through every service and every log line. */
export function newRequestId(): string {
  return `req-${randomUUID()}`;
}
