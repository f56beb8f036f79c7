/**
 * Value conversion by key kind, LMCache's converters made strict: text from the
 * environment, and the looser values YAML files and overrides may hold.
 *
 * @module
 */
import { depthProblem } from "./depth.ts";
import type { KeyKind } from "./schema.ts";

/** The result of one conversion. */
export type Converted = { ok: true; value: unknown } | { ok: false; why?: string };

const INT_RE = /^[+-]?\d+(?:_\d+)*$/;
const FLOAT_RE = /^[+-]?(?:\d+(?:_\d+)*(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?$/;
const INF_RE = /^[+]?(?:inf|infinity)$/i;
const NEG_INF_RE = /^-(?:inf|infinity)$/i;

/**
 * Strips surrounding whitespace, then one pair of matching surrounding quotes (single
 * or double), then whitespace again, as LMCache does for environment values.
 *
 * @example
 * ```ts
 * import { unquote } from "@kvport/nixl/config";
 * unquote(` "cuda:0" `); // "cuda:0"
 * unquote(`'a'b'`); // "a'b"
 * ```
 */
export function unquote(raw: string): string {
  const t = raw.trim();
  if (t.length >= 2 && (t[0] === '"' || t[0] === "'") && t[t.length - 1] === t[0]) {
    return t.slice(1, -1).trim();
  }
  return t;
}

const ok = (value: unknown): Converted => ({ ok: true, value });
const bad = (why?: string): Converted => ({ ok: false, why });

/**
 * Text to boolean: `true`/`1` are true and `false`/`0` are false (case-insensitive);
 * anything else (`yes`, `on`, `2`) is an error. LMCache reads anything but true/1 as
 * false; kvport refuses it so that a typo cannot silently turn a feature off.
 */
export function parseBool(text: string): Converted {
  const t = text.trim().toLowerCase();
  if (t === "true" || t === "1") return ok(true);
  if (t === "false" || t === "0") return ok(false);
  return bad("booleans are true/1 or false/0");
}

/** Text to a safe integer (decimal, optional sign, `_` separators as Python allows). */
export function parseInt10(text: string): Converted {
  const t = text.trim();
  if (!INT_RE.test(t)) return bad();
  const n = Number(t.replaceAll("_", ""));
  if (!Number.isSafeInteger(n)) return bad("outside the safe integer range (2^53)");
  return ok(n === 0 ? 0 : n);
}

/** Text to a number: decimal or exponent form, or `inf`/`infinity` (any case). */
export function parseFloat10(text: string): Converted {
  const t = text.trim();
  if (INF_RE.test(t)) return ok(Infinity);
  if (NEG_INF_RE.test(t)) return ok(-Infinity);
  if (!FLOAT_RE.test(t)) return bad();
  const n = Number(t.replaceAll("_", ""));
  return Number.isFinite(n) ? ok(n) : bad("out of range");
}

function splitList(text: string): string[] {
  let t = text.trim();
  if (t.startsWith("[") && t.endsWith("]")) t = t.slice(1, -1);
  return t.split(",").map((p) => unquote(p)).filter((p) => p.length > 0);
}

function listOf(items: readonly unknown[], each: (v: unknown) => Converted): Converted {
  const out: unknown[] = [];
  for (const [i, item] of items.entries()) {
    const c = each(item);
    if (!c.ok) return bad(`item ${i} (${describe(item)}) is not valid`);
    out.push(c.value);
  }
  return ok(out);
}

function describe(v: unknown): string {
  return typeof v === "string" ? JSON.stringify(v) : String(v);
}

/**
 * Converts the text of an `LMCACHE_<KEY>` variable (already unquoted) to a value of the
 * key's kind. Lists are comma-separated (`"7300, 7301"`, brackets allowed); maps are JSON.
 *
 * @example
 * ```ts
 * import { convertEnvText } from "@kvport/nixl/config";
 * convertEnvText("int_list", "1, 2,3"); // { ok: true, value: [1, 2, 3] }
 * convertEnvText("bool", "yes"); // { ok: false, why: "booleans are true/1 or false/0" }
 * ```
 */
export function convertEnvText(kind: KeyKind, text: string): Converted {
  switch (kind) {
    case "bool":
      return parseBool(text);
    case "int":
      return parseInt10(text);
    case "float":
      return parseFloat10(text);
    case "str":
      return ok(text);
    case "int_list":
      return listOf(splitList(text), (p) => parseInt10(p as string));
    case "str_list":
      return ok(splitList(text));
    case "str_map":
    case "map": {
      let parsed: unknown;
      try {
        parsed = JSON.parse(text);
      } catch (e) {
        return bad(`not valid JSON: ${(e as Error).message}`);
      }
      const tooDeep = depthProblem(parsed);
      if (tooDeep !== undefined) return bad(tooDeep);
      return kind === "map" ? (isPlainMap(parsed) ? ok(parsed) : bad("not a JSON object")) : (
        coerceValue("str_map", parsed)
      );
    }
  }
}

/** Whether `v` is a plain object (a YAML/JSON mapping). */
export function isPlainMap(v: unknown): v is Record<string, unknown> {
  if (v === null || typeof v !== "object" || Array.isArray(v)) return false;
  const proto = Object.getPrototypeOf(v);
  return proto === Object.prototype || proto === null;
}

/**
 * Converts a value from a YAML file or an override to the key's kind with LMCache's
 * leniency: numeric and boolean text is read like the environment's, a single value
 * becomes a one-element list, comma-separated text becomes a list. `null` passes through
 * (the schema decides whether the key may be null). Non-integral numbers are not
 * truncated to integers (Python's `int(2.5)` would give 2): they are refused.
 *
 * @example
 * ```ts
 * import { coerceValue } from "@kvport/nixl/config";
 * coerceValue("int_list", 8200); // { ok: true, value: [8200] }
 * coerceValue("int", "7500"); // { ok: true, value: 7500 }
 * ```
 */
export function coerceValue(kind: KeyKind, value: unknown): Converted {
  if (value === null) return ok(null);
  switch (kind) {
    case "bool":
      if (typeof value === "boolean") return ok(value);
      if (value === 0 || value === 1) return ok(value === 1);
      return typeof value === "string" ? parseBool(value) : bad();
    case "int":
      if (typeof value === "number") {
        return Number.isSafeInteger(value) ? ok(value) : bad();
      }
      if (typeof value === "bigint") {
        return Number.isSafeInteger(Number(value)) ? ok(Number(value)) : bad();
      }
      return typeof value === "string" ? parseInt10(value) : bad();
    case "float":
      if (typeof value === "number") return Number.isNaN(value) ? bad() : ok(value);
      return typeof value === "string" ? parseFloat10(value) : bad();
    case "str":
      if (typeof value === "string") return ok(value.trim());
      if (typeof value === "number" && Number.isFinite(value)) return ok(String(value));
      return bad();
    case "int_list":
      if (Array.isArray(value)) return listOf(value, (v) => coerceValue("int", v));
      if (typeof value === "number" || typeof value === "bigint") {
        return listOf([value], (v) => coerceValue("int", v));
      }
      return typeof value === "string" ? convertEnvText("int_list", value) : bad();
    case "str_list":
      if (Array.isArray(value)) {
        return listOf(value, (v) => {
          const c = coerceValue("str", v);
          return c.ok && c.value !== null && c.value !== "" ? c : bad();
        });
      }
      return typeof value === "string" ? ok(splitList(value)) : bad();
    case "str_map": {
      if (!isPlainMap(value)) return bad();
      const out: Record<string, string> = {};
      for (const [k, v] of Object.entries(value)) {
        if (typeof v === "string") out[k] = v;
        else if (typeof v === "number" && Number.isFinite(v)) out[k] = String(v);
        else if (typeof v === "boolean") out[k] = String(v);
        else return bad(`entry ${JSON.stringify(k)} (${describe(v)}) is not a string`);
      }
      return ok(out);
    }
    case "map":
      return isPlainMap(value) ? ok(value) : bad();
  }
}
