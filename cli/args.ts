/**
 * What the `kvport` commands share: strict option parsing, integer options,
 * configuration loading, JSON-or-text event lines, and one exit-code rule
 * ({@linkcode guard}): 0 success, 1 failure while running, 2 usage or configuration
 * error, 130/143 stopped by SIGINT/SIGTERM.
 *
 * @module
 */
import process from "node:process";
import { parseArgs } from "node:util";
import { ChannelError } from "../src/channel/errors.ts";
import { ConfigError, type KvportConfig, loadConfig } from "../src/config/mod.ts";
import { StorageError } from "../src/storage/errors.ts";
import { Interrupted, untilInterrupted } from "./interrupt.ts";
import { err, out } from "./io.ts";

export { Interrupted, whileInterruptible } from "./interrupt.ts";

/** A mistake on the command line: exit code 2 under {@linkcode guard}. */
export class UsageError extends Error {}

/** A configuration a command cannot run with (exit code 2, like a `ConfigError`). */
export class ConfigurationError extends Error {}

/** What a command told its user about where its configuration came from. */
export interface ConfigOrigin {
  /** The YAML file read, or `null` (defaults and `LMCACHE_*` variables only). */
  file: string | null;
}

/** The text that says a command ran without a configuration file. */
export const NO_CONFIG_FILE = "no --config given and LMCACHE_CONFIG_FILE is unset";

/** The `options` argument of `parseArgs`. */
export type ParseOptions = NonNullable<NonNullable<Parameters<typeof parseArgs>[0]>["options"]>;

/**
 * `args` parsed strictly (no positionals); a parse error becomes a {@linkcode UsageError}.
 *
 * @example
 * ```ts
 * import { parse } from "./args.ts";
 * console.log(parse(["--json"], { json: { type: "boolean" } })); // { json: true }
 * ```
 */
export function parse(
  args: string[],
  options: ParseOptions,
): Record<string, string | boolean | undefined> {
  try {
    return parseArgs({ args, strict: true, allowPositionals: false, options }).values as Record<
      string,
      string | boolean | undefined
    >;
  } catch (e) {
    throw new UsageError((e as Error).message);
  }
}

/**
 * The integer option `--name` from `text` (at least `min`), or `dflt` when absent; a
 * missing required option or a bad value is a {@linkcode UsageError}.
 *
 * @example
 * ```ts
 * import { int } from "./args.ts";
 * console.log(int("chunks", "8", 1), int("batch", undefined, 1, 8)); // 8 8
 * ```
 */
export function int(name: string, text: unknown, min: number, dflt?: number): number {
  if (text === undefined) {
    if (dflt === undefined) throw new UsageError(`--${name} is required`);
    return dflt;
  }
  const s = String(text).trim();
  const n = Number(s);
  if (!/^\d+$/.test(s) || !Number.isSafeInteger(n) || n < min) {
    throw new UsageError(`--${name} expects an integer >= ${min}, got ${JSON.stringify(text)}`);
  }
  return n;
}

/**
 * The configuration from `file` (default: `$LMCACHE_CONFIG_FILE`) with `overrides`;
 * warnings other than forced values go to stderr. With no file at all and no
 * `LMCACHE_*` variable either there is nothing to run with: a {@linkcode UsageError}
 * saying exactly that (unless `optional`: the command has what it needs from options).
 *
 * @example
 * ```ts
 * import { load } from "./args.ts";
 * const config = load("lmcache.yaml");
 * ```
 */
export function load(
  file: string | undefined,
  overrides: Record<string, unknown> = {},
  optional = false,
): KvportConfig {
  const envFile = process.env.LMCACHE_CONFIG_FILE;
  if (file === undefined && !envFile && !optional) {
    const anyVariable = Object.keys(process.env).some((k) => k.startsWith("LMCACHE_"));
    if (!anyVariable) {
      throw new UsageError(
        `${NO_CONFIG_FILE} (and no LMCACHE_* variable is set): pass --config FILE, an ` +
          "LMCache YAML configuration, or set LMCACHE_CONFIG_FILE",
      );
    }
  }
  const { config, warnings } = loadConfig({
    ...(file === undefined ? {} : { file }),
    ...(Object.keys(overrides).length > 0 ? { overrides } : {}),
  });
  for (const w of warnings) {
    if (w.code !== "forced_value") err(`warning: ${w.message}`);
  }
  origins.set(config, { file: file ?? envFile ?? null });
  return config;
}

const origins = new WeakMap<object, ConfigOrigin>();

/**
 * Runs `create` (a `fromConfig` of the library), turning what the library rejects in
 * the configuration (a `ChannelError` of kind `INVALID_ARGUMENT` or
 * `UNSUPPORTED_CHANNEL_TYPE`, a `StorageError` of kind `CONFIG`) into a
 * {@linkcode ConfigurationError} (exit 2) that says which configuration it was.
 *
 * @example
 * ```ts
 * import { configured, load } from "./args.ts";
 * import { PdReceiver } from "../src/pd/receiver.ts";
 * const config = load("decoder.yaml");
 * const rx = await configured(config, () => PdReceiver.fromConfig(config, { pageSize: 4096 }));
 * ```
 */
export async function configured<T>(config: KvportConfig, create: () => Promise<T>): Promise<T> {
  try {
    return await create();
  } catch (e) {
    const isConfig = (e instanceof ChannelError &&
      (e.code === "INVALID_ARGUMENT" || e.code === "UNSUPPORTED_CHANNEL_TYPE")) ||
      (e instanceof StorageError && e.code === "CONFIG");
    if (!isConfig) throw e;
    const file = origins.get(config)?.file ?? null;
    throw new ConfigurationError(
      `${(e as Error).message} (${
        file === null
          ? `${NO_CONFIG_FILE}: defaults and LMCACHE_* variables`
          : `configuration ${file}`
      })`,
    );
  }
}

/**
 * `body`'s exit code; a {@linkcode UsageError}, `ConfigError` or
 * {@linkcode ConfigurationError} is printed as `kvport <name>: ...` and exits 2, an {@linkcode Interrupted} exits 130 (SIGINT) or 143
 * (SIGTERM), anything else is rethrown.
 *
 * @example
 * ```ts
 * import { guard, UsageError } from "./args.ts";
 * const code = await guard("demo", () => Promise.reject(new UsageError("bad"))); // 2
 * ```
 */
export async function guard(name: string, body: () => Promise<number>): Promise<number> {
  try {
    return await body();
  } catch (e) {
    if (e instanceof UsageError) {
      err(`kvport ${name}: ${e.message}\nRun "kvport ${name} --help" for the options.`);
      return 2;
    }
    if (e instanceof ConfigError || e instanceof ConfigurationError) {
      err(`kvport ${name}: ${e.message}`);
      return 2;
    }
    if (e instanceof Interrupted) {
      err(`kvport ${name}: ${e.message}`);
      return e.exitCode;
    }
    throw e;
  }
}

/**
 * Prints `event` as one JSON line (bigints as strings) with `json`, else `text` unless
 * it is empty.
 *
 * @example
 * ```ts
 * import { emit } from "./args.ts";
 * emit(true, { event: "ready", port: 8200 }, "ready on 8200");
 * ```
 */
export function emit(json: boolean, event: Record<string, unknown>, text: string): void {
  if (json) out(JSON.stringify(event, (_, v) => (typeof v === "bigint" ? v.toString() : v)));
  else if (text) out(text);
}

/**
 * Resolves with the signal's name on SIGINT or SIGTERM.
 *
 * @example
 * ```ts
 * import { untilSignal } from "./args.ts";
 * const stop = untilSignal(); // resolves with "SIGINT" or "SIGTERM"
 * ```
 */
export function untilSignal(): Promise<string> {
  return untilInterrupted();
}
