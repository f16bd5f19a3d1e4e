/**
 * The one main() lifecycle every moela service shares (STYLE.md point 1): parse the configuration
 * (an error: its message on stderr, exit 2; a help request: the usage on stdout, exit 0), make the
 * logger, start (a failure: a fatal log line and `<name>: <message>` on stderr, exit 1), print ONE
 * ready line on stdout (JSON, the launcher parses it), wait for SIGTERM/SIGINT, log the shutdown,
 * close/drain, log "stopped", exit 0. What differs between services is spelled out in the spec.
 */
import { createLogger, type Logger } from "./log.js";
import { errorMessage } from "./errors.js";

/** Resolves with the first SIGTERM or SIGINT, then stops listening (a second signal gets Node's default). */
export function waitForSignal(): Promise<NodeJS.Signals> {
  return new Promise((resolve) => {
    const on = (sig: NodeJS.Signals): void => {
      process.off("SIGTERM", on);
      process.off("SIGINT", on);
      resolve(sig);
    };
    process.on("SIGTERM", on);
    process.on("SIGINT", on);
  });
}

export interface ServiceSpec<C extends { readonly logLevel: string }, R> {
  /** The logger's name and the prefix of the start-failure message ("<name> failed to start", "<name>: ..."). */
  readonly name: string;
  /** Validates flags over env twins; throws with a message naming both. Null = help asked for (needs `usage`). */
  parse(argv: string[], env: NodeJS.ProcessEnv): C | null;
  /** Printed on stdout when parse returns null. */
  readonly usage?: string;
  /**
   * Listen for SIGTERM/SIGINT before start() rather than after it, so a signal during a long start
   * (a model load) still ends in a clean close instead of Node's default exit.
   */
  readonly signalsDuringStart?: boolean;
  start(config: C, logger: Logger): Promise<R>;
  /** The JSON ready line, without its newline. */
  readyLine(running: R, config: C): string;
  /** Called right after the ready line is printed (e.g. a "ready" log line). */
  onReady?(running: R, config: C, logger: Logger): void;
  /** The info line logged when the signal arrives: its message, and fields beyond `signal`. */
  readonly shutdownMessage: string;
  shutdownFields?(running: R): Record<string, unknown>;
  /** Close/drain; fields returned go on the "stopped" log line. */
  close(running: R, config: C): Promise<Record<string, unknown> | void>;
}

/** Runs one service to completion; resolves with the process exit code (0, 1 start failed, 2 bad config). */
export async function runService<C extends { readonly logLevel: string }, R>(spec: ServiceSpec<C, R>, argv: string[], env: NodeJS.ProcessEnv): Promise<number> {
  let config: C | null;
  try {
    config = spec.parse(argv, env);
  } catch (err) {
    process.stderr.write(`${errorMessage(err)}\n`);
    return 2;
  }
  if (config === null) {
    process.stdout.write(`${spec.usage ?? ""}\n`);
    return 0;
  }
  const logger = createLogger(spec.name, config.logLevel);
  const early = spec.signalsDuringStart === true ? waitForSignal() : undefined;
  let running: R;
  try {
    running = await spec.start(config, logger);
  } catch (err) {
    logger.fatal({ err }, `${spec.name} failed to start`);
    process.stderr.write(`${spec.name}: ${errorMessage(err)}\n`);
    return 1;
  }
  process.stdout.write(`${spec.readyLine(running, config)}\n`);
  spec.onReady?.(running, config, logger);
  const signal = await (early ?? waitForSignal());
  logger.info({ signal, ...spec.shutdownFields?.(running) }, spec.shutdownMessage);
  const stopped = await spec.close(running, config);
  if (stopped === undefined) logger.info("stopped");
  else logger.info(stopped, "stopped");
  return 0;
}
