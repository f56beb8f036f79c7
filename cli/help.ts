/**
 * Help text built from the configuration key table, for any command that reads the
 * configuration.
 *
 * @module
 */
import { type ConfigKeyInfo, configKeys, NIXL_BUFFER_SIZE_RULE } from "../src/config/mod.ts";
import { wrap } from "./io.ts";

/**
 * The configuration keys as terminal help: one entry per key with its type, default,
 * environment variable, deprecated names and description. `filter` picks the keys (for
 * a command that only reads some).
 *
 * @example
 * ```ts
 * import { renderKeyHelp } from "./help.ts";
 * console.log(renderKeyHelp((k) => k.group === "pd"));
 * ```
 */
export function renderKeyHelp(
  filter: (key: ConfigKeyInfo) => boolean = () => true,
  width = 100,
): string {
  const parts: string[] = [];
  for (const k of configKeys.filter(filter)) {
    const unit = k.unit ? ` ${k.unit}` : "";
    const env = k.inExtraConfig ? "LMCACHE_EXTRA_CONFIG (JSON)" : k.env;
    parts.push(`  ${k.name}: ${k.type}${unit}, default ${k.defaultText}; env ${env}`);
    parts.push(wrap(k.description, width, "      "));
    if (k.aliases.length) parts.push(`      Deprecated names: ${k.aliases.join(", ")}.`);
  }
  return parts.join("\n");
}

/**
 * How the configuration is put together, as terminal help.
 *
 * @example
 * ```ts
 * import { renderSourcesHelp } from "./help.ts";
 * console.log(renderSourcesHelp());
 * ```
 */
export function renderSourcesHelp(width = 100): string {
  return [
    wrap(
      "Sources, lowest to highest: defaults, the YAML file (--file, else $LMCACHE_CONFIG_FILE), " +
        "LMCACHE_<KEY> variables, --set overrides. Booleans in the environment are true/1 or " +
        "false/0 (any case; anything else is an error); lists are comma-separated; " +
        "LMCACHE_EXTRA_CONFIG is a JSON object merged entry by entry; one pair of surrounding " +
        "quotes is stripped.",
      width,
      "",
    ),
    "",
    wrap(NIXL_BUFFER_SIZE_RULE.replaceAll("`", ""), width, ""),
  ].join("\n");
}
