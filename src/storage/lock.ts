/**
 * One process at a time per static pool: a lock file holding the owner's pid and host.
 * A lock left by a process that no longer runs (killed), or one that holds no owner at
 * all (garbage: a damaged file, a half-written lock of a crashed process), is stale: it
 * is taken over with a warning.
 *
 * The lock file is written whole under a temporary name and hard-linked into place
 * (`link` fails when the name exists, atomically), so a lock that is there always names
 * its owner; where the file system has no hard links it is created with `O_EXCL` and
 * then written, and a garbage lock younger than {@linkcode YOUNG_LOCK_MS} is given that
 * long to be finished before it counts as stale.
 *
 * @module
 */
import { sleep } from "../deadline.ts";
import * as fsp from "node:fs/promises";
import * as os from "node:os";
import process from "node:process";
import { StorageError, toStorageError } from "./errors.ts";

/** A held pool lock. */
export interface PoolLock {
  /** The lock file. */
  readonly path: string;
  /** Removes the lock file. Idempotent. */
  release(): Promise<void>;
}

/** How long a lock file without a readable owner may be one being written right now. */
export const YOUNG_LOCK_MS = 1000;

function hostname(): string {
  try {
    return os.hostname();
  } catch {
    return "";
  }
}

function alive(pid: number): boolean {
  if (pid === process.pid) return true;
  try {
    process.kill(pid, 0);
    return true;
  } catch (e) {
    // deno-lint-ignore no-explicit-any
    return (e as any)?.code === "EPERM";
  }
}

function errno(e: unknown): string | undefined {
  // deno-lint-ignore no-explicit-any
  return (e as any)?.code;
}

/** The owner a lock file names, or undefined when its text is not "<pid>[\n<host>]\n". */
function parseOwner(text: string): { pid: number; host: string } | undefined {
  const m = /^([1-9]\d{0,9})(?:\n([^\n\0]*))?\n?$/.exec(text);
  if (!m) return undefined;
  return { pid: Number(m[1]), host: m[2] ?? "" };
}

/** The text of a garbage lock, shortened and made printable for a message. */
function shown(text: string): string {
  const t = text.length > 40 ? `${text.slice(0, 40)}...` : text;
  return `${text.length} bytes: ${JSON.stringify(t)}`;
}

/** Creates the lock file holding `content`; false when it already exists. */
async function create(path: string, content: string): Promise<boolean> {
  const tmp = `${path}.${process.pid}.${Math.random().toString(36).slice(2, 10)}`;
  try {
    await fsp.writeFile(tmp, content, { flag: "wx", mode: 0o644 });
  } catch (e) {
    throw toStorageError(e, "creating the pool lock", path);
  }
  try {
    await fsp.link(tmp, path);
    return true;
  } catch (e) {
    if (errno(e) === "EEXIST") return false;
    if (!["EPERM", "ENOTSUP", "EOPNOTSUPP", "ENOSYS", "EXDEV"].includes(errno(e) ?? "")) {
      throw toStorageError(e, "creating the pool lock", path);
    }
  } finally {
    await fsp.rm(tmp, { force: true }).catch(() => {});
  }
  // No hard links here: O_EXCL, then write (a reader may see it empty for a moment).
  try {
    await fsp.writeFile(path, content, { flag: "wx", mode: 0o644 });
    return true;
  } catch (e) {
    if (errno(e) === "EEXIST") return false;
    throw toStorageError(e, "creating the pool lock", path);
  }
}

/**
 * Removes a stale lock file, unless it was replaced since it was judged stale (then
 * the fresh one is put back): it is renamed aside first, and only the file whose inode
 * was judged is deleted.
 */
async function removeStale(path: string, ino: number): Promise<void> {
  const aside = `${path}.stale.${process.pid}.${Math.random().toString(36).slice(2, 10)}`;
  try {
    await fsp.rename(path, aside);
  } catch {
    return; // gone already
  }
  try {
    const st = await fsp.stat(aside);
    if (st.ino !== ino) await fsp.link(aside, path).catch(() => {}); // not ours to remove
  } finally {
    await fsp.rm(aside, { force: true }).catch(() => {});
  }
}

const pause = (ms: number) => sleep(ms);

/**
 * Takes the lock file at `path`, or throws LOCKED naming the process that holds it. A
 * stale lock (see the module doc) is taken over and `warnings` says so.
 */
export async function acquireLock(path: string, warnings: string[] = []): Promise<PoolLock> {
  const me = `${process.pid}\n${hostname()}\n`;
  const started = Date.now();
  for (let attempt = 0; attempt < 50; attempt++) {
    if (await create(path, me)) {
      let released = false;
      return {
        path,
        async release() {
          if (released) return;
          released = true;
          await fsp.rm(path, { force: true }).catch(() => {});
        },
      };
    }
    let text: string;
    let st;
    try {
      st = await fsp.stat(path);
      text = await fsp.readFile(path, "latin1");
    } catch {
      continue; // removed meanwhile: try again
    }
    const owner = parseOwner(text);
    if (owner === undefined) {
      const age = Date.now() - st.mtimeMs;
      if (age < YOUNG_LOCK_MS && Date.now() - started < 2 * YOUNG_LOCK_MS) {
        await pause(50); // maybe being written right now (no hard links here)
        continue;
      }
      await removeStale(path, st.ino);
      warnings.push(
        `pool lock ${path} named no owner (${shown(text)}): treated as stale (a damaged ` +
          "lock, or one a crashed process never finished) and taken over",
      );
      continue;
    }
    const sameHost = owner.host === "" || owner.host === hostname();
    if (sameHost && !alive(owner.pid)) {
      await removeStale(path, st.ino);
      warnings.push(
        `pool lock ${path} was held by process ${owner.pid}, which no longer runs: taken over`,
      );
      continue;
    }
    throw new StorageError("LOCKED", "opening the pool", {
      path,
      reason: `process ${owner.pid}${owner.host ? ` on ${owner.host}` : ""} holds it` +
        (owner.pid === process.pid ? " (this process: the pool is already open here)" : ""),
    });
  }
  throw new StorageError("LOCKED", "opening the pool", { path, reason: "the lock kept changing" });
}
