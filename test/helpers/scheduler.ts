/** Instance loads for the scheduler's tests. */
import type { InstanceLoad } from "@moela/scheduler";

/** An idle, accepting instance with 100 free blocks of 16 tokens, or that with `over` applied. */
export const instanceLoad = (over: Partial<InstanceLoad> = {}): InstanceLoad => ({
  freeKvBlocks: 100,
  totalKvBlocks: 100,
  blockSize: 16,
  runningSequences: 0,
  waitingSequences: 0,
  pendingTransfers: 0,
  accepting: true,
  ...over,
});
