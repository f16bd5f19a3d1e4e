/**
 * Choosing a kernel backend. A process has a default (`fast` unless told otherwise), which services set once
 * from their --kernels flag: a model takes it unless given its own, and so do the helpers that run experts
 * outside a model (an expert-host), so every part of a process computes with the same kernels.
 */
import { InvalidArgumentError } from "@moela/core";
import { fastBackendOver, fastKernels, fastUnavailable, native } from "./native.js";
import { portableKernels, referenceKernels } from "./portable.js";
import { KERNELS_NAMES, type KernelBackend, type KernelsName } from "./types.js";

export * from "./types.js";
export * from "./mla-layout.js";
export { groupedMatmul, matmulTransposed, attendTs } from "./portable.js";
export { native as nativeKernelsAddon, fastBackendOver };

let warned = false;

/** The backend for a name; `fast` without the native addon falls back to `portable` (with one warning). */
export function kernelsByName(name: KernelsName): KernelBackend {
  switch (name) {
    case "reference":
      return referenceKernels;
    case "portable":
      return portableKernels;
    case "fast":
      if (fastKernels !== null) return fastKernels;
      if (!warned) {
        warned = true;
        process.emitWarning(`native kernels unavailable (${fastUnavailable?.message ?? "not built"}); using the portable TypeScript kernels`);
      }
      return portableKernels;
  }
}

/** Whether the native kernels loaded (so `fast` is really native). */
export function fastKernelsAvailable(): boolean {
  return fastKernels !== null;
}

export function parseKernelsName(s: string): KernelsName {
  if ((KERNELS_NAMES as readonly string[]).includes(s)) return s as KernelsName;
  throw new InvalidArgumentError(`kernels must be one of ${KERNELS_NAMES.join(", ")}, got '${s}'`);
}

let processDefault: KernelBackend | null = null;

/** The process's default backend (`fast` until setDefaultKernels says otherwise). */
export function defaultKernels(): KernelBackend {
  processDefault ??= kernelsByName("fast");
  return processDefault;
}

export function setDefaultKernels(name: KernelsName): KernelBackend {
  processDefault = kernelsByName(name);
  return processDefault;
}

/**
 * A service's start-up: the process's kernel backend and, for the fast kernels, the threads of its (process-wide)
 * pool. The TypeScript backends take their threads per model (DeepseekModel's `threads`).
 */
export function configureKernels(name: KernelsName, threads = 1): KernelBackend {
  if (!(Number.isInteger(threads) && threads >= 1)) throw new InvalidArgumentError(`threads must be a positive integer, got ${threads}`);
  const k = setDefaultKernels(name);
  if (k.threadsAreProcessWide) native?.setThreads(threads);
  return k;
}
