/**
 * The ready line: the one JSON line a service prints on stdout once it serves (runService prints it),
 * and what the launcher (services/cli/src/service-process.ts) reads to learn where the service listens:
 *
 *   {"event":"ready","role":"decode","pid":123,"grpc":"127.0.0.1:PORT","metrics":"http://127.0.0.1:PORT/metrics"}
 *
 * The router adds "http" (its OpenAI API), an expert-host its "shard". formatReadyLine writes it,
 * parseReadyLine reads it back; both live here so the two ends cannot drift apart.
 */
import { InvalidArgumentError } from "./errors.js";

/** The roles of the services that print a ready line. */
export const SERVICE_ROLES = ["router", "prefill", "decode", "expert-host"] as const;
export type ServiceRole = (typeof SERVICE_ROLES)[number];

export function isServiceRole(s: string): s is ServiceRole {
  return (SERVICE_ROLES as readonly string[]).includes(s);
}

/** What a service prints (one JSON line on stdout) once it serves. */
export interface ReadyLine {
  readonly event: "ready";
  readonly role: ServiceRole;
  readonly pid: number;
  /** host:port of its gRPC server. */
  readonly grpc: string;
  /** http://host:port/metrics */
  readonly metrics: string;
  /** router only: http://host:port of the OpenAI API. */
  readonly http?: string;
  /** expert-host only: its shard index (some services print "i/H"). */
  readonly shard?: number | string;
  readonly [extra: string]: unknown;
}

/** The fields a service fills in; they are written in the order given, after event, role and pid. */
export type ReadyFields = Omit<ReadyLine, "event" | "role" | "pid">;

/** The ready line of `role` (without its newline): event, role, pid, then `fields` in their order. */
export function formatReadyLine(role: ServiceRole, fields: ReadyFields, pid: number = process.pid): string {
  return JSON.stringify({ event: "ready", role, pid, ...fields });
}

const HOST_PORT = /^(\[[0-9a-fA-F:.]+\]|[^\s:/]+):(\d{1,5})$/;

/**
 * The ready line in one line of a child's stdout, or null when the line is something else
 * (any non-JSON text, or JSON without event "ready"). A line that says event "ready" but lacks
 * a field the launcher needs is an error naming the field.
 */
export function parseReadyLine(line: string): ReadyLine | null {
  const text = line.trim();
  if (!text.startsWith("{")) return null;
  let v: unknown;
  try {
    v = JSON.parse(text);
  } catch {
    return null;
  }
  if (v === null || typeof v !== "object" || Array.isArray(v)) return null;
  const o = v as Record<string, unknown>;
  if (o["event"] !== "ready") return null;
  const bad = (field: string, want: string) => new InvalidArgumentError(`ready line: "${field}" must be ${want}, got ${JSON.stringify(o[field])} in ${text}`);
  if (typeof o["role"] !== "string" || !isServiceRole(o["role"])) throw bad("role", `one of ${SERVICE_ROLES.join(", ")}`);
  if (typeof o["pid"] !== "number" || !Number.isInteger(o["pid"]) || o["pid"] <= 0) throw bad("pid", "a positive integer");
  if (typeof o["grpc"] !== "string" || !HOST_PORT.test(o["grpc"])) throw bad("grpc", "host:port");
  if (typeof o["metrics"] !== "string" || !/^https?:\/\//.test(o["metrics"])) throw bad("metrics", "an http URL");
  if (o["http"] !== undefined && (typeof o["http"] !== "string" || !/^https?:\/\//.test(o["http"]))) throw bad("http", "an http URL");
  if (o["role"] === "router" && o["http"] === undefined) throw bad("http", "the router's http URL");
  return o as unknown as ReadyLine;
}
