/**
 * Text forms of configuration values, for messages, docs and the CLI.
 *
 * @module
 */

const MAX = 120;

/**
 * A value as one line of text: JSON, except that infinity is `inf`, NaN `nan`,
 * `undefined` `nothing`, and long texts are cut with `...`.
 *
 * @example
 * ```ts
 * import { formatValue } from "@kvport/nixl/config";
 * formatValue("a"); // '"a"'
 * formatValue([1, 2]); // "[1,2]"
 * formatValue(Infinity); // "inf"
 * ```
 */
export function formatValue(value: unknown): string {
  let text: string;
  if (value === undefined) text = "nothing";
  else if (typeof value === "number") text = numberText(value);
  else if (typeof value === "bigint") text = `${value}`;
  else if (typeof value === "function" || typeof value === "symbol") text = String(value);
  else {
    try {
      text = JSON.stringify(value, jsonReplacer) ?? String(value);
    } catch {
      text = String(value);
    }
  }
  return text.length > MAX ? `${text.slice(0, MAX - 3)}...` : text;
}

function numberText(n: number): string {
  if (Number.isNaN(n)) return "nan";
  if (n === Infinity) return "inf";
  if (n === -Infinity) return "-inf";
  return String(n);
}

/**
 * A `JSON.stringify` replacer that writes infinities as `"inf"`/`"-inf"` (which the
 * loader reads back for float keys), NaN as `"nan"` and bigints as numbers' text.
 *
 * @example
 * ```ts
 * import { jsonReplacer } from "@kvport/nixl/config";
 * JSON.stringify({ t: Infinity }, jsonReplacer); // '{"t":"inf"}'
 * ```
 */
export function jsonReplacer(_key: string, value: unknown): unknown {
  if (typeof value === "number" && !Number.isFinite(value)) return numberText(value);
  if (typeof value === "bigint") return value.toString();
  return value;
}
