/**
 * The error and warning shapes of {@link loadConfig}.
 *
 * @module
 */

/**
 * Where a configuration value came from.
 *
 * - `"default"`: the schema's default.
 * - `"file:<path>"`: the YAML file at `<path>`.
 * - `"env:LMCACHE_X"`: the environment variable `LMCACHE_X`.
 * - `"override"`: the `overrides` option of {@link loadConfig}.
 * - `"derived:<key>"`: set by a rule because of `<key>` (for example
 *   `save_unfull_chunk` forced to `true` by `enable_pd`).
 * - `"option:<name>"`: an option of {@link loadConfig} itself (`file`, `tpSize`).
 *
 * @example
 * ```ts
 * import type { ConfigSource } from "@kvport/nixl/config";
 * const s: ConfigSource = "env:LMCACHE_PD_ROLE";
 * ```
 */
export type ConfigSource =
  | "default"
  | "override"
  | `file:${string}`
  | `env:${string}`
  | `derived:${string}`
  | `option:${string}`;

/**
 * One problem found while loading a configuration.
 *
 * @example
 * ```ts
 * import { ConfigError, loadConfig } from "@kvport/nixl/config";
 * try {
 *   loadConfig({ env: { LMCACHE_CHUNK_SIZE: "big" } });
 * } catch (e) {
 *   if (e instanceof ConfigError) {
 *     const [issue] = e.issues;
 *     console.log(issue.key, issue.source, issue.expected, issue.received);
 *     // chunk_size env:LMCACHE_CHUNK_SIZE an integer >= 1 "big"
 *   }
 * }
 * ```
 */
export interface ConfigIssue {
  /** The key, in LMCache's spelling (`pd_role`, `extra_config.nixl_backend`). */
  readonly key: string;
  /** Where the offending value came from. */
  readonly source: ConfigSource;
  /** What would have been accepted, in words. */
  readonly expected: string;
  /** The value received, as text (strings quoted, `null` when absent). */
  readonly received: string;
  /** The whole sentence: key, source, expected, received and, where useful, the fix. */
  readonly message: string;
}

/**
 * The kinds of warning {@link loadConfig} returns.
 *
 * @example
 * ```ts
 * import type { ConfigWarningCode } from "@kvport/nixl/config";
 * const code: ConfigWarningCode = "deprecated_alias";
 * ```
 */
export type ConfigWarningCode =
  | "deprecated_alias"
  | "unknown_key"
  | "ignored_key"
  | "retired_key"
  | "forced_value"
  | "unused_value"
  | "deprecated_form"
  | "empty_env";

/**
 * A warning: the configuration loads, but something in it deserves a look. The library
 * never prints warnings; the caller decides (`kvport config` prints them to stderr).
 *
 * @example
 * ```ts
 * import { loadConfig } from "@kvport/nixl/config";
 * const { warnings } = loadConfig({ env: {}, overrides: { chunk_sise: 128 } });
 * for (const w of warnings) console.warn(`${w.code}: ${w.message}`);
 * // unknown_key: unknown key "chunk_sise" (override) is ignored; did you mean "chunk_size"?
 * ```
 */
export interface ConfigWarning {
  /** What kind of warning this is. */
  readonly code: ConfigWarningCode;
  /** The key the warning is about, as written by the user. */
  readonly key: string;
  /** Where that key came from; several sources are joined with ", ". */
  readonly source: string;
  /** The whole sentence. */
  readonly message: string;
}

/**
 * Thrown by {@link loadConfig} when the configuration cannot be used. It carries every
 * problem of the load at once in {@link ConfigError.issues}, and the warnings collected
 * before the failure in {@link ConfigError.warnings}.
 *
 * @example
 * ```ts
 * import { ConfigError, loadConfig } from "@kvport/nixl/config";
 * try {
 *   loadConfig({ env: {}, overrides: { enable_pd: true } });
 * } catch (e) {
 *   if (!(e instanceof ConfigError)) throw e;
 *   for (const issue of e.issues) console.error(issue.message);
 * }
 * ```
 */
export class ConfigError extends Error {
  /** Every problem found, in the order found. Never empty. */
  readonly issues: readonly ConfigIssue[];
  /** Warnings collected before the load failed. */
  readonly warnings: readonly ConfigWarning[];

  /** Builds the error; its message lists every issue, one per line. */
  constructor(issues: readonly ConfigIssue[], warnings: readonly ConfigWarning[] = []) {
    const n = issues.length;
    super(
      `invalid kvport configuration (${n} problem${n === 1 ? "" : "s"}):\n` +
        issues.map((i) => `  - ${i.message}`).join("\n"),
    );
    this.name = "ConfigError";
    this.issues = Object.freeze(issues.map((i) => Object.freeze({ ...i })));
    this.warnings = Object.freeze([...warnings]);
  }
}
