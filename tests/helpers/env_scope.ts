/**
 * Environment variables set for one test and put back after it: a test file that set
 * them at its top level changed them for every file loaded after it in the same run
 * (`deno test` loads every file into one process), e.g. `KVPORT_ENGINE=builtin` made
 * the NIXL tests of a later file run on the wrong engine.
 *
 * @example
 * ```ts
 * import { withEnvDefaults } from "./env_scope.ts";
 * const body = withEnvDefaults({ KVPORT_ENGINE: "builtin" }, async () => {
 *   // children spawned here inherit KVPORT_ENGINE=builtin unless the caller set it
 * });
 * await body();
 * ```
 * @module
 */
import process from "node:process";

/**
 * Wraps `fn` so that each variable of `defaults` that is unset while it runs has its
 * default value, and is unset again when `fn` settles (a variable the caller set is
 * left as it was).
 */
export function withEnvDefaults<T>(
  defaults: Record<string, string>,
  fn: () => Promise<T>,
): () => Promise<T> {
  return async () => {
    const added = Object.keys(defaults).filter((k) => process.env[k] === undefined);
    for (const k of added) process.env[k] = defaults[k];
    try {
      return await fn();
    } finally {
      for (const k of added) delete process.env[k];
    }
  };
}
