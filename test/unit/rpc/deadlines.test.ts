/** Deadline arithmetic: absolute ms since the epoch, Infinity for none, children never outlive parents. */
import { Code, MoelaError } from "@moela/core";
import { childDeadline, deadlineSignal, deadlineToMs, remainingMs, throwIfExpired } from "@moela/rpc";
import { describe, expect, it } from "vitest";

const NOW = 1_700_000_000_000;

describe("deadlines", () => {
  it.each([
    ["no deadline", undefined, Infinity],
    ["ms", NOW + 500, NOW + 500],
    ["Date", new Date(NOW + 500), NOW + 500],
    ["Infinity", Infinity, Infinity],
  ] as const)("deadlineToMs: %s", (_, deadline, expected) => {
    expect(deadlineToMs(deadline)).toBe(expected);
  });

  it.each([
    ["in the future", NOW + 250, 250],
    ["passed", NOW - 10, 0],
    ["none", undefined, Infinity],
  ] as const)("remainingMs: %s", (_, deadline, expected) => {
    expect(remainingMs(deadline, NOW)).toBe(expected);
  });

  it.each([
    ["parent sooner than the cap", NOW + 100, 1_000, NOW + 100],
    ["cap sooner than the parent", NOW + 5_000, 1_000, NOW + 1_000],
    ["no parent deadline", undefined, 1_000, NOW + 1_000],
    ["neither", undefined, Infinity, Infinity],
  ] as const)("childDeadline: %s", (_, parent, cap, expected) => {
    expect(childDeadline(parent, cap, NOW)).toBe(expected);
  });

  it("throwIfExpired throws DEADLINE_EXCEEDED naming the work, only once the deadline passed", () => {
    expect(() => throwIfExpired(NOW + 1, "prefill chunk 3", NOW)).not.toThrow();
    let caught: unknown;
    try {
      throwIfExpired(NOW, "prefill chunk 3", NOW);
    } catch (e) {
      caught = e;
    }
    expect(caught).toBeInstanceOf(MoelaError);
    expect((caught as MoelaError).code).toBe(Code.DEADLINE_EXCEEDED);
    expect((caught as Error).message).toContain("prefill chunk 3");
  });

  it("deadlineSignal aborts with DEADLINE_EXCEEDED at the deadline", async () => {
    const signal = deadlineSignal(Date.now() + 20, "kv wait");
    await new Promise((resolve) => signal.addEventListener("abort", resolve, { once: true }));
    expect((signal.reason as MoelaError).code).toBe(Code.DEADLINE_EXCEEDED);
  });

  it("deadlineSignal follows another signal that aborts first, with its reason", () => {
    const parent = new AbortController();
    const signal = deadlineSignal(Date.now() + 60_000, "kv wait", parent.signal);
    const reason = new MoelaError("client went away", Code.CANCELLED);
    parent.abort(reason);
    expect(signal.aborted).toBe(true);
    expect(signal.reason).toBe(reason);
  });
});
