/**
 * Reading an LMCache YAML configuration file.
 *
 * @module
 */
import { readFileSync } from "node:fs";
import { parseAllDocuments } from "yaml";
import type { ConfigIssue, ConfigSource } from "./errors.ts";
import { isPlainMap } from "./convert.ts";
import { MAX_CONFIG_DEPTH } from "./depth.ts";

/** The result of {@link readYamlFile}: the top-level mapping, or the reason there is none. */
export type YamlRead =
  | { ok: true; map: Record<string, unknown> }
  | { ok: false; issue: ConfigIssue };

/**
 * Parses YAML text in LMCache's layout (one document, a mapping at the top). YAML 1.1
 * rules are used, as PyYAML (LMCache's parser) does: `yes`/`no`/`on`/`off` are booleans.
 * An empty document is an empty mapping. Duplicate keys are refused.
 *
 * @example
 * ```ts
 * import { parseConfigYaml } from "@kvport/nixl/config";
 * const r = parseConfigYaml("chunk_size: 128\n", "file:inline.yaml", "inline.yaml");
 * if (r.ok) console.log(r.map.chunk_size); // 128
 * ```
 */
export function parseConfigYaml(text: string, source: ConfigSource, path: string): YamlRead {
  const fail = (what: string, received: string): YamlRead => ({
    ok: false,
    issue: {
      key: "config_file",
      source,
      expected: "a YAML mapping of configuration keys",
      received,
      message: `config file ${path}: ${what}`,
    },
  });
  let docs;
  try {
    docs = parseAllDocuments(text, {
      version: "1.1",
      prettyErrors: true,
      uniqueKeys: true,
      logLevel: "silent",
    });
  } catch (e) {
    return fail(`cannot parse YAML: ${(e as Error).message}`, "unparsable text");
  }
  if (!Array.isArray(docs)) docs = [docs];
  if (docs.length > 1) {
    return fail(
      `holds ${docs.length} YAML documents; a configuration file holds one`,
      `${docs.length} documents`,
    );
  }
  if (docs.length === 0) return { ok: true, map: {} };
  const doc = docs[0];
  if (doc.errors.length > 0) {
    const first = doc.errors[0].message.split("\n")[0];
    // The parser recurses per level: a structure thousands of levels deep ends there.
    // Shallower values are measured by the loader (depth.ts), key by key.
    if (/call stack/i.test(first)) return fail(tooDeep(first), "too deeply nested YAML");
    return fail(`invalid YAML: ${first}`, "invalid YAML");
  }
  let value: unknown;
  try {
    value = doc.toJS({ maxAliasCount: 1000 });
  } catch (e) {
    const first = (e as Error).message.split("\n")[0];
    if (e instanceof RangeError) return fail(tooDeep(first), "too deeply nested YAML");
    return fail(`cannot read YAML: ${first}`, "invalid YAML");
  }
  if (value === null || value === undefined) return { ok: true, map: {} };
  if (!isPlainMap(value)) {
    const kind = Array.isArray(value) ? "a list" : `a ${typeof value}`;
    return fail(`the top level is ${kind}, not a mapping of keys`, kind);
  }
  return { ok: true, map: value };
}

/**
 * Reads and parses the configuration file at `path` (see {@link parseConfigYaml}). A
 * missing or unreadable file is an issue that names the path and where the path came
 * from (`source`: `option:file` or `env:LMCACHE_CONFIG_FILE`).
 *
 * @example
 * ```ts
 * import { readYamlFile } from "@kvport/nixl/config";
 * const r = readYamlFile("/nonexistent.yaml", "option:file");
 * if (!r.ok) console.log(r.issue.message); // config file /nonexistent.yaml cannot be read: ...
 * ```
 */
export function readYamlFile(path: string, source: ConfigSource): YamlRead {
  let text: string;
  try {
    text = readFileSync(path, "utf8");
  } catch (e) {
    const err = e as NodeJS.ErrnoException;
    const why = err.code === "ENOENT"
      ? "no such file"
      : err.code === "EISDIR"
      ? "it is a directory"
      : err.code === "EACCES"
      ? "permission denied"
      : err.message;
    return {
      ok: false,
      issue: {
        key: "config_file",
        source,
        expected: "a readable YAML file",
        received: JSON.stringify(path),
        message: `config file ${path} (${source}) cannot be read: ${why}.`,
      },
    };
  }
  return parseConfigYaml(text, `file:${path}`, path);
}

function tooDeep(parserMessage: string): string {
  return `nested too deeply to read (${parserMessage}); a configuration value nests at most ` +
    `${MAX_CONFIG_DEPTH} levels`;
}
