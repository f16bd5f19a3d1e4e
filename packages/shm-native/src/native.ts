/**
 * The shared-memory addon, when it built: `shmNative` is the addon, or null with `shmLoadError` saying why not
 * (no compiler, not Linux). Nothing here throws at import; callers fall back to gRPC.
 */
import { createRequire } from "node:module";

/** A watcher's handle: close() stops its thread (idempotent). */
export interface ShmWatcher {
  close(): void;
}

export interface ShmNative {
  /**
   * The file at `path` mapped shared as an ArrayBuffer of `bytes`; `create` makes a new file (0600, fails if one
   * exists); otherwise the file must have `bytes`, or any size when bytes is 0.
   */
  map(path: string, bytes: number, create: boolean): ArrayBuffer;
  /** Removes the name; both sides' mappings stay valid. */
  unlink(path: string): void;
  /** Sets words1[index1] and words2[index2] to 1 and wakes their sleepers in one system call (FUTEX_WAKE_OP). */
  ringPair(words1: Int32Array, index1: number, words2: Int32Array, index2: number): void;
  /** Wakes every thread, of any process, sleeping on words[index]. */
  wake(words: Int32Array, index: number): void;
  /** Blocks this thread while words[index] === expected, at most timeoutMs; false on time-out. */
  wait(words: Int32Array, index: number, expected: number, timeoutMs: number): boolean;
  /** Calls onChange() on this event loop whenever words[index] changes (changes may coalesce into one call). */
  watch(words: Int32Array, index: number, onChange: () => void): ShmWatcher;
}

export let shmLoadError: Error | null = null;

function load(): ShmNative | null {
  if (process.platform !== "linux") {
    shmLoadError = new Error("shared-memory channels need Linux (futexes on a shared mapping)");
    return null;
  }
  try {
    return createRequire(import.meta.url)("../build/Release/moela_shm.node") as ShmNative;
  } catch (err) {
    shmLoadError = err instanceof Error ? err : new Error(String(err));
    return null;
  }
}

export const shmNative: ShmNative | null = load();
