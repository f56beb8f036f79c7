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
 * Channels serialize every use of their agent with one.
 *
 * @example
 * ```ts
 * import { SerialQueue } from "./_util.ts";
 *
 * const q = new SerialQueue();
 * const order: number[] = [];
 * await Promise.all([
 *   q.run(async () => { await new Promise((r) => setTimeout(r, 10)); order.push(1); }),
 *   q.run(() => { order.push(2); }),
 * ]);
 * console.log(order); // [1, 2]
 * ```
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

/** Formats a host and port as `host:port` (IPv6 hosts in brackets). */
export function joinHostPort(host: string, port: number): string {
  return host.includes(":") ? `[${host}]:${port}` : `${host}:${port}`;
}
