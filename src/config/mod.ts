/**
 * kvport's configuration: LMCache's YAML files and `LMCACHE_*` variables, read as
 * LMCache reads them, with every mistake reported at once.
 *
 * - {@link loadConfig} merges defaults < YAML file < environment < overrides, maps
 *   deprecated names, checks types and the rules across keys, and returns a deeply
 *   frozen {@link KvportConfig}, the warnings, and the source of every value.
 * - {@link ConfigError} carries every {@link ConfigIssue} of a failed load.
 * - {@link configKeys} is the key table (name, type, default, description, aliases,
 *   environment variable) that the README and `kvport config --help` are built from.
 *
 * @example
 * ```ts
 * import { ConfigError, loadConfig } from "@kvport/nixl/config";
 * try {
 *   const { config, warnings } = loadConfig({ file: "lmcache.yaml" });
 *   for (const w of warnings) console.warn(w.message);
 *   console.log(config.pd_role, config.pd_buffer_size);
 * } catch (e) {
 *   if (e instanceof ConfigError) for (const i of e.issues) console.error(i.message);
 *   else throw e;
 * }
 * ```
 *
 * @module
 */
export { loadConfig } from "./load.ts";
export type { LoadConfigOptions, LoadedConfig } from "./load.ts";
export { ConfigError } from "./errors.ts";
export type { ConfigIssue, ConfigSource, ConfigWarning, ConfigWarningCode } from "./errors.ts";
export {
  FILE_STORAGE_BACKENDS,
  NIXL_STORAGE_BACKENDS,
  PD_BACKEND_MODES,
  PD_ROLES,
  STORAGE_BACKEND_DEVICES,
  TRANSFER_CHANNELS,
} from "./schema.ts";
export type {
  ExtraConfig,
  KeyGroup,
  KeyKind,
  KvportConfig,
  NixlStorageBackendName,
  PdBackendMode,
  PdRole,
  TransferChannelType,
} from "./schema.ts";
export { configKeys } from "./keys.ts";
export type { ConfigKeyInfo } from "./keys.ts";
export { CONFIG_ALIASES, NIXL_BUFFER_SIZE_RULE } from "./aliases.ts";
export type { ConfigAlias } from "./aliases.ts";
export { coerceValue, convertEnvText, unquote } from "./convert.ts";
export type { Converted } from "./convert.ts";
export { processEnv } from "./env.ts";
export type { EnvMap } from "./env.ts";
export { parseConfigYaml, readYamlFile } from "./yaml_source.ts";
export type { YamlRead } from "./yaml_source.ts";
export { editDistance, suggestKey } from "./suggest.ts";
export { formatValue, jsonReplacer } from "./format.ts";
