/**
 * A service started by the launcher exits when the launcher is gone, however it went (kill -9
 * included), so a dead launcher never leaves orphans serving, registered in Redis and holding ports.
 *
 * The launcher gives every child one end of a pipe as an extra file descriptor (fd 3) and names it in
 * MOELA_PARENT_FD; only the launcher holds the other end. The kernel closes that end when the
 * launcher dies, whatever killed it, and the child reads EOF at once: no polling, no pid games (a
 * re-parented child's ppid says little under a subreaper, and pids are reused). On EOF the child
 * signals itself SIGTERM, so it shuts down as it does on Ctrl-C (health NOT_SERVING, deregister,
 * close), and exits hard after `graceMs` should that take longer: nobody is left to wait for it.
 *
 * `moela serve` installs the watch for every role (serve.ts); a service started any other way (by
 * hand, by Kubernetes, in-process by a test) has no MOELA_PARENT_FD and is unaffected.
 */
import { Socket } from "node:net";

/** The environment variable that names the watched descriptor. */
export const PARENT_FD_ENV = "MOELA_PARENT_FD";
/** The descriptor the launcher passes (stdio index 3: after stdin, stdout, stderr). */
export const PARENT_FD = 3;
/** How long a service whose launcher died may take to shut down before it exits anyway. */
export const PARENT_GONE_GRACE_MS = 3_000;

export interface ParentWatchOptions {
  /** Called once when the launcher is gone, before the SIGTERM (e.g. to log it). */
  readonly onGone?: () => void;
  readonly graceMs?: number;
}

/**
 * Watch the launcher's pipe named by env MOELA_PARENT_FD (and take the variable out of `env`, so
 * nothing this process starts inherits a meaning for it). Returns a function that stops watching,
 * or undefined when there is nothing to watch.
 */
export function exitWithParent(env: NodeJS.ProcessEnv = process.env, o: ParentWatchOptions = {}): (() => void) | undefined {
  const raw = env[PARENT_FD_ENV];
  if (raw === undefined) return undefined;
  delete env[PARENT_FD_ENV];
  const fd = Number(raw);
  if (!Number.isInteger(fd) || fd < 3) return undefined;
  let pipe: Socket;
  try {
    pipe = new Socket({ fd, readable: true, writable: false });
  } catch {
    // Not an open pipe or socket (started by hand with the variable set): nothing to watch.
    return undefined;
  }
  let watching = true;
  const gone = (): void => {
    if (!watching) return;
    watching = false;
    // stdout and stderr were pipes to the launcher too: what is still written goes nowhere, and a
    // broken pipe must not turn a clean shutdown into a crash.
    for (const out of [process.stdout, process.stderr]) out.on("error", () => {});
    o.onGone?.();
    setTimeout(() => process.exit(1), o.graceMs ?? PARENT_GONE_GRACE_MS).unref();
    process.kill(process.pid, "SIGTERM");
  };
  // The launcher never writes; reading is what makes EOF (its death) observable.
  pipe.on("data", () => {});
  pipe.once("end", gone);
  pipe.once("close", gone);
  pipe.on("error", gone);
  pipe.resume();
  // The watch alone never keeps a service alive.
  pipe.unref();
  return () => {
    watching = false;
    pipe.destroy();
  };
}
