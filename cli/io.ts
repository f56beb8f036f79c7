/**
 * Output for the `kvport` commands: plain writes to stdout and stderr that behave the
 * same under Deno and Bun.
 *
 * @module
 */
import process from "node:process";

/**
 * Writes `text` to stdout (a newline is added when missing).
 *
 * @example
 * ```ts
 * import { out } from "./io.ts";
 * out("hello");
 * ```
 */
export function out(text: string): void {
  process.stdout.write(text.endsWith("\n") ? text : `${text}\n`);
}

/**
 * Writes `text` to stderr (a newline is added when missing).
 *
 * @example
 * ```ts
 * import { err } from "./io.ts";
 * err("warning: something");
 * ```
 */
export function err(text: string): void {
  process.stderr.write(text.endsWith("\n") ? text : `${text}\n`);
}

/**
 * Wraps `text` to `width` columns, each line starting with `indent`.
 *
 * @example
 * ```ts
 * import { wrap } from "./io.ts";
 * wrap("a b c", 3, "  "); // "  a\n  b\n  c"
 * ```
 */
export function wrap(text: string, width: number, indent: string): string {
  const lines: string[] = [];
  let line = "";
  for (const word of text.split(/\s+/).filter(Boolean)) {
    if (line && indent.length + line.length + 1 + word.length > width) {
      lines.push(indent + line);
      line = word;
    } else line = line ? `${line} ${word}` : word;
  }
  if (line) lines.push(indent + line);
  return lines.join("\n");
}
