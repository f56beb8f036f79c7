/**
 * The process's limit of open files (RLIMIT_NOFILE), read from /proc/self/limits: what
 * the slot file cache sizes itself by, and what an error tells the user to raise.
 *
 * @module
 */
import { readFileSync } from "node:fs";

/** Soft and hard RLIMIT_NOFILE; `Infinity` for "unlimited". */
export interface OpenFileLimits {
  /** The limit in force (`ulimit -n`). */
  soft: number;
  /** The most the soft limit may be raised to without privileges (`ulimit -Hn`). */
  hard: number;
}

let lastKnown: OpenFileLimits | undefined;

/**
 * The limits, or undefined where they cannot be read (not Linux, no permission). Read
 * again on every call (a process may raise its own limit), except when that fails: a
 * process out of descriptors cannot open /proc/self/limits, and is told the limits
 * read when this module was loaded.
 *
 * @example
 * ```ts
 * import { openFileLimits } from "./fd_limit.ts";
 * const l = openFileLimits();
 * if (l) console.log(`ulimit -n ${l.soft} (hard ${l.hard})`);
 * ```
 */
export function openFileLimits(): OpenFileLimits | undefined {
  try {
    const line = readFileSync("/proc/self/limits", "utf8").split("\n")
      .find((l) => l.startsWith("Max open files"));
    const [soft, hard] = (line?.slice("Max open files".length).trim().split(/\s+/) ?? [])
      .map((t) => (t === "unlimited" ? Infinity : Number(t)));
    if (soft > 0 && hard > 0) lastKnown = { soft, hard };
  } catch { /* keep the last known limits */ }
  return lastKnown;
}

openFileLimits();
