/**
 * The process environment, read the same way under Deno and Bun.
 *
 * @module
 */
import process from "node:process";

/** An environment: variable name -> value. */
export type EnvMap = Readonly<Record<string, string | undefined>>;

/**
 * The current process environment as a plain object (`process.env` from `node:process`,
 * which works under Deno, with `--allow-env`, and under Bun).
 *
 * @example
 * ```ts
 * import { processEnv } from "@kvport/nixl/config";
 * const env = processEnv();
 * console.log(env.LMCACHE_CONFIG_FILE ?? "(no config file)");
 * ```
 */
export function processEnv(): EnvMap {
  return { ...process.env };
}

/** The prefix of LMCache's variables. */
export const ENV_PREFIX = "LMCACHE_";

/**
 * The `LMCACHE_*` variables of `env`, as `[key, value, variableName]` with the key in
 * lower case (`LMCACHE_PD_ROLE` -> `pd_role`), sorted by variable name.
 */
export function lmcacheVariables(env: EnvMap): [string, string, string][] {
  const out: [string, string, string][] = [];
  for (const [name, value] of Object.entries(env)) {
    if (value === undefined || !name.startsWith(ENV_PREFIX) || name.length === ENV_PREFIX.length) {
      continue;
    }
    out.push([name.slice(ENV_PREFIX.length).toLowerCase(), value, name]);
  }
  return out.sort((a, b) => (a[2] < b[2] ? -1 : a[2] > b[2] ? 1 : 0));
}
