/**
 * Renders the configuration key table into README.md between
 * `<!-- config-table:start -->` and `<!-- config-table:end -->` (appending a
 * "## Configuration reference" section when the markers are missing). Only that section
 * is touched; it is formatted with `deno fmt` rules (line width 100) so that
 * `deno fmt --check` stays clean.
 *
 * ```sh
 * deno run -A scripts/gen_config_docs.ts          # rewrite README.md
 * deno run -A scripts/gen_config_docs.ts --check  # exit 1 if README.md is stale
 * bun scripts/gen_config_docs.ts
 * ```
 *
 * @module
 */
import { spawnSync } from "node:child_process";
import { existsSync, readFileSync, writeFileSync } from "node:fs";
import process from "node:process";
import { fileURLToPath } from "node:url";
import {
  extractConfigReference,
  normalizeMarkdown,
  renderConfigReference,
  spliceConfigReference,
} from "../src/config/docs.ts";

const root = fileURLToPath(new URL("..", import.meta.url));
const readmePath = `${root}README.md`;

/** Formats Markdown as `deno fmt` does with the project's line width, if Deno is at hand. */
function formatMarkdown(text: string): string {
  const deno = "Deno" in globalThis ? process.execPath : `${root}node_modules/.bin/deno`;
  if (!existsSync(deno)) {
    console.error(`deno not found at ${deno}: the section is written unformatted`);
    return text;
  }
  const r = spawnSync(deno, ["fmt", "--no-config", "--line-width=100", "--ext=md", "-"], {
    input: text,
    encoding: "utf8",
  });
  if (r.status !== 0) {
    console.error(`deno fmt failed (${r.status}): ${r.stderr}`);
    return text;
  }
  return r.stdout.replace(/\n+$/, "");
}

const check = process.argv.slice(2).includes("--check");
const before = existsSync(readmePath) ? readFileSync(readmePath, "utf8") : "# @kvport/nixl\n";
const fresh = renderConfigReference();
const current = extractConfigReference(before);
if (current !== null && normalizeMarkdown(current) === normalizeMarkdown(fresh)) {
  console.log("README.md configuration reference is current");
} else if (check) {
  console.error("README.md configuration reference is stale: run scripts/gen_config_docs.ts");
  process.exitCode = 1;
} else {
  writeFileSync(readmePath, spliceConfigReference(before, formatMarkdown(fresh)));
  console.log("README.md configuration reference updated");
}
