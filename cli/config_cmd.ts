/**
 * `kvport config`: prints the resolved configuration, the source of each value and the
 * warnings; exits 2 with every error of an invalid configuration.
 *
 * @module
 */
import { parseArgs } from "node:util";
import {
  ConfigError,
  type ConfigWarning,
  formatValue,
  jsonReplacer,
  loadConfig,
  type LoadConfigOptions,
} from "../src/config/mod.ts";
import type { Command } from "./commands.ts";
import { renderKeyHelp, renderSourcesHelp } from "./help.ts";
import { err, out } from "./io.ts";

/**
 * The help of `kvport config`, with every configuration key from the schema.
 *
 * @example
 * ```ts
 * import { configHelp } from "./config_cmd.ts";
 * console.log(configHelp());
 * ```
 */
export function configHelp(): string {
  return [
    "Usage: kvport config [[--file] F] [--json] [--tp-size N] [--set KEY=VALUE]...",
    "",
    "Prints the resolved configuration with the source of each value; warnings go to",
    "stderr. Exits 2, listing every problem, when the configuration is invalid.",
    "",
    "Options:",
    "  -f, --file F        YAML configuration file (default: $LMCACHE_CONFIG_FILE); the",
    "                      file may also be given alone: kvport config lmcache.yaml",
    "      --json          print {ok, file, config, sources, warnings} (or {ok, issues,",
    '                      warnings}) as JSON on stdout; infinity is written "inf"',
    "      --tp-size N     check that port lists have one port per TP rank",
    "  -s, --set KEY=VALUE override one key (repeatable; extra_config.NAME=VALUE for",
    "                      extra_config entries; VALUE is read like an env variable)",
    "  -h, --help          this help",
    "",
    renderSourcesHelp(),
    "",
    "Configuration keys:",
    renderKeyHelp(),
  ].join("\n");
}

function parseSets(sets: readonly string[]): Record<string, unknown> | string {
  const overrides: Record<string, unknown> = {};
  for (const s of sets) {
    const eq = s.indexOf("=");
    if (eq <= 0) return `--set expects KEY=VALUE, got ${JSON.stringify(s)}`;
    const key = s.slice(0, eq).trim();
    const value = s.slice(eq + 1);
    if (key === "extra_config") {
      try {
        overrides.extra_config = JSON.parse(value);
      } catch {
        return `--set extra_config=... expects a JSON object, got ${JSON.stringify(value)}`;
      }
    } else overrides[key] = value;
  }
  return overrides;
}

function warningLines(warnings: readonly ConfigWarning[]): string {
  return warnings.map((w) => `warning: ${w.message}`).join("\n");
}

const USAGE_LINE = "Usage: kvport config [[--file] F] [--json] [--tp-size N] [--set KEY=VALUE]...";

function runConfig(args: string[]): number {
  let values;
  let positionals: string[];
  try {
    ({ values, positionals } = parseArgs({
      args,
      strict: true,
      allowPositionals: true,
      options: {
        file: { type: "string", short: "f" },
        json: { type: "boolean", default: false },
        "tp-size": { type: "string" },
        set: { type: "string", short: "s", multiple: true, default: [] },
        help: { type: "boolean", short: "h", default: false },
      },
    }));
  } catch (e) {
    err(`kvport config: ${(e as Error).message}\nRun "kvport config --help" for the options.`);
    return 2;
  }
  if (values.help) {
    out(configHelp());
    return 0;
  }
  if (positionals.length > 1 || (positionals.length === 1 && values.file !== undefined)) {
    const extra = values.file === undefined ? positionals.slice(1) : positionals;
    err(
      `kvport config: unexpected argument ${JSON.stringify(extra[0])}: one configuration ` +
        `file at a time\n${USAGE_LINE}`,
    );
    return 2;
  }
  const options: LoadConfigOptions = {};
  const file = values.file ?? positionals[0];
  if (file !== undefined) options.file = file;
  if (values["tp-size"] !== undefined) {
    const text = values["tp-size"].trim();
    const n = Number(text);
    if (!/^\d+$/.test(text) || !Number.isSafeInteger(n) || n < 1) {
      err(`kvport config: --tp-size expects an integer >= 1, got ${JSON.stringify(text)}`);
      return 2;
    }
    options.tpSize = n;
  }
  const sets = parseSets(values.set ?? []);
  if (typeof sets === "string") {
    err(`kvport config: ${sets}`);
    return 2;
  }
  if (Object.keys(sets).length > 0) options.overrides = sets;

  let loaded;
  try {
    loaded = loadConfig(options);
  } catch (e) {
    if (!(e instanceof ConfigError)) throw e;
    if (e.warnings.length) err(warningLines(e.warnings));
    err(`error: ${e.message}`);
    if (values.json) {
      out(JSON.stringify({ ok: false, issues: e.issues, warnings: e.warnings }, jsonReplacer, 2));
    }
    return 2;
  }
  if (loaded.warnings.length) err(warningLines(loaded.warnings));
  if (values.json) {
    out(JSON.stringify({ ok: true, ...loaded }, jsonReplacer, 2));
    return 0;
  }
  const rows: [string, string, string][] = [];
  const { extra_config, ...top } = loaded.config;
  for (const [k, v] of Object.entries(top)) rows.push([k, formatValue(v), loaded.sources[k]]);
  for (const [k, v] of Object.entries(extra_config)) {
    rows.push([`extra_config.${k}`, formatValue(v), loaded.sources[`extra_config.${k}`]]);
  }
  const w0 = Math.max(...rows.map((r) => r[0].length));
  const w1 = Math.min(40, Math.max(...rows.map((r) => r[1].length)));
  const lines = [
    `# file: ${loaded.file ?? "(none)"}`,
    `# ${"key".padEnd(w0 - 2)}  ${"value".padEnd(w1)}  source`,
  ];
  for (const [k, v, s] of rows) lines.push(`${k.padEnd(w0)}  ${v.padEnd(w1)}  ${s}`);
  out(lines.join("\n"));
  return 0;
}

/**
 * The `kvport config` command.
 *
 * @example
 * ```ts
 * import { configCommand } from "./config_cmd.ts";
 * const code = await configCommand.run(["--file", "lmcache.yaml", "--json"]);
 * ```
 */
export const configCommand: Command = {
  name: "config",
  summary: "print the resolved configuration, the source of each value and the warnings",
  run: (args) => Promise.resolve(runConfig(args)),
};
