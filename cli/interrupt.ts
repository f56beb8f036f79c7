/**
 * SIGINT and SIGTERM for every `kvport` command, one rule: registered cleanups run
 * (child processes killed, temporary directories removed) and the process exits
 * `128 + signal number`: 130 for SIGINT, 143 for SIGTERM. A command that waits for the
 * signal ({@linkcode untilInterrupted}, {@linkcode whileInterruptible}) is told and
 * winds down itself (closing what it holds) within a grace period; any other exits as
 * soon as the cleanups have run. A second signal exits at once.
 *
 * @example
 * ```ts
 * import { onInterrupt, temporaryDirectory } from "./interrupt.ts";
 * const dir = temporaryDirectory("kvport-demo-"); // removed on exit and on Ctrl-C
 * const off = onInterrupt(() => console.error("stopping"));
 * off();
 * dir.remove();
 * ```
 * @module
 */
import { after } from "../src/deadline.ts";
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import process from "node:process";

/** Exit codes of the two signals, 128 + the signal's number. */
export const SIGNAL_EXIT_CODES: Readonly<Record<"SIGINT" | "SIGTERM", number>> = {
  SIGINT: 130,
  SIGTERM: 143,
};

/** How long a command may take to wind down after a signal before it is exited for. */
export const GRACE_MS = 5_000;

/** Thrown (or returned through) when a command was stopped by a signal. */
export class Interrupted extends Error {
  /** @param signal the signal that stopped the command */
  constructor(readonly signal: "SIGINT" | "SIGTERM") {
    super(`interrupted by ${signal}`);
    this.name = "Interrupted";
  }

  /** The exit code: 130 for SIGINT, 143 for SIGTERM. */
  get exitCode(): number {
    return SIGNAL_EXIT_CODES[this.signal];
  }
}

const controller = new AbortController();
const cleanups = new Set<() => void | Promise<void>>();
let installed = false;
let received: "SIGINT" | "SIGTERM" | null = null;
/** Waits that handle the signal themselves: while there are any, the process is not
 * exited for the command at once. */
let observers = 0;

/**
 * Aborted, with an {@linkcode Interrupted} as reason, on the first SIGINT or SIGTERM
 * after {@linkcode installInterruptHandlers}.
 *
 * @example
 * ```ts
 * import { interruptSignal } from "./interrupt.ts";
 * if (interruptSignal.aborted) console.log("stopping");
 * ```
 */
export const interruptSignal: AbortSignal = controller.signal;

/**
 * The signal received, or `null`.
 *
 * @example
 * ```ts
 * import { interrupted } from "./interrupt.ts";
 * console.log(interrupted() ?? "running");
 * ```
 */
export function interrupted(): "SIGINT" | "SIGTERM" | null {
  return received;
}

/**
 * Runs `cleanup` when a signal arrives (before the process exits); returns a function
 * that unregisters it.
 *
 * @example
 * ```ts
 * import { onInterrupt } from "./interrupt.ts";
 * const off = onInterrupt(() => console.error("cleaning up"));
 * off();
 * ```
 */
export function onInterrupt(cleanup: () => void | Promise<void>): () => void {
  cleanups.add(cleanup);
  return () => cleanups.delete(cleanup);
}

/**
 * Installs the SIGINT/SIGTERM handlers (idempotent). `kvport`'s entry point does it for
 * every command; in-process callers of a command that runs until stopped get it from
 * {@linkcode untilInterrupted}.
 *
 * @example
 * ```ts
 * import { installInterruptHandlers } from "./interrupt.ts";
 * installInterruptHandlers();
 * ```
 */
export function installInterruptHandlers(): void {
  if (installed) return;
  installed = true;
  const on = (sig: "SIGINT" | "SIGTERM") => () => {
    if (received !== null) {
      // A second signal: the user insists. Synchronous cleanups (files) run first.
      runCleanups();
      process.exit(SIGNAL_EXIT_CODES[received]);
    }
    received = sig;
    const code = SIGNAL_EXIT_CODES[sig];
    const handled = observers > 0;
    controller.abort(new Interrupted(sig));
    if (handled) {
      // Nothing else may keep the process alive only for this timer.
      after(GRACE_MS, () => process.exit(code), { ref: false });
      void runCleanups();
    } else {
      void runCleanups().then(() => process.exit(code));
    }
  };
  process.on("SIGINT", on("SIGINT"));
  process.on("SIGTERM", on("SIGTERM"));
}

function runCleanups(): Promise<void> {
  const pending: Promise<unknown>[] = [];
  for (const c of [...cleanups]) {
    cleanups.delete(c);
    try {
      const r = c();
      if (r) pending.push(r.catch(() => {}));
    } catch {
      // one failed cleanup does not stop the others
    }
  }
  return Promise.all(pending).then(() => {});
}

/**
 * Resolves with the signal's name on SIGINT or SIGTERM (installing the handlers).
 *
 * @example
 * ```ts
 * import { untilInterrupted } from "./interrupt.ts";
 * const stop = untilInterrupted(); // resolves with "SIGINT" or "SIGTERM"
 * ```
 */
export function untilInterrupted(): Promise<"SIGINT" | "SIGTERM"> {
  installInterruptHandlers();
  if (received !== null) return Promise.resolve(received);
  observers++;
  return new Promise((resolve) => {
    interruptSignal.addEventListener("abort", () => resolve(received!), { once: true });
  }).finally(() => observers--) as Promise<"SIGINT" | "SIGTERM">;
}

/**
 * Runs `body` with {@linkcode interruptSignal}; when a signal arrives, waits for `body` to
 * settle (it should stop on the signal and clean up) and throws {@linkcode Interrupted}.
 *
 * @example
 * ```ts
 * import { whileInterruptible } from "./interrupt.ts";
 * await whileInterruptible(async (signal) => {
 *   await new Promise((r) => setTimeout(r, 10));
 *   signal.throwIfAborted();
 * });
 * ```
 */
export async function whileInterruptible<T>(body: (signal: AbortSignal) => Promise<T>): Promise<T> {
  let result: T;
  observers++;
  try {
    result = await body(interruptSignal);
  } catch (e) {
    if (received !== null) throw new Interrupted(received);
    throw e;
  } finally {
    observers--;
  }
  if (received !== null) throw new Interrupted(received);
  return result;
}

/** A directory that is removed when {@linkcode remove} is called, on a signal, or at exit. */
export interface TemporaryDirectory {
  /** Absolute path. */
  readonly path: string;
  /** Removes it (idempotent). */
  remove(): void;
}

/**
 * Creates a directory under the system's temporary directory, removed by `remove()`, by
 * a SIGINT/SIGTERM, or when the process exits, whichever comes first; with `keep`, never
 * (`remove()` does nothing: the user asked to look at it afterwards).
 *
 * @example
 * ```ts
 * import { temporaryDirectory } from "./interrupt.ts";
 * const dir = temporaryDirectory("kvport-demo-");
 * console.log(dir.path);
 * dir.remove();
 * ```
 */
export function temporaryDirectory(
  prefix: string,
  options: { keep?: boolean } = {},
): TemporaryDirectory {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), prefix));
  if (options.keep) return { path: dir, remove: () => {} };
  let removed = false;
  const remove = () => {
    if (removed) return;
    removed = true;
    off();
    process.off("exit", remove);
    fs.rmSync(dir, { recursive: true, force: true });
  };
  const off = onInterrupt(remove);
  process.on("exit", remove);
  return { path: dir, remove };
}
