// The ready line every service prints on stdout, as the launcher reads it.
import { describe, expect, it } from "vitest";
import { parseReadyLine } from "../../../services/cli/src/launcher.js";

describe("parseReadyLine", () => {
  const good = { event: "ready", role: "decode", pid: 123, grpc: "127.0.0.1:4001", metrics: "http://127.0.0.1:9001/metrics" };

  it.each([
    ["plain text", "listening soon"],
    ["empty", ""],
    ["a pino log line", '{"level":30,"time":1,"msg":"loading"}'],
    ["another event", JSON.stringify({ ...good, event: "draining" })],
    ["a JSON array", "[1,2]"],
    ["truncated JSON", '{"event":"ready","role":'],
  ])("ignores %s", (_name, line) => {
    expect(parseReadyLine(line)).toBeNull();
  });

  it.each([
    ["decode", good],
    ["router with http", { ...good, role: "router", http: "http://127.0.0.1:8000" }],
    ["expert-host with shard and extras", { ...good, role: "expert-host", shard: 1, shard_count: 2 }],
    ["an IPv6 address", { ...good, grpc: "[::1]:4001" }],
  ])("accepts %s", (_name, obj) => {
    const r = parseReadyLine(`  ${JSON.stringify(obj)}  `);
    expect(r).toEqual(obj);
  });

  it.each([
    ["unknown role", { ...good, role: "gateway" }, "role"],
    ["missing pid", { ...good, pid: undefined }, "pid"],
    ["string pid", { ...good, pid: "123" }, "pid"],
    ["grpc without port", { ...good, grpc: "127.0.0.1" }, "grpc"],
    ["grpc as URL", { ...good, grpc: "http://127.0.0.1:4001" }, "grpc"],
    ["metrics not a URL", { ...good, metrics: "127.0.0.1:9001" }, "metrics"],
    ["router without http", { ...good, role: "router" }, "http"],
    ["http not a URL", { ...good, role: "router", http: "8000" }, "http"],
  ])("rejects a ready line with %s, naming the field", (_name, obj, field) => {
    expect(() => parseReadyLine(JSON.stringify(obj))).toThrow(new RegExp(`"${field}"`));
  });
});
