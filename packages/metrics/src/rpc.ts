/**
 * The server-side gRPC call metrics every service records the same way: pass the returned function as
 * @moela/rpc's `createServer({ onCallEnd })`.
 */
import { Code } from "@moela/core";
import type { Counter, Histogram } from "prom-client";

const CODE_NAME: ReadonlyMap<number, string> = new Map(Object.entries(Code).map(([name, code]) => [code as number, name]));

/** The status name of a gRPC code ("OK", "UNAVAILABLE", ...), or the number when unknown. */
export function grpcCodeName(code: number): string {
  return CODE_NAME.get(code) ?? String(code);
}

export interface RpcServerMetrics {
  readonly rpcServerHandled: Counter<"method" | "code">;
  readonly rpcServerHandling: Histogram<"method">;
}

export function rpcServerCallRecorder(m: RpcServerMetrics): (e: { method: string; code: number; durationMs: number }) => void {
  return (e) => {
    m.rpcServerHandled.inc({ method: e.method, code: grpcCodeName(e.code) });
    m.rpcServerHandling.observe({ method: e.method }, e.durationMs / 1000);
  };
}
