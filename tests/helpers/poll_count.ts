/**
 * Counts the polls a piece of code makes on the event loop: short timers (under 10 ms)
 * and `setImmediate` calls. A wait that sleeps on the agent's wake-ups makes none; one
 * that polls makes one per turn. Used by the event tests of both engines.
 *
 * @module
 */

/**
 * Runs `fn` and counts the short timers (< 10 ms) and setImmediate calls made meanwhile.
 *
 * @example
 * ```ts
 * import { countPolls } from "./poll_count.ts";
 * const { polls } = await countPolls(() => new Promise((r) => setTimeout(r, 1)));
 * console.log(polls); // 1
 * ```
 */
export async function countPolls<T>(fn: () => Promise<T>): Promise<{ value: T; polls: number }> {
  const g = globalThis as unknown as {
    setTimeout: (cb: () => void, ms?: number) => unknown;
    setImmediate?: (cb: () => void) => unknown;
  };
  const st = g.setTimeout;
  const si = g.setImmediate;
  let polls = 0;
  g.setTimeout = (cb: () => void, ms?: number) => {
    if ((ms ?? 0) < 10) polls++;
    return st(cb, ms);
  };
  if (si) {
    g.setImmediate = (cb: () => void) => {
      polls++;
      return si(cb);
    };
  }
  try {
    return { value: await fn(), polls };
  } finally {
    g.setTimeout = st;
    if (si) g.setImmediate = si;
  }
}
