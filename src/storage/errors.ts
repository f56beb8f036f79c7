/**
 * Errors of the storage backend: every one names the thing (a path, a key, a config key),
 * the reason (the system's errno text where there is one) and what to do about it.
 *
 * @module
 */
import { openFileLimits } from "./fd_limit.ts";

/**
 * Machine-readable kinds of {@linkcode StorageError}.
 *
 * @example
 * ```ts
 * import { StorageError, type StorageErrorCode } from "@kvport/nixl";
 * const code: StorageErrorCode = new StorageError("NO_SPACE", "writing").code;
 * ```
 */
export type StorageErrorCode =
  | "CONFIG"
  | "NO_SPACE"
  | "PERMISSION"
  | "READ_ONLY"
  | "FILE_TOO_LARGE"
  | "TOO_MANY_FILES"
  | "IO"
  | "LOCKED"
  | "FORMAT"
  | "CLOSED"
  | "TOO_LARGE"
  | "BUSY"
  | "NOT_SUPPORTED";

/**
 * A storage failure with its kind, the path involved (when there is one) and a fix.
 *
 * @example
 * ```ts
 * import { StorageError } from "@kvport/nixl";
 * try {
 *   throw new StorageError("NO_SPACE", "writing chunk", { path: "/data/obj_1.bin" });
 * } catch (e) {
 *   if (e instanceof StorageError && e.code === "NO_SPACE") console.log(e.message);
 * }
 * ```
 */
export class StorageError extends Error {
  /** What kind of failure this is. */
  readonly code: StorageErrorCode;
  /** The file or directory involved, when there is one. */
  readonly path: string | undefined;
  /** What to change to make the operation work. */
  readonly fix: string | undefined;

  /**
   * Builds the message "<what> at <path>: <reason>. <fix>".
   *
   * @param code the failure kind
   * @param what what was being done, e.g. "writing 4 chunks"
   * @param details path, reason (errno text), fix and cause
   */
  constructor(
    code: StorageErrorCode,
    what: string,
    details: { path?: string; reason?: string; fix?: string; cause?: unknown } = {},
  ) {
    const parts = [what];
    if (details.path !== undefined) parts[0] += ` at ${details.path}`;
    if (details.reason) parts[0] += `: ${details.reason}`;
    const fix = details.fix ?? defaultFix(code, details.path);
    if (fix) parts.push(fix);
    super(parts.join(". "), details.cause === undefined ? undefined : { cause: details.cause });
    this.name = "StorageError";
    this.code = code;
    this.path = details.path;
    this.fix = fix;
  }
}

function defaultFix(code: StorageErrorCode, path: string | undefined): string | undefined {
  const where = path ? ` (${path})` : "";
  switch (code) {
    case "NO_SPACE":
      return `Free space on the file system of nixl_path${where}, lower nixl_pool_size, ` +
        "or point nixl_path at a larger file system; chunks already stored are intact";
    case "PERMISSION":
      return `Make nixl_path${where} writable by this user (uid ${uid()}) or choose another ` +
        "nixl_path";
    case "READ_ONLY":
      return `The file system of nixl_path${where} is mounted read-only: choose another nixl_path`;
    case "FILE_TOO_LARGE":
      return "A file size limit (ulimit -f / RLIMIT_FSIZE) is below one chunk: raise it";
    case "TOO_MANY_FILES":
      return openFilesFix();
    case "LOCKED":
      return "Another process uses this pool: close it first, or give each process its own " +
        "nixl_path";
    default:
      return undefined;
  }
}

/**
 * What to raise when the process runs out of descriptors: the soft and hard limits as
 * /proc/self/limits reports them (Linux), and where each is set.
 */
function openFilesFix(): string {
  const l = openFileLimits();
  const now = l ? ` (now: soft ${l.soft}, hard ${l.hard})` : "";
  return `The process reached its limit of open files, RLIMIT_NOFILE${now}: raise it ` +
    "(`ulimit -n <n>` in the shell that starts it, up to the hard limit; LimitNOFILE= in a " +
    "systemd unit; nofile in /etc/security/limits.conf), or lower maxOpenFiles of the " +
    "storage backend. ENFILE (the whole system's table) is raised with sysctl fs.file-max";
}

function uid(): string {
  try {
    // deno-lint-ignore no-explicit-any
    const p = (globalThis as any).process;
    return typeof p?.getuid === "function" ? String(p.getuid()) : "?";
  } catch {
    return "?";
  }
}

/** errno names and the error kind each maps to. */
const ERRNO_KINDS: ReadonlyArray<[RegExp, StorageErrorCode]> = [
  [/ENOSPC|No space left on device|EDQUOT|Disk quota exceeded/i, "NO_SPACE"],
  [/EACCES|EPERM|Permission denied|Operation not permitted/i, "PERMISSION"],
  [/EROFS|Read-only file system/i, "READ_ONLY"],
  [/EFBIG|File too large/i, "FILE_TOO_LARGE"],
  [/EMFILE|ENFILE|Too many open files/i, "TOO_MANY_FILES"],
];

/**
 * Turns a lower-level error (node:fs, the native shim's NixlError) into a
 * {@linkcode StorageError} that names the path and carries the system's reason.
 *
 * @example
 * ```ts
 * import { toStorageError } from "./errors.ts";
 * const e = toStorageError(new Error("ENOSPC: no space left"), "writing chunk", "/data/x");
 * console.log(e.code); // "NO_SPACE"
 * ```
 */
export function toStorageError(err: unknown, what: string, path?: string): StorageError {
  if (err instanceof StorageError) return err;
  const text = errorText(err);
  let code: StorageErrorCode = "IO";
  for (const [re, kind] of ERRNO_KINDS) {
    if (re.test(text)) {
      code = kind;
      break;
    }
  }
  return new StorageError(code, what, { path, reason: text, cause: err });
}

function errorText(err: unknown): string {
  if (err instanceof Error) {
    // deno-lint-ignore no-explicit-any
    const code = (err as any).code;
    return typeof code === "string" && !err.message.includes(code)
      ? `${code}: ${err.message}`
      : err.message;
  }
  return String(err);
}
