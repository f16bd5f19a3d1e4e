import { describe, expect, it } from "vitest";
import { DisposableStack } from "@moela/core";

describe("DisposableStack", () => {
  it("runs the steps last registered first, each awaited before the next", async () => {
    const order: string[] = [];
    const stack = new DisposableStack();
    stack.defer(() => order.push("a"));
    stack.use({
      close: async () => {
        await new Promise((r) => setTimeout(r, 5));
        order.push("b");
      },
    });
    const v = stack.adopt({ name: "c" }, (x) => order.push(x.name));
    expect(v).toEqual({ name: "c" });
    expect(stack.size).toBe(3);
    await stack.disposeAll();
    expect(order).toEqual(["c", "b", "a"]);
    expect(stack.disposed).toBe(true);
  });

  it("passes null and undefined through use() without registering a step", () => {
    const stack = new DisposableStack();
    expect(stack.use(null)).toBeNull();
    expect(stack.use(undefined)).toBeUndefined();
    expect(stack.size).toBe(0);
  });

  it.each([
    { failing: [] as string[], want: undefined },
    { failing: ["b"], want: "b failed" },
    { failing: ["a", "c"], want: "2 clean-up steps failed: c failed; a failed" },
  ])("runs every step even when $failing fail, then throws $want", async ({ failing, want }) => {
    const ran: string[] = [];
    const stack = new DisposableStack();
    for (const name of ["a", "b", "c"]) {
      stack.defer(() => {
        ran.push(name);
        if (failing.includes(name)) throw new Error(`${name} failed`);
      });
    }
    const result = stack.disposeAll();
    if (want === undefined) await expect(result).resolves.toBeUndefined();
    else await expect(result).rejects.toThrow(want);
    expect(ran).toEqual(["c", "b", "a"]);
  });

  it("gathers several failures in an AggregateError holding each", async () => {
    const stack = new DisposableStack();
    const one = new Error("one");
    const two = new Error("two");
    stack.defer(() => Promise.reject(one));
    stack.defer(() => {
      throw two;
    });
    const err: unknown = await stack.disposeAll().catch((e: unknown) => e);
    expect(err).toBeInstanceOf(AggregateError);
    expect((err as AggregateError).errors).toEqual([two, one]);
  });

  it("disposes once: a second disposeAll() gets the first one's promise", async () => {
    let runs = 0;
    const stack = new DisposableStack();
    stack.defer(() => runs++);
    const first = stack.disposeAll();
    expect(stack.disposeAll()).toBe(first);
    await first;
    expect(runs).toBe(1);
    expect(() => stack.defer(() => {})).toThrow(/after disposeAll/);
  });

  it("move() hands the steps to a new stack and leaves the old one empty", async () => {
    const order: string[] = [];
    const stack = new DisposableStack();
    stack.defer(() => order.push("a"));
    const moved = stack.move();
    await stack.disposeAll();
    expect(order).toEqual([]);
    expect(moved.size).toBe(1);
    await moved.disposeAll();
    expect(order).toEqual(["a"]);
  });
});
