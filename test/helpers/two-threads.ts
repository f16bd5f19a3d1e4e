// What the tests of where products run share: the tiny-v3 checkpoint, and the kernel addon on two threads that
// split every product, so that a kernel worker takes chunks whenever it is allowed to (its workerChunks() counter
// then shows whether it was); and an A/B switch of @moela/core's ab-switch.ts turned on for the test.
import { afterAll, afterEach, beforeAll, vi } from "vitest";
import type { AbSwitch } from "@moela/core";
import { nativeKernelsAddon } from "@moela/engine";
import { makeCheckpoint, removeCheckpoints } from "./checkpoints.js";

/** Registers the suite's hooks; returns the checkpoint's folder, valid from beforeAll on. */
export function tinyModelOnTwoThreads(): () => string {
  let dir: string | undefined;
  beforeAll(() => {
    dir = makeCheckpoint("tiny-v3");
    nativeKernelsAddon!.setThreads(2, 0);
  });
  afterAll(() => {
    nativeKernelsAddon!.setThreads(1, 1 << 16);
    removeCheckpoints();
  });
  // A test that turned a switch on leaves it off for the next.
  afterEach(() => {
    vi.useRealTimers();
    delete process.env["MOELA_AB_SWITCH"];
  });
  return () => dir!;
}

/** Turns `name` on for the rest of the test: only Date is faked (timers still fire), at 150 ms, in an on window. */
export function abSwitchOnNow(name: AbSwitch): void {
  process.env["MOELA_AB_SWITCH"] = name;
  vi.useFakeTimers({ toFake: ["Date"] });
  vi.setSystemTime(150);
}
