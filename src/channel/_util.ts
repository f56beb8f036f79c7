/**
 * Internal helpers of the channel and PD layers: a serial queue, deadlines, small
 * utilities. Not part of the public surface.
 *
 * @module
 */

/** Message of an error value, whatever was thrown. */
export function errorMessage(e: unknown): string {
  return e instanceof Error ? e.message : String(e);
}

/**
 * A first-in first-out async mutex: `run(fn)` starts `fn` only after every earlier
 * `run` has settled, so the resource it guards is never touched by two callers at once.
 */
export class SerialQueue {
  #tail: Promise<unknown> = Promise.resolve();
  #pending = 0;

  /** Number of tasks queued or running. */
  get pending(): number {
    return this.#pending;
  }

  /** Runs `fn` after every earlier task has settled; resolves to its result. */
  run<T>(fn: () => T | Promise<T>): Promise<T> {
    this.#pending++;
    const result = this.#tail.then(fn);
    this.#tail = result.then(
      () => {
        this.#pending--;
      },
      () => {
        this.#pending--;
      },
    );
    return result;
  }

  /** Resolves once every task queued so far has settled. */
  idle(): Promise<void> {
    return this.#tail.then(() => undefined);
  }
}

/** A promise with its resolve/reject exposed. */
export interface Deferred<T> {
  promise: Promise<T>;
  resolve: (value: T) => void;
  reject: (reason: unknown) => void;
}

/** Creates a {@linkcode Deferred}. */
export function deferred<T>(): Deferred<T> {
  let resolve!: (value: T) => void;
  let reject!: (reason: unknown) => void;
  const promise = new Promise<T>((res, rej) => {
    resolve = res;
    reject = rej;
  });
  return { promise, resolve, reject };
}

/** Resolves after `ms` milliseconds. */
export function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

/** Splits `host:port` (IPv6 in brackets allowed, a `tcp://` prefix ignored). */
export function splitHostPort(url: string): { host: string; port: number } {
  const s = url.startsWith("tcp://") ? url.slice(6) : url;
  const m = /^\[([^\]]+)\]:(\d+)$/.exec(s) ?? /^([^:]*):(\d+)$/.exec(s);
  if (!m) {
    throw new TypeError(`expected "host:port", got ${JSON.stringify(url)}`);
  }
  const port = Number(m[2]);
  if (port < 0 || port > 65535) {
    throw new TypeError(`port of ${JSON.stringify(url)} is out of range 0..65535`);
  }
  return { host: m[1] === "" ? "0.0.0.0" : m[1], port };
}

/** Formats a host and port as `host:port` (IPv6 hosts in brackets). */
export function joinHostPort(host: string, port: number): string {
  return host.includes(":") ? `[${host}]:${port}` : `${host}:${port}`;
}
