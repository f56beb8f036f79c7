/**
 * File (and object) names of the storage backend.
 *
 * Dynamic mode stores one file per key, named like LMCache's `_format_object_key`: `/`
 * and `@` become `_`, then the result is percent-encoded as Python's
 * `urllib.parse.quote(s, safe="")` does (everything but `A-Z a-z 0-9 _ . - ~`), so a
 * TypeScript process and an LMCache process name the same key the same way. Two
 * additions make names safe where LMCache's are not:
 *  - a leading `.` is encoded (`%2E`), so names never collide with our own `.kvport-*`
 *    files or with `.`/`..`;
 *  - a name longer than {@linkcode MAX_NAME_BYTES} keeps a prefix and ends with `~` and a
 *    64-bit FNV-1a hash of the whole key, so it fits a file system's 255-byte limit.
 *
 * Different keys can share a name (`a@b` and `a_b`, or a hash collision): every file we
 * write ends with a trailer that holds the exact key, and a read whose trailer names
 * another key is a miss, never another key's bytes.
 *
 * @module
 */
import { fnv1a64Hex } from "./checksum.ts";

/** Longest file name this module produces, in bytes (file systems allow 255). */
export const MAX_NAME_BYTES = 200;

const UNRESERVED = /[A-Za-z0-9_.\-~]/;

/**
 * The file or object name of a key in dynamic mode (see the module doc).
 *
 * @example
 * ```ts
 * import { objectName } from "./naming.ts";
 * console.log(objectName("vllm@llama/8b@1@0@ab12@bfloat16")); // "vllm_llama_8b_1_0_ab12_bfloat16"
 * console.log(objectName("a b")); // "a%20b"
 * ```
 */
export function objectName(key: string): string {
  const flat = key.replaceAll("/", "_").replaceAll("@", "_");
  let out = "";
  for (const ch of flat) {
    if (UNRESERVED.test(ch)) {
      out += ch;
    } else {
      for (const b of new TextEncoder().encode(ch)) {
        out += "%" + b.toString(16).toUpperCase().padStart(2, "0");
      }
    }
  }
  if (out.startsWith(".")) out = "%2E" + out.slice(1);
  if (out.length === 0) out = "%00empty";
  if (out.length > MAX_NAME_BYTES) {
    let cut = MAX_NAME_BYTES - 17;
    // never cut a %XX escape in half
    const pct = out.lastIndexOf("%", cut);
    if (pct >= 0 && pct > cut - 3) cut = pct;
    out = out.slice(0, cut) + "~" + fnv1a64Hex(key);
  }
  return out;
}

/** Name of the file of slot `index` in a static pool: stable across restarts. */
export function slotFileName(index: number): string {
  return `obj_${index}.bin`;
}

/** The pool's index journal (hidden: encoded keys never start with a dot). */
export const JOURNAL_NAME = ".kvport-index";
/** Temporary journal written during compaction, renamed over {@linkcode JOURNAL_NAME}. */
export const JOURNAL_TMP_NAME = ".kvport-index.tmp";
/** Lock file: one process at a time opens a pool or a dynamic directory for writing. */
export const LOCK_NAME = ".kvport-lock";
/** Prefix of in-flight dynamic-mode writes, renamed to the key's name when durable. */
export const TMP_PREFIX = ".kvport-tmp-";
