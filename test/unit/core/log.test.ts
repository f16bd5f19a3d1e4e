import { Writable } from "node:stream";
import { pino } from "pino";
import { describe, expect, it } from "vitest";
import { REQUEST_ID_FIELD, requestLogger } from "@moela/core";

/** A pino logger writing JSON lines into an array. */
function capture(): { logger: pino.Logger; lines: Array<Record<string, unknown>> } {
  const lines: Array<Record<string, unknown>> = [];
  const sink = new Writable({
    write(chunk: Buffer, _enc, done) {
      for (const l of chunk.toString().split("\n")) if (l !== "") lines.push(JSON.parse(l) as Record<string, unknown>);
      done();
    },
  });
  return { logger: pino({ base: { service: "test" } }, sink), lines };
}

describe("requestLogger", () => {
  it("puts the request id and the extra fields on every line of the request, and only there", () => {
    const { logger, lines } = capture();
    const log = requestLogger(logger, "req-1", { api: "grpc" });
    log.info("admitted");
    log.child({ transferId: "req-1.0.ab" }).warn({ bytes: 10 }, "transfer failed");
    logger.info("unrelated");
    expect(lines.map((l) => [l["msg"], l[REQUEST_ID_FIELD]])).toEqual([
      ["admitted", "req-1"],
      ["transfer failed", "req-1"],
      ["unrelated", undefined],
    ]);
    expect(lines[0]).toMatchObject({ service: "test", api: "grpc" });
    expect(lines[1]).toMatchObject({ transferId: "req-1.0.ab", bytes: 10 });
  });

  it("a field named like the request id in `fields` cannot replace it", () => {
    const { logger, lines } = capture();
    requestLogger(logger, "req-2", { [REQUEST_ID_FIELD]: "other" }).info("x");
    expect(lines[0]![REQUEST_ID_FIELD]).toBe("req-2");
  });
});
