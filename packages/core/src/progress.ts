/**
 * A weight-loading progress bar on a terminal. Only when the stream is a TTY: the services log JSON lines
 * (pino) to stdout and stderr, and a bar's carriage returns in a log file or `docker logs` would be noise,
 * so elsewhere this returns undefined and nothing is drawn. The load is synchronous, so cli-progress draws
 * from update() itself (synchronousUpdate), not from its timer.
 */
import cliProgress from "cli-progress";

/** What the engine's loaders report (structurally @moela/engine's LoadProgress; core imports no package). */
export interface LoadProgressLike {
  readonly done: number;
  readonly total: number;
  readonly bytes: number;
}

export interface LoadBar {
  readonly onProgress: (p: LoadProgressLike) => void;
  /** Ends the bar (its last line stays); call when the load finished or failed. */
  stop(): void;
}

/** A bar "<label> [=====] 12/63 parts | 1.2 GB", or undefined when `stream` is not a terminal. */
export function weightLoadBar(label: string, stream: NodeJS.WriteStream = process.stderr): LoadBar | undefined {
  if (stream.isTTY !== true) return undefined;
  let bar: cliProgress.SingleBar | null = null;
  return {
    onProgress(p) {
      if (bar === null) {
        bar = new cliProgress.SingleBar(
          { format: `${label} {bar} {value}/{total} parts | {gb} GB | {duration}s`, stream, hideCursor: true, barsize: 30, clearOnComplete: false },
          cliProgress.Presets.shades_classic,
        );
        bar.start(p.total, 0, { gb: "0.00" });
      }
      bar.update(p.done, { gb: (p.bytes / 1e9).toFixed(2) });
    },
    stop() {
      bar?.stop();
      bar = null;
    },
  };
}

/** Run a synchronous load with a weight-loading bar on a terminal stderr (none elsewhere); the bar ends either way. */
export function withWeightLoadBar<T>(label: string, load: (onProgress: ((p: LoadProgressLike) => void) | undefined) => T): T {
  const bar = weightLoadBar(label);
  try {
    return load(bar?.onProgress);
  } finally {
    bar?.stop();
  }
}
