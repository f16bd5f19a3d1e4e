/**
 * One service as a child process: spawned with a lifeline pipe on fd 3 (parent-watch.ts), its stdout and
 * stderr line by line into <stateDir>/logs/<role>-<i>.log (the last lines kept for error messages), its
 * ready line read through @moela/core's parseReadyLine, and stop(): SIGTERM, a grace period, SIGKILL.
 * The cluster (launcher.ts) starts, restarts and supervises these.
 */
import { spawn, type ChildProcess } from "node:child_process";
import type { Socket } from "node:net";
import { createWriteStream, mkdirSync, type WriteStream } from "node:fs";
import { dirname } from "node:path";
import { createInterface } from "node:readline";
import { errorMessage, InvalidArgumentError, parseReadyLine, UnavailableError, type ReadyLine, type ServiceRole as Role } from "@moela/core";
import { PARENT_FD, PARENT_FD_ENV } from "./parent-watch.js";
import { MOELA_BIN } from "./paths.js";
import { stopChild } from "./redis-local.js";

/** Lines of a child's output kept in memory for error messages. */
const TAIL_LINES = 40;

export interface ExitInfo {
  readonly code: number | null;
  readonly signal: NodeJS.Signals | null;
}

export function describeExit(e: ExitInfo): string {
  return e.signal !== null ? `was killed by ${e.signal}` : `exited with code ${e.code}`;
}

/** A service that died, timed out or misbehaved before it was up; carries its last log lines. */
export class ServiceStartError extends UnavailableError {
  readonly label: string;
  readonly logPath: string;
  readonly tail: readonly string[];
  constructor(label: string, what: string, logPath: string, tail: readonly string[]) {
    const lines = tail.length > 0 ? `\n--- last ${tail.length} log lines of ${label} (${logPath}) ---\n${tail.join("\n")}` : ` (no output; log: ${logPath})`;
    super(`${label} ${what}${lines}`);
    this.label = label;
    this.logPath = logPath;
    this.tail = tail;
  }
}

/** How to run one role: the executable and the arguments before the service flags. */
export type ServiceCommand = (role: Role) => { readonly file: string; readonly args: readonly string[] };

export const defaultServiceCommand: ServiceCommand = (role) => ({
  file: process.execPath,
  args: [MOELA_BIN, "serve", "--role", role],
});

export interface ServiceProcessOptions {
  readonly role: Role;
  readonly index: number;
  /** Service flags after the role (--model, --grpc-address, ...). */
  readonly args: readonly string[];
  readonly logPath: string;
  readonly command?: ServiceCommand;
  readonly env?: NodeJS.ProcessEnv;
  readonly cwd?: string;
}

/** One service child: its log file, its ready line, its exit. */
export class ServiceProcess {
  readonly role: Role;
  readonly index: number;
  /** "decode 0" */
  readonly label: string;
  readonly logPath: string;
  readonly argv: readonly string[];
  readonly child: ChildProcess;
  /** Resolves once the process is gone and its output is flushed to the log. */
  readonly exited: Promise<ExitInfo>;
  exitInfo: ExitInfo | undefined;
  readyLine: ReadyLine | undefined;
  private readonly lines: string[] = [];
  private readonly log: WriteStream;
  private readonly readyPromise: Promise<ReadyLine>;
  private stopping = false;

  constructor(o: ServiceProcessOptions) {
    this.role = o.role;
    this.index = o.index;
    this.label = `${o.role} ${o.index}`;
    this.logPath = o.logPath;
    const cmd = (o.command ?? defaultServiceCommand)(o.role);
    this.argv = [cmd.file, ...cmd.args, ...o.args];
    mkdirSync(dirname(o.logPath), { recursive: true });
    this.log = createWriteStream(o.logPath, { flags: "w" });
    // fd 3: a pipe only this process holds the other end of; the child exits when it reads EOF there.
    this.child = spawn(cmd.file, [...cmd.args, ...o.args], {
      cwd: o.cwd ?? process.cwd(),
      env: { ...(o.env ?? process.env), [PARENT_FD_ENV]: String(PARENT_FD) },
      stdio: ["ignore", "pipe", "pipe", "pipe"],
    });
    const lifeline = this.child.stdio[PARENT_FD] as Socket | null | undefined;
    // Read it so its end (the child's exit) is seen and the child's "close" can fire.
    lifeline?.on("error", () => {});
    lifeline?.resume();
    let resolveReady!: (r: ReadyLine) => void;
    let rejectReady!: (e: Error) => void;
    this.readyPromise = new Promise<ReadyLine>((res, rej) => {
      resolveReady = res;
      rejectReady = rej;
    });
    // Nobody may be waiting yet when a child dies early; the rejection is read later through waitReady.
    this.readyPromise.catch(() => {});

    const onLine = (line: string, fromStdout: boolean) => {
      this.log.write(`${line}\n`);
      this.lines.push(line);
      if (this.lines.length > TAIL_LINES) this.lines.shift();
      if (!fromStdout || this.readyLine !== undefined) return;
      try {
        const ready = parseReadyLine(line);
        if (ready === null) return;
        if (ready.role !== this.role) throw new InvalidArgumentError(`ready line says role "${ready.role}", expected "${this.role}"`);
        this.readyLine = ready;
        resolveReady(ready);
      } catch (err) {
        rejectReady(new ServiceStartError(this.label, `printed a bad ready line: ${errorMessage(err)}`, this.logPath, this.tail()));
      }
    };
    const closes = [this.child.stdout!, this.child.stderr!].map((stream, i) => {
      const rl = createInterface({ input: stream, crlfDelay: Infinity });
      rl.on("line", (line) => onLine(line, i === 0));
      return new Promise<void>((r) => rl.once("close", () => r()));
    });
    this.exited = new Promise<ExitInfo>((resolveExit) => {
      let spawnError: Error | undefined;
      this.child.once("error", (err) => {
        spawnError = err;
        // A child that never started emits no "close"; settle here.
        if (this.child.pid === undefined) finish({ code: null, signal: null });
      });
      const finish = (info: ExitInfo) => {
        if (this.exitInfo !== undefined) return;
        this.exitInfo = info;
        const why = spawnError !== undefined ? `could not be started: ${spawnError.message}` : describeExit(info);
        rejectReady(new ServiceStartError(this.label, `${why} before it was ready`, this.logPath, this.tail()));
        this.log.end(() => resolveExit(info));
      };
      this.child.once("close", (code, signal) => {
        // Exit only once both pipes have closed, so tail() has the last lines; closes never reject, and
        // `exited` is what callers await.
        void Promise.all(closes).then(() => finish({ code, signal }));
      });
    });
  }

  get pid(): number | undefined {
    return this.child.pid;
  }

  /** The last lines of its output (stdout and stderr interleaved). */
  tail(n = TAIL_LINES): string[] {
    return this.lines.slice(-n);
  }

  /** Whether stop() was called (an exit after it is expected). */
  get stopRequested(): boolean {
    return this.stopping;
  }

  /** Resolves with the ready line; rejects with ServiceStartError if the process dies first. */
  waitReady(): Promise<ReadyLine> {
    return this.readyPromise;
  }

  /** SIGTERM, wait up to graceMs, then SIGKILL; resolves once the process is gone. */
  async stop(graceMs: number): Promise<ExitInfo> {
    this.stopping = true;
    if (this.exitInfo === undefined && this.child.pid !== undefined) await stopChild(this.child, graceMs);
    return this.exited;
  }
}
