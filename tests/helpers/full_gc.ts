/**
 * A full garbage collection, on demand, in the runtime running the tests, so that a test
 * measuring this process's memory (RSS) counts what is still held, not garbage that the
 * collector has not got to yet. Without it, a loop making a few MB of short-lived objects
 * reads as growth: tests/agent_leak_test.ts's churn read 8-13 MB over 5,000 rounds
 * (22 MB once under load) and under 1 MB either way after a collection.
 *
 * Bun has `Bun.gc(true)`. Deno (V8) exposes `gc` only with `--expose-gc`; the flag is
 * set here at run time and `gc` taken from a fresh context, where V8 then installs it
 * (the test command need not pass `--v8-flags`).
 *
 * @example
 * ```ts
 * import { fullGc } from "./full_gc.ts";
 * fullGc();
 * ```
 * @module
 */
import v8 from "node:v8";
import vm from "node:vm";

type Gc = () => void;

function findGc(): Gc {
  const bun = (globalThis as { Bun?: { gc(force: boolean): void } }).Bun;
  if (bun) return () => bun.gc(true);
  const own = (globalThis as { gc?: Gc }).gc;
  if (typeof own === "function") return own;
  v8.setFlagsFromString("--expose-gc");
  const gc: unknown = vm.runInNewContext("gc");
  if (typeof gc !== "function") {
    throw new Error(`fullGc: no gc function after --expose-gc (got ${typeof gc})`);
  }
  return gc as Gc;
}

let cached: Gc | undefined;

/** Runs a full, synchronous garbage collection; throws when the runtime offers none. */
export function fullGc(): void {
  cached ??= findGc();
  cached();
}
