/**
 * The machine-readable key table, derived from the schema: what the README reference,
 * `kvport config --help` and the loader's messages are built from.
 *
 * @module
 */
import type { z } from "zod";
import { CONFIG_ALIASES } from "./aliases.ts";
import { formatValue } from "./format.ts";
import {
  extraShapeMap,
  type KeyGroup,
  type KeyKind,
  type KeyMeta,
  keyRegistry,
  topShape,
} from "./schema.ts";

/**
 * One configuration key as documented: what `kvport config --help` and the README list.
 *
 * @example
 * ```ts
 * import { configKeys } from "@kvport/nixl/config";
 * const role = configKeys.find((k) => k.name === "pd_role")!;
 * console.log(role.type, role.defaultText, role.env, role.aliases);
 * // "sender" | "receiver" | "both" | null   null   LMCACHE_PD_ROLE   ["nixl_role"]
 * ```
 */
export interface ConfigKeyInfo {
  /** The key; `extra_config.<name>` for the keys inside `extra_config`. */
  readonly name: string;
  /** The key inside its map: `nixl_backend` for `extra_config.nixl_backend`. */
  readonly leaf: string;
  /** `true` for the keys inside `extra_config`. */
  readonly inExtraConfig: boolean;
  /** How values are written and converted. */
  readonly kind: KeyKind;
  /** The part of the configuration it belongs to. */
  readonly group: KeyGroup;
  /** The type as text (`int list | null`, `"sync" | "async"`). */
  readonly type: string;
  /** What a valid value is, in words (used in error messages). */
  readonly expected: string;
  /** Whether `null` is allowed. */
  readonly nullable: boolean;
  /** The fixed set of allowed values, or `null`. */
  readonly values: readonly string[] | null;
  /** The default value (`Infinity` for an unlimited timeout). */
  readonly default: unknown;
  /** The default as text (`inf`, `null`, `"async"`, `256`). */
  readonly defaultText: string;
  /** Unit of a number (`bytes`, `GB`, `ms`, `s`, `tokens`), or `null`. */
  readonly unit: string | null;
  /** What the key does. */
  readonly description: string;
  /** Deprecated names that map to it. */
  readonly aliases: readonly string[];
  /** The environment variable that sets it. */
  readonly env: string;
}

function typeText(meta: KeyMeta, nullable: boolean): string {
  let t: string;
  switch (meta.kind) {
    case "int_list":
      t = "int list";
      break;
    case "str_list":
      t = "str list";
      break;
    case "str_map":
      t = "map of str";
      break;
    case "str":
      t = meta.values
        ? meta.values.map((v) => JSON.stringify(v)).join(" | ")
        : meta.pattern
        ? `str (${meta.pattern.replaceAll('"', "")})`
        : "str";
      break;
    default:
      t = meta.kind;
  }
  return nullable ? `${t} | null` : t;
}

function rangeText(meta: KeyMeta): string {
  const parts: string[] = [];
  if (meta.min !== undefined && meta.max !== undefined) {
    return ` from ${meta.min} to ${meta.max}`;
  }
  if (meta.min !== undefined) parts.push(`>= ${meta.min}`);
  if (meta.gt !== undefined) parts.push(`> ${meta.gt}`);
  if (meta.max !== undefined) parts.push(`<= ${meta.max}`);
  return parts.length ? ` ${parts.join(" and ")}` : "";
}

function expectedText(meta: KeyMeta, nullable: boolean, infinite: boolean): string {
  let t: string;
  switch (meta.kind) {
    case "bool":
      t = "true or false";
      break;
    case "int":
      t = `an integer${rangeText(meta)}`;
      break;
    case "float":
      t = `a number${rangeText(meta)}${infinite ? " (or inf)" : ""}`;
      break;
    case "str":
      t = meta.values
        ? `one of ${meta.values.map((v) => JSON.stringify(v)).join(", ")}`
        : meta.pattern ?? "a non-empty string";
      break;
    case "int_list":
      t = `a list of integers${rangeText(meta)} (YAML list, a single integer, or ` +
        `comma-separated text)`;
      break;
    case "str_list":
      t = "a list of strings (YAML list or comma-separated text)";
      break;
    case "str_map":
      t = "a map of string values";
      break;
    case "map":
      t = "a map (JSON object in the environment)";
      break;
  }
  return nullable ? `${t}, or null` : t;
}

function build(name: string, schema: z.ZodType, inExtra: boolean): ConfigKeyInfo {
  const meta = keyRegistry.get(schema);
  if (!meta) throw new Error(`internal: key ${name} has no metadata`);
  const nullable = schema.safeParse(null).success;
  const infinite = meta.kind === "float" && schema.safeParse(Infinity).success;
  const def = schema.parse(undefined);
  const full = inExtra ? `extra_config.${name}` : name;
  return Object.freeze({
    name: full,
    leaf: name,
    inExtraConfig: inExtra,
    kind: meta.kind,
    group: meta.group,
    type: typeText(meta, nullable),
    expected: expectedText(meta, nullable, infinite),
    nullable,
    values: meta.values ? Object.freeze([...meta.values]) : null,
    default: name === "extra_config" ? {} : def,
    defaultText: name === "extra_config" ? "{}" : formatValue(def),
    unit: meta.unit ?? null,
    description: meta.description,
    aliases: Object.freeze(CONFIG_ALIASES.filter((a) => a.to === full).map((a) => a.from)),
    env: inExtra ? "LMCACHE_EXTRA_CONFIG" : `LMCACHE_${name.toUpperCase()}`,
  });
}

/**
 * Every configuration key: the top-level keys in schema order, then the typed keys of
 * `extra_config` as `extra_config.<name>`.
 *
 * @example
 * ```ts
 * import { configKeys } from "@kvport/nixl/config";
 * for (const k of configKeys) console.log(`${k.name}\t${k.type}\t${k.defaultText}`);
 * ```
 */
export const configKeys: readonly ConfigKeyInfo[] = Object.freeze([
  ...Object.entries(topShape).map(([n, s]) => build(n, s, false)),
  ...Object.entries(extraShapeMap).map(([n, s]) => build(n, s, true)),
]);

/** Lookup by full name (`pd_role`, `extra_config.nixl_backend`). */
export const KEY_BY_NAME: ReadonlyMap<string, ConfigKeyInfo> = new Map(
  configKeys.map((k) => [k.name, k]),
);
/** The top-level key names. */
export const TOP_KEYS: ReadonlySet<string> = new Set(Object.keys(topShape));
/** The typed `extra_config` key names (without the prefix). */
export const EXTRA_KEYS: ReadonlySet<string> = new Set(Object.keys(extraShapeMap));
