/**
 * Progress on stderr: a cli-progress bar per phase (warm-up or measured round of one level on one
 * target) on a terminal, one summary line per phase otherwise (logs stay readable).
 */
import cliProgress from "cli-progress";
import { formatLevel, type ProgressEvent } from "./runner.js";

export interface ProgressReporter {
  readonly onProgress: (ev: ProgressEvent) => void;
  /** Stops a bar left running (after an abort). */
  stop(): void;
}

export function progressReporter(stream: NodeJS.WriteStream, targetNames: readonly string[]): ProgressReporter {
  const tty = stream.isTTY === true;
  let bar: cliProgress.SingleBar | null = null;
  let label = "";
  let done = 0;
  let failed = 0;
  let startedAt = 0;
  return {
    onProgress(ev) {
      if (ev.type === "phase") {
        const phase = ev.phase === "warmup" ? "warm-up" : `round ${ev.round + 1}`;
        label = `${formatLevel(ev.level)} ${targetNames[ev.target] ?? ev.target} ${phase}`;
        done = 0;
        failed = 0;
        startedAt = performance.now();
        if (tty) {
          bar = new cliProgress.SingleBar(
            { format: `${label.padEnd(28)} {bar} {value}/{total} | failed {failed} | {duration}s`, stream, hideCursor: true, barsize: 30 },
            cliProgress.Presets.shades_classic,
          );
          bar.start(ev.total, 0, { failed: 0 });
        }
      } else if (ev.type === "request") {
        done++;
        if (!ev.ok) failed++;
        bar?.update(done, { failed });
      } else {
        bar?.stop();
        bar = null;
        if (!tty) stream.write(`${label}: ${done - failed} ok, ${failed} failed in ${((performance.now() - startedAt) / 1000).toFixed(1)} s\n`);
      }
    },
    stop() {
      bar?.stop();
      bar = null;
    },
  };
}
