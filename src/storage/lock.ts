/**
 * One process at a time per static pool: a lock file created with `O_EXCL` holding the
 * owner's pid and host. A lock left by a process that no longer runs (killed) is taken
 * over.
 *
 * @module
 */
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

/** Takes the lock file at `path`, or throws LOCKED naming the process that holds it. */
export async function acquireLock(path: string): Promise<PoolLock> {
  const me = `${process.pid}\n${hostname()}\n`;
  for (let attempt = 0; attempt < 3; attempt++) {
    try {
      await fsp.writeFile(path, me, { flag: "wx", mode: 0o644 });
      let released = false;
      return {
        path,
        async release() {
          if (released) return;
          released = true;
          await fsp.rm(path, { force: true }).catch(() => {});
        },
      };
    } catch (e) {
      // deno-lint-ignore no-explicit-any
      if ((e as any)?.code !== "EEXIST") throw toStorageError(e, "creating the pool lock", path);
    }
    let text = "";
    try {
      text = await fsp.readFile(path, "utf8");
    } catch {
      continue; // removed meanwhile: try again
    }
    const [pidText, host] = text.split("\n");
    const pid = Number(pidText);
    const sameHost = host === undefined || host === "" || host === hostname();
    if (Number.isInteger(pid) && pid > 0 && sameHost && !alive(pid)) {
      await fsp.rm(path, { force: true }).catch(() => {});
      continue;
    }
    throw new StorageError("LOCKED", "opening the pool", {
      path,
      reason: `process ${pidText}${host ? ` on ${host}` : ""} holds it` +
        (pid === process.pid ? " (this process: the pool is already open here)" : ""),
    });
  }
  throw new StorageError("LOCKED", "opening the pool", { path, reason: "the lock kept changing" });
}
