import { describe, expect, it } from "vitest";
import { pino } from "pino";
import { isEntryPoint, ServiceLifecycle, UnavailableError, withTimeout } from "@moela/core";

/** A logger whose lines land in `lines`. */
function capture(): { logger: pino.Logger; lines: Record<string, unknown>[] } {
  const lines: Record<string, unknown>[] = [];
  const logger = pino({ level: "debug" }, { write: (s: string) => void lines.push(JSON.parse(s) as Record<string, unknown>) });
  return { logger, lines };
}

describe("ServiceLifecycle", () => {
  it("closes last made first, once, logging a failing step and running the rest", async () => {
    const { logger, lines } = capture();
    const life = new ServiceLifecycle(logger);
    const order: string[] = [];
    const started = await life.start(async () => {
      life.defer(() => order.push("a"), "a");
      life.defer(() => {
        throw new Error("b broke");
      });
      life.defer(async () => order.push("c"));
      return "up";
    });
    expect(started).toBe("up");
    expect(life.draining()).toBe(false);
    const first = life.close();
    expect(life.draining()).toBe(true);
    expect(life.close()).toBe(first);
    await first;
    expect(order).toEqual(["c", "a"]);
    expect(lines.filter((l) => l.msg === "error while closing")).toHaveLength(1);
    expect(lines.filter((l) => l.msg === "closed").map((l) => l.what)).toEqual(["a"]);
  });

  it("a failed start closes what it made and rethrows", async () => {
    const { logger } = capture();
    const life = new ServiceLifecycle(logger);
    const order: string[] = [];
    await expect(
      life.start(async () => {
        life.defer(() => order.push("made"));
        throw new Error("start failed");
      }),
    ).rejects.toThrow("start failed");
    expect(order).toEqual(["made"]);
  });
});

describe("withTimeout", () => {
  it("passes a prompt answer through and turns a late one into UNAVAILABLE naming what", async () => {
    await expect(withTimeout(Promise.resolve(7), 1_000, "x")).resolves.toBe(7);
    const late = withTimeout(new Promise(() => {}), 10, "Redis at redis://h:1");
    await expect(late).rejects.toBeInstanceOf(UnavailableError);
    await expect(late).rejects.toThrow("Redis at redis://h:1 did not answer within 10 ms");
  });
});

describe("isEntryPoint", () => {
  it("is false for a module that is not the script this process started with", () => {
    expect(isEntryPoint(import.meta.url)).toBe(false);
  });
});
