/**
 * Free space, checked before a static pool preallocates its slot files, so that a pool
 * that cannot fit is refused with the figures before a byte is written (instead of
 * `ENOSPC` half way through, with the disk full).
 *
 * `statfs` comes from `node:fs` (`statfsSync`), which Deno and Bun both implement.
 *
 * @module
 */
import { statfsSync } from "node:fs";
import { dirname } from "node:path";
import { StorageError } from "./errors.ts";

/** Free bytes an unprivileged writer may use on a file system, as `df` reports them. */
export interface FreeSpace {
  /** The directory that was asked (the nearest one that exists). */
  path: string;
  /** Bytes available (`f_bavail * f_bsize`). */
  free: number;
}

/**
 * The free space of the file system that holds `dir` (or, while `dir` does not exist,
 * its nearest existing parent); undefined where statfs is not available.
 *
 * @example
 * ```ts
 * import { freeSpace } from "./disk_space.ts";
 * const s = freeSpace("/tmp");
 * if (s) console.log(`${s.free} bytes free under ${s.path}`);
 * ```
 */
export function freeSpace(dir: string): FreeSpace | undefined {
  let path = dir;
  for (;;) {
    try {
      const s = statfsSync(path);
      return { path, free: Number(s.bavail) * Number(s.bsize) };
    } catch (e) {
      // deno-lint-ignore no-explicit-any
      const code = (e as any)?.code;
      const up = dirname(path);
      if (code !== "ENOENT" || up === path) return undefined;
      path = up;
    }
  }
}

/** "28.0 GiB" */
export function bytesText(n: number): string {
  const units = ["bytes", "KiB", "MiB", "GiB", "TiB", "PiB"];
  let v = n;
  let u = 0;
  while (v >= 1024 && u < units.length - 1) {
    v /= 1024;
    u++;
  }
  return u === 0 ? `${n} bytes` : `${v.toFixed(1)} ${units[u]}`;
}

/** What a static pool still has to allocate, for {@linkcode checkPoolFits}. */
export interface PoolSpaceNeed {
  /** The pool directory. */
  dir: string;
  /** Slots of the pool. */
  poolSize: number;
  /** Bytes of one slot file. */
  slotBytes: number;
  /** Bytes still to allocate: slot files missing or short, and a new index. */
  needed: number;
  /** Bytes the pool's slot files hold already (counted in what fits). */
  allocated: number;
}

/**
 * Throws NO_SPACE, with the figures, when `need.needed` bytes do not fit the free space
 * of the file system of `need.dir`; returns the free space otherwise (undefined when it
 * cannot be known: then the allocation itself will say).
 *
 * @example
 * ```ts
 * import { checkPoolFits } from "./disk_space.ts";
 * checkPoolFits({ dir: "/tmp/pool", poolSize: 4, slotBytes: 4096, needed: 5 * 4096, allocated: 0 });
 * ```
 */
export function checkPoolFits(need: PoolSpaceNeed): FreeSpace | undefined {
  const space = freeSpace(need.dir);
  if (space === undefined || need.needed <= space.free) return space;
  const fit = Math.max(0, Math.floor((space.free + need.allocated - 4096) / need.slotBytes));
  throw new StorageError("NO_SPACE", "creating the pool", {
    path: need.dir,
    reason: `${need.poolSize} slot files of ${need.slotBytes} bytes need ${need.needed} more ` +
      `bytes (${bytesText(need.needed)}), but the file system of ${space.path} has ` +
      `${space.free} bytes free (${bytesText(space.free)}); nothing was written`,
    fix: `Lower nixl_pool_size (about ${fit} slots of this size fit now), free space on that ` +
      "file system, or point nixl_path at a larger one",
  });
}
