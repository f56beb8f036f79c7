/**
 * `loadConfig`: defaults < YAML file < `LMCACHE_*` environment < overrides, then aliases,
 * types and the rules across keys, with every problem reported at once.
 *
 * @module
 */
import { ALIAS_BY_NAME, LMCACHE_ONLY_KEYS, NON_KEY_ENV, RETIRED_KEYS } from "./aliases.ts";
import { coerceValue, type Converted, convertEnvText, isPlainMap, unquote } from "./convert.ts";
import { type EnvMap, lmcacheVariables, processEnv } from "./env.ts";
import { depthProblem, MAX_CONFIG_DEPTH } from "./depth.ts";
import { ConfigError, type ConfigIssue, type ConfigSource, type ConfigWarning } from "./errors.ts";
import { formatValue } from "./format.ts";
import { type ConfigKeyInfo, EXTRA_KEYS, KEY_BY_NAME, TOP_KEYS } from "./keys.ts";
import { configSchema, type KvportConfig } from "./schema.ts";
import { suggestKey } from "./suggest.ts";
import { applyRules } from "./validate.ts";
import { readYamlFile } from "./yaml_source.ts";

/**
 * Options of {@link loadConfig}.
 *
 * @example
 * ```ts
 * import { type LoadConfigOptions, loadConfig } from "@kvport/nixl/config";
 * const options: LoadConfigOptions = { file: "lmcache.yaml", env: {}, tpSize: 2 };
 * loadConfig(options);
 * ```
 */
export interface LoadConfigOptions {
  /** The YAML file; when absent, `LMCACHE_CONFIG_FILE` from `env` names it (if set). */
  file?: string;
  /** The environment to read `LMCACHE_*` variables from; default: the process's. */
  env?: EnvMap;
  /**
   * Values that win over everything else. Keys as in the file (aliases allowed);
   * `extra_config` may be a map, and `extra_config.<name>` keys set one entry. Values
   * are converted like the file's (so `"7300,7301"` works for a port list).
   */
  overrides?: Readonly<Record<string, unknown>>;
  /** The tensor-parallel size: port lists used by enabled features must be this long. */
  tpSize?: number;
}

/**
 * What {@link loadConfig} returns.
 *
 * @example
 * ```ts
 * import { type LoadedConfig, loadConfig } from "@kvport/nixl/config";
 * const loaded: LoadedConfig = loadConfig({ env: {} });
 * console.log(loaded.sources.chunk_size); // "default"
 * ```
 */
export interface LoadedConfig {
  /** The configuration, deeply frozen. */
  readonly config: KvportConfig;
  /** Everything worth a look; never printed by the library. */
  readonly warnings: readonly ConfigWarning[];
  /**
   * Where each value came from, for every key of the table (`extra_config.<name>` for
   * the entries of `extra_config`, including untyped ones given by the user).
   */
  readonly sources: Readonly<Record<string, ConfigSource>>;
  /** The file that was read, or `null`. */
  readonly file: string | null;
}

interface Entry {
  /** Canonical full key (`pd_role`, `extra_config.nixl_backend`). */
  key: string;
  /** The name as written (`nixl_role`, `extra_config.nixl_backend`). */
  written: string;
  value: unknown;
  raw: unknown;
  source: ConfigSource;
}

type LayerKind = "file" | "env" | "override";

class Loader {
  issues: ConfigIssue[] = [];
  warnings: ConfigWarning[] = [];
  failed = new Set<string>();
  aliasUses = new Map<string, string[]>();

  issue(key: string, source: ConfigSource, expected: string, raw: unknown, message: string) {
    this.failed.add(key);
    this.issues.push({ key, source, expected, received: formatValue(raw), message });
  }

  warn(code: ConfigWarning["code"], key: string, source: string, message: string) {
    this.warnings.push({ code, key, source, message });
  }

  /** Converts one written key/value of a layer into a canonical entry, or reports why not. */
  entry(
    written: string,
    raw: unknown,
    source: ConfigSource,
    kind: LayerKind,
    envText: boolean,
  ): Entry | null {
    // First: comparing, validating, printing or freezing a value walks it recursively.
    const deep = envText ? undefined : depthProblem(raw);
    if (deep !== undefined) {
      const key = ALIAS_BY_NAME.get(written)?.to ?? written;
      this.failed.add(key);
      this.issues.push({
        key,
        source,
        expected: `a value nested at most ${MAX_CONFIG_DEPTH} levels deep`,
        received: "a deeper value",
        message: `${written} (${source}): ${deep}.`,
      });
      return null;
    }
    if (written.startsWith("extra_config.")) {
      const leaf = written.slice(13);
      if (leaf === "__proto__") {
        this.warn(
          "unknown_key",
          written,
          source,
          `extra_config entry "__proto__" (${source}) is ignored.`,
        );
        return null;
      }
      if (!EXTRA_KEYS.has(leaf)) {
        const near = suggestKey(leaf, EXTRA_KEYS);
        if (near !== null && near !== leaf) {
          this.warn(
            "unknown_key",
            written,
            source,
            `extra_config entry "${leaf}" (${source}) is not a known key and is kept as ` +
              `given; did you mean "${near}"?`,
          );
        }
        return { key: written, written, value: raw, raw, source };
      }
      return this.convert(KEY_BY_NAME.get(written)!, written, raw, source, envText);
    }
    if (TOP_KEYS.has(written)) {
      return this.convert(KEY_BY_NAME.get(written)!, written, raw, source, envText);
    }
    const alias = ALIAS_BY_NAME.get(written);
    if (alias && !alias.conditional) {
      const list = this.aliasUses.get(written) ?? [];
      list.push(source);
      this.aliasUses.set(written, list);
      return this.convert(KEY_BY_NAME.get(alias.to)!, written, raw, source, envText);
    }
    if (LMCACHE_ONLY_KEYS.has(written)) {
      this.warn(
        "ignored_key",
        written,
        source,
        `"${written}" (${source}) is an LMCache setting kvport does not use; ignored.`,
      );
      return null;
    }
    const retired = RETIRED_KEYS.get(written);
    if (retired !== undefined) {
      this.warn(
        "retired_key",
        written,
        source,
        `"${written}" (${source}) is a retired LMCache key and is ignored; ${retired}.`,
      );
      return null;
    }
    const near = suggestKey(written, [...TOP_KEYS, ...ALIAS_BY_NAME.keys()]);
    const target = near === null ? null : ALIAS_BY_NAME.get(near)?.to ?? near;
    if (kind === "env" && target === null) return null; // unrelated LMCACHE_* variable
    const shown = kind === "env" ? `${source.slice(4)}` : `"${written}"`;
    this.warn(
      "unknown_key",
      written,
      source,
      `unknown key ${shown} (${source}) is ignored` +
        (target === null ? "." : `; did you mean "${target}"?`),
    );
    return null;
  }

  convert(
    info: ConfigKeyInfo,
    written: string,
    raw: unknown,
    source: ConfigSource,
    envText: boolean,
  ): Entry | null {
    let c: Converted;
    if (envText) {
      const text = unquote(raw as string);
      if (text === "") {
        this.warn(
          "empty_env",
          info.name,
          source,
          `${source.slice(4)} is empty; ignored (unset it, or give a value).`,
        );
        return null;
      }
      c = convertEnvText(info.kind, text);
    } else {
      c = coerceValue(info.kind, raw);
    }
    if (!c.ok) {
      const name = written === info.name
        ? info.name
        : `${written} (deprecated name of ${info.name})`;
      this.issue(
        info.name,
        source,
        info.expected,
        raw,
        `${name} (${source}): expected ${info.expected}, got ${formatValue(raw)}` +
          (c.why ? ` (${c.why})` : "") + ".",
      );
      return null;
    }
    return { key: info.name, written, value: c.value, raw, source };
  }

  /** Adds the entries of one layer, refusing an old and a new name that disagree. */
  layer(entries: Entry[], into: Map<string, Entry>) {
    const mine = new Map<string, Entry>();
    for (const e of entries) {
      const prev = mine.get(e.key);
      if (prev === undefined) {
        mine.set(e.key, e);
        continue;
      }
      if (!sameValue(prev.value, e.value)) {
        this.issue(
          e.key,
          e.source,
          `one value for ${e.key}`,
          `${formatValue(prev.raw)} and ${formatValue(e.raw)}`,
          `${prev.written} (${prev.source}) = ${formatValue(prev.raw)} and ${e.written} ` +
            `(${e.source}) = ${formatValue(e.raw)} set ${e.key} to different values; ` +
            `keep only "${e.key}" (the other name is deprecated).`,
        );
      }
      if (e.written === e.key) mine.set(e.key, e); // the current name wins when equal
    }
    for (const [k, e] of mine) into.set(k, e);
  }
}

function sameValue(a: unknown, b: unknown): boolean {
  return JSON.stringify(a) === JSON.stringify(b);
}

function objectEntries(
  loader: Loader,
  obj: Record<string, unknown>,
  source: ConfigSource,
  kind: LayerKind,
): Entry[] {
  const out: Entry[] = [];
  for (const [written, value] of Object.entries(obj)) {
    if (written === "extra_config") {
      if (value === null || value === undefined) continue;
      if (!isPlainMap(value)) {
        loader.issue(
          "extra_config",
          source,
          "a map",
          value,
          `extra_config (${source}): expected a map, got ${formatValue(value)}.`,
        );
        continue;
      }
      for (const [leaf, v] of Object.entries(value)) {
        const e = loader.entry(`extra_config.${leaf}`, v, source, kind, false);
        if (e) out.push(e);
      }
      continue;
    }
    if (written.startsWith("extra_config.") && kind !== "override") {
      loader.warn(
        "unknown_key",
        written,
        source,
        `unknown key "${written}" (${source}) is ignored; write it as "${written.slice(13)}" ` +
          `inside the extra_config map.`,
      );
      continue;
    }
    const e = loader.entry(written, value, source, kind, false);
    if (e) out.push(e);
  }
  return out;
}

function envEntries(loader: Loader, env: EnvMap): Entry[] {
  const out: Entry[] = [];
  for (const [key, value, name] of lmcacheVariables(env)) {
    if (NON_KEY_ENV.has(name)) continue;
    const source: ConfigSource = `env:${name}`;
    if (key === "extra_config") {
      const text = unquote(value);
      if (text === "") {
        loader.warn("empty_env", "extra_config", source, `${name} is empty; ignored.`);
        continue;
      }
      const c = convertEnvText("map", text);
      if (!c.ok) {
        loader.issue(
          "extra_config",
          source,
          "a JSON object",
          value,
          `extra_config (${source}): expected a JSON object, got ${formatValue(value)}` +
            (c.why ? ` (${c.why})` : "") + ".",
        );
        continue;
      }
      for (const [leaf, v] of Object.entries(c.value as Record<string, unknown>)) {
        const e = loader.entry(`extra_config.${leaf}`, v, source, "env", false);
        if (e) out.push(e);
      }
      continue;
    }
    if (key.includes(".")) continue;
    const e = loader.entry(key, value, source, "env", true);
    if (e) out.push(e);
  }
  return out;
}

/** Freezes `value` and everything it holds (without recursion: see depth.ts). */
function deepFreeze<T>(value: T): T {
  const stack: unknown[] = [value];
  while (stack.length > 0) {
    const v = stack.pop();
    if (v !== null && typeof v === "object" && !Object.isFrozen(v)) {
      Object.freeze(v);
      for (const child of Object.values(v)) stack.push(child);
    }
  }
  return value;
}

/**
 * Loads, merges and validates kvport's configuration, LMCache-compatible.
 *
 * Sources, lowest to highest: the schema's defaults; the YAML file (`file`, else the one
 * `LMCACHE_CONFIG_FILE` names); `LMCACHE_<KEY>` variables; `overrides`. Deprecated names
 * map to current ones with one warning per name. `extra_config` merges entry by entry
 * across sources. Then types, ranges and the rules across keys are checked, and every
 * problem found is thrown together in one {@link ConfigError}.
 *
 * @example
 * ```ts
 * import { loadConfig } from "@kvport/nixl/config";
 * const { config, warnings, sources } = loadConfig({
 *   env: { LMCACHE_ENABLE_PD: "true", LMCACHE_PD_ROLE: "sender" },
 *   overrides: {
 *     pd_buffer_size: 1 << 30,
 *     pd_buffer_device: "cpu",
 *     pd_proxy_host: "localhost",
 *     pd_proxy_port: 7500,
 *   },
 * });
 * console.log(config.pd_role, sources.pd_role); // sender env:LMCACHE_PD_ROLE
 * console.log(config.save_unfull_chunk); // true (forced by PD, see warnings)
 * ```
 */
export function loadConfig(options?: LoadConfigOptions): LoadedConfig {
  options ??= {};
  const loader = new Loader();
  let env: EnvMap;
  try {
    env = options.env ?? processEnv();
  } catch (e) {
    // Deno without --allow-env: say so instead of failing with a permission error.
    const why = e instanceof Error ? e.message : String(e);
    throw new ConfigError([{
      key: "env",
      source: "option:env",
      expected: "a readable process environment (Deno: --allow-env), or the env option",
      received: why,
      message: `cannot read the process environment (${why}); run Deno with --allow-env, ` +
        `or pass loadConfig({ env: {...} }).`,
    }]);
  }
  const merged = new Map<string, Entry>();

  // File
  let file: string | null = null;
  let fileFrom: ConfigSource = "option:file";
  if (options.file !== undefined) file = options.file;
  else if (env.LMCACHE_CONFIG_FILE !== undefined && unquote(env.LMCACHE_CONFIG_FILE) !== "") {
    file = unquote(env.LMCACHE_CONFIG_FILE);
    fileFrom = "env:LMCACHE_CONFIG_FILE";
  }
  if (file !== null) {
    const r = readYamlFile(file, fileFrom);
    if (r.ok) loader.layer(objectEntries(loader, r.map, `file:${file}`, "file"), merged);
    else {
      loader.failed.add(r.issue.key);
      loader.issues.push(r.issue);
    }
  }

  // Environment
  loader.layer(envEntries(loader, env), merged);

  // Overrides
  if (options.overrides !== undefined) {
    if (!isPlainMap(options.overrides)) {
      loader.issue(
        "overrides",
        "override",
        "a plain object",
        options.overrides,
        `overrides: expected a plain object of keys, got ${formatValue(options.overrides)}.`,
      );
    } else loader.layer(objectEntries(loader, options.overrides, "override", "override"), merged);
  }

  // tpSize
  const tpSize = options.tpSize;
  if (tpSize !== undefined && !(Number.isSafeInteger(tpSize) && tpSize >= 1)) {
    loader.issue(
      "tp_size",
      "option:tpSize",
      "an integer >= 1",
      tpSize,
      `tpSize (option): expected an integer >= 1, got ${formatValue(tpSize)}.`,
    );
  }

  // One warning per deprecated name used.
  for (const [written, sources] of loader.aliasUses) {
    const to = ALIAS_BY_NAME.get(written)!.to;
    const scalarNote = written === "lmcache_worker_port" ? " (a single port becomes a list)" : "";
    loader.warn(
      "deprecated_alias",
      written,
      sources.join(", "),
      `"${written}" is deprecated; use "${to}"${scalarNote} (found in ${sources.join(", ")}).`,
    );
  }

  // Types and ranges.
  const input: Record<string, unknown> = {};
  const extra: Record<string, unknown> = {};
  for (const [key, e] of merged) {
    if (key.startsWith("extra_config.")) extra[key.slice(13)] = e.value;
    else input[key] = e.value;
  }
  input.extra_config = extra;
  let parsed = configSchema.safeParse(input);
  if (!parsed.success) {
    const seen = new Set<string>();
    for (const zi of parsed.error.issues) {
      const path = zi.path.map(String);
      const key = path[0] === "extra_config" && path.length > 1
        ? `extra_config.${path[1]}`
        : path[0];
      if (seen.has(key)) continue;
      seen.add(key);
      const e = merged.get(key);
      const info = KEY_BY_NAME.get(key);
      const source: ConfigSource = e?.source ?? "default";
      const expected = info?.expected ?? "a valid value";
      const name = e && e.written !== key ? `${e.written} (deprecated name of ${key})` : key;
      const item = path.length > (key.startsWith("extra_config.") ? 2 : 1)
        ? ` (${typeof zi.path[zi.path.length - 1] === "number" ? "item" : "entry"} ` +
          `${path.slice(key.startsWith("extra_config.") ? 2 : 1).join(".")} is not valid)`
        : "";
      loader.issue(
        key,
        source,
        expected,
        e?.raw,
        `${name} (${source}): expected ${expected}, got ${formatValue(e?.raw)}${item}.`,
      );
      // Retry without the bad value, so the rules across keys still run.
      if (key.startsWith("extra_config.")) delete extra[key.slice(13)];
      else delete input[key];
      merged.delete(key);
    }
    parsed = configSchema.safeParse(input);
  }

  const sources: Record<string, ConfigSource> = {};
  for (const info of KEY_BY_NAME.values()) {
    sources[info.name] = merged.get(info.name)?.source ?? "default";
  }
  const order: ConfigSource[] = [];
  for (const [key, e] of merged) {
    if (!key.startsWith("extra_config.")) continue;
    sources[key] = e.source;
    order.push(e.source);
  }
  const rank = (s: ConfigSource) =>
    s === "override" ? 3 : s.startsWith("env:") ? 2 : s.startsWith("file:") ? 1 : 0;
  sources.extra_config = order.sort((a, b) => rank(b) - rank(a))[0] ?? "default";

  if (parsed.success) {
    const cfg = parsed.data as { -readonly [K in keyof KvportConfig]: KvportConfig[K] };
    const rules = applyRules(cfg, {
      source: (k) => sources[k] ?? "default",
      setSource: (k, s) => {
        sources[k] = s;
      },
      tpSize: loader.failed.has("tp_size") ? undefined : tpSize,
    });
    loader.warnings.push(...rules.warnings);
    for (const i of rules.issues) if (!loader.failed.has(i.key)) loader.issues.push(i);
    if (loader.issues.length === 0) {
      return deepFreeze({
        config: cfg as KvportConfig,
        warnings: loader.warnings,
        sources,
        file,
      });
    }
  }
  if (loader.issues.length === 0) {
    // Cannot happen: a failed parse always records an issue. Keep the error honest.
    loader.issues.push({
      key: "(config)",
      source: "default",
      expected: "a valid configuration",
      received: "unknown",
      message: "internal: the configuration did not validate but no issue was recorded.",
    });
  }
  throw new ConfigError(loader.issues, deepFreeze(loader.warnings));
}
