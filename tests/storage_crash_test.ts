// Durability: a process killed during a put, a second process reading and writing the
// pool, a full disk, a denied permission. Uses the agent (libkvport.so) when it is built,
// else the node:fs test io (the line printed at load says which).
import assert from "node:assert/strict";
import { spawn, spawnSync } from "node:child_process";
import { mkdirSync, readdirSync, rmSync, writeFileSync } from "node:fs";
import process from "node:process";
import { createInterface } from "node:readline";
import { requireAll, test } from "./helpers/skip.ts";
import { nativeLibrary } from "../src/agent.ts";
import { crc32 } from "../src/storage/checksum.ts";
import { NixlStorageBackend, type NixlStorageOptions, StorageError } from "../src/storage/mod.ts";
import { FsStorageIo } from "./helpers/storage_fs_io.ts";
import { pattern, tempDir } from "./helpers/storage_util.ts";

// Under CI the agent is required: a library that does not load fails these tests.
const native = requireAll || await nativeLibrary().then(() => true, () => false);
const IO: "agent" | "fs" = native ? "agent" : "fs";
if (!native) {
  console.log("storage_crash_test: libkvport.so not built: using the node:fs test io");
}
const PAGE = 64 * 1024;
const isRoot = process.getuid?.() === 0;

function ioFor(kind: "agent" | "fs", pageSize: number) {
  return kind === "fs" ? new FsStorageIo(8 * (pageSize + 8192)) : undefined;
}

async function open(dir: string, opts: Partial<NixlStorageOptions> = {}, kind = IO) {
  return await NixlStorageBackend.create({
    path: dir,
    pageSize: PAGE,
    poolSize: 8,
    bufferSize: 8 * PAGE,
    engine: "builtin",
    io: ioFor(kind, opts.pageSize ?? PAGE),
    ...opts,
  });
}

interface Child {
  lines: Record<string, unknown>[];
  next(
    pred: (l: Record<string, unknown>) => boolean,
    timeoutMs?: number,
  ): Promise<Record<string, unknown>>;
  kill(): Promise<void>;
  exited: Promise<number | null>;
}

function child(options: Record<string, unknown>): Child {
  const script = new URL("./helpers/storage_child.ts", import.meta.url).pathname;
  const isDeno = typeof (globalThis as { Deno?: unknown }).Deno !== "undefined";
  const args = isDeno ? ["run", "-A", script] : [script];
  const p = spawn(process.execPath, [...args, JSON.stringify(options)], {
    stdio: ["ignore", "pipe", "inherit"],
  });
  const exited = new Promise<number | null>((r) => p.on("exit", (c) => r(c)));
  const lines: Record<string, unknown>[] = [];
  const waiters: (() => void)[] = [];
  createInterface({ input: p.stdout! }).on("line", (line) => {
    lines.push(JSON.parse(line));
    for (const w of waiters.splice(0)) w();
  });
  return {
    lines,
    exited,
    async next(pred, timeoutMs = 15_000) {
      const deadline = Date.now() + timeoutMs;
      for (;;) {
        const hit = lines.find(pred);
        if (hit) return hit;
        if (Date.now() > deadline) throw new Error(`child: no matching line in ${lines.length}`);
        await Promise.race([
          new Promise<void>((r) => waiters.push(r)),
          new Promise((r) => setTimeout(r, 100)),
          exited,
        ]);
      }
    },
    async kill() {
      p.kill("SIGKILL");
      await exited; // reaped: its pid is gone, so its lock is stale
    },
  };
}

test(`storage crash: SIGKILL in the middle of a torn write leaves the torn key absent and every other key intact (fs io)`, async () => {
  const { dir, cleanup } = tempDir();
  try {
    const c = child({ dir, io: "fs", pageSize: PAGE, poolSize: 4, action: "tear", count: 6 });
    await c.next((l) => l.tearing === true);
    await new Promise((r) => setTimeout(r, 50)); // the half page is written
    await c.kill();
    const store = await open(dir, { poolSize: 4 }, "fs");
    // k0, k1 were evicted by k4, k5; the torn put evicted k2 (durably) before writing
    assert.deepEqual((await store.keys()).sort(), ["k3", "k4", "k5"]);
    for (const i of [3, 4, 5]) assert.deepEqual(await store.get(`k${i}`), pattern(PAGE, i));
    assert.equal(await store.get("torn"), undefined);
    assert.equal(await store.get("k2"), undefined);
    assert.equal((await store.stats()).corrupt, 0); // absent by the index, not by a checksum
    // the pool is fully usable
    await store.put("after", pattern(PAGE, 7));
    assert.deepEqual(await store.get("after"), pattern(PAGE, 7));
    await store.close();
  } finally {
    cleanup();
  }
});

test(`storage crash: SIGKILL at random moments of a put loop never yields wrong bytes (${IO} io)`, async () => {
  const { dir, cleanup } = tempDir();
  try {
    let next = 0;
    for (let round = 0; round < 3; round++) {
      const c = child({ dir, io: IO, pageSize: PAGE, poolSize: 8, action: "loop", start: next });
      await c.next((l) => typeof l.stored === "number" && (l.stored as number) >= next + 10);
      await new Promise((r) => setTimeout(r, Math.random() * 20));
      await c.kill();
      const confirmed = c.lines.filter((l) => typeof l.stored === "number").map((l) =>
        l.stored as number
      );
      const last = Math.max(...confirmed);
      const store = await open(dir);
      const keys = await store.keys();
      // every key present holds exactly its bytes
      for (const k of keys) {
        const i = Number(k.slice(1));
        assert.deepEqual(await store.get(k), pattern(PAGE - (i % 3), i), k);
      }
      // the last 7 confirmed puts are there (the 8th slot may have gone to the killed put)
      for (let i = last - 6; i <= last; i++) assert.ok(keys.includes(`k${i}`), `k${i} in ${keys}`);
      assert.equal((await store.stats()).corrupt, 0);
      await store.close();
      next = last + 2;
    }
  } finally {
    cleanup();
  }
});

test(`storage restart: a second process reads what this one stored, and the other way round (${IO} io)`, async () => {
  const { dir, cleanup } = tempDir();
  try {
    const a = await open(dir);
    await a.batchedPut(["x", "y"], [pattern(PAGE, 1), pattern(100, 2)]);
    await a.close();
    const c = child({ dir, io: IO, pageSize: PAGE, poolSize: 8, action: "read" });
    const r = await c.next((l) => l.keys !== undefined);
    assert.deepEqual(r.keys, { x: crc32(pattern(PAGE, 1)), y: crc32(pattern(100, 2)) });
    assert.equal(await c.exited, 0);
    const w = child({ dir, io: IO, pageSize: PAGE, poolSize: 8, action: "write", count: 3 });
    await w.next((l) => l.done === true);
    assert.equal(await w.exited, 0);
    const b = await open(dir);
    assert.deepEqual((await b.keys()).sort(), ["k0", "k1", "k2", "x", "y"]);
    for (let i = 0; i < 3; i++) assert.deepEqual(await b.get(`k${i}`), pattern(PAGE, i));
    assert.deepEqual(await b.get("x"), pattern(PAGE, 1));
    await b.close();
  } finally {
    cleanup();
  }
});

function mountTmpfs(dir: string, size: string): string | undefined {
  if (!isRoot) return "not root: cannot mount a small tmpfs";
  const r = spawnSync("mount", ["-t", "tmpfs", "-o", `size=${size}`, "tmpfs", dir]);
  return r.status === 0 ? undefined : `mount failed: ${String(r.stderr).trim()}`;
}

function unmount(dir: string): void {
  spawnSync("umount", [dir]);
}

const tmpfsSkip = (() => {
  const { dir, cleanup } = tempDir();
  const why = mountTmpfs(dir, "64k");
  if (!why) unmount(dir);
  cleanup();
  return why;
})();
if (tmpfsSkip) console.log(`storage_crash_test: full-disk tests skipped: ${tmpfsSkip}`);

test(`storage full disk: a clear NO_SPACE error, nothing stored is lost (dynamic, ${IO} io)`, {
  skip: tmpfsSkip,
}, async () => {
  const { dir, cleanup } = tempDir();
  mountTmpfs(dir, "1m");
  try {
    const store = await open(dir, { poolSize: 0 });
    const stored: number[] = [];
    let err: unknown;
    for (let i = 0; i < 64; i++) {
      try {
        await store.put(`k${i}`, pattern(PAGE, i));
        stored.push(i);
      } catch (e) {
        err = e;
        break;
      }
    }
    assert.ok(err instanceof StorageError, `got ${err}`);
    assert.equal(err.code, "NO_SPACE");
    assert.ok(err.message.includes(dir), err.message);
    assert.match(err.message, /No space left on device|ENOSPC/i);
    assert.match(err.message, /Free space on the file system of nixl_path/);
    assert.ok(stored.length >= 5 && stored.length < 16, `${stored.length} stored`);
    for (const i of stored) assert.deepEqual(await store.get(`k${i}`), pattern(PAGE, i));
    assert.deepEqual(readdirSync(dir).filter((n) => n.startsWith(".kvport-tmp")), []);
    // room again after a remove
    await store.remove("k0");
    await store.put("again", pattern(PAGE, 99));
    assert.deepEqual(await store.get("again"), pattern(PAGE, 99));
    await store.close();
  } finally {
    unmount(dir);
    cleanup();
  }
});

test(
  `storage full disk: a pool that does not fit fails at open; a full journal fails the put, not the pool (${IO} io)`,
  {
    skip: tmpfsSkip,
  },
  async () => {
    const { dir, cleanup } = tempDir();
    mountTmpfs(dir, "1m");
    try {
      // refused with the figures before a byte is written
      await assert.rejects(open(dir, { poolSize: 32 }), (e) => {
        assert.ok(e instanceof StorageError && e.code === "NO_SPACE", String(e));
        assert.ok(e.message.includes(dir), e.message);
        assert.match(e.message, /32 slot files of 65536 bytes need 2101248 more bytes/);
        assert.match(e.message, /has \d+ bytes free .*nothing was written/);
        return true;
      });
      assert.deepEqual(readdirSync(dir), []);
      const store = await open(dir, { poolSize: 8 }); // room for a, b and both versions of k0, k1
      try {
        await store.batchedPut(["a", "b"], [pattern(PAGE, 1), pattern(PAGE, 2)]);
        // fill every free byte
        const filler = `${dir}/filler`;
        let size = 0;
        try {
          for (;;) {
            writeFileSync(filler, new Uint8Array(4096), { flag: "a" });
            size += 4096;
          }
        } catch { /* full */ }
        assert.ok(size > 0);
        let err: unknown;
        for (let i = 0; i < 200 && err === undefined; i++) {
          await store.put(`k${i % 2}`, pattern(PAGE, 10 + i)).catch((e) => (err = e));
        }
        assert.ok(err instanceof StorageError, `got ${err}`);
        assert.equal(err.code, "NO_SPACE");
        assert.match(err.message, /writing the pool index/);
        assert.deepEqual(await store.get("a"), pattern(PAGE, 1));
        assert.deepEqual(await store.get("b"), pattern(PAGE, 2));
        rmSync(filler);
        await store.put("c", pattern(PAGE, 3));
        assert.deepEqual(await store.get("c"), pattern(PAGE, 3));
      } finally {
        await store.close();
      }
      const again = await open(dir, { poolSize: 8 });
      try {
        assert.deepEqual(await again.get("a"), pattern(PAGE, 1));
        assert.deepEqual(await again.get("c"), pattern(PAGE, 3));
      } finally {
        await again.close();
      }
    } finally {
      unmount(dir);
      cleanup();
    }
  },
);

/** Makes `dir` refuse new files (chattr +i as root, chmod 0555 otherwise). */
function denyWrites(dir: string): (() => void) | string {
  if (isRoot) {
    const r = spawnSync("chattr", ["+i", dir]);
    if (r.status !== 0) return `chattr +i failed: ${String(r.stderr).trim()}`;
    return () => void spawnSync("chattr", ["-i", dir]);
  }
  spawnSync("chmod", ["0555", dir]);
  return () => void spawnSync("chmod", ["0755", dir]);
}

/** Why writes to a directory cannot be denied here (chattr refused), or undefined. */
const denySkip = (() => {
  const { dir, cleanup } = tempDir();
  try {
    const u = denyWrites(dir);
    if (typeof u === "string") return u;
    u();
    return undefined;
  } finally {
    cleanup();
  }
})();

test(
  `storage permission denied: a clear PERMISSION error at open and at put; stored keys intact (${IO} io)`,
  {
    skip: denySkip,
  },
  async () => {
    const { dir, cleanup } = tempDir();
    const pool = `${dir}/pool`;
    const dyn = `${dir}/dyn`;
    mkdirSync(pool);
    mkdirSync(dyn);
    const undo: (() => void)[] = [];
    try {
      const d = await open(dyn, { poolSize: 0 });
      await d.put("kept", pattern(PAGE, 1));
      for (const target of [pool, dyn]) {
        const u = denyWrites(target);
        if (typeof u === "string") throw new Error(u); // it worked a moment ago (denySkip)
        undo.push(u);
      }
      await assert.rejects(open(pool), (e) => {
        assert.ok(e instanceof StorageError && e.code === "PERMISSION", String(e));
        assert.ok(e.message.includes(pool), e.message);
        assert.match(e.message, /make nixl_path .* writable|writable by this user/i);
        return true;
      });
      await assert.rejects(d.put("new", pattern(PAGE, 2)), (e) => {
        assert.ok(e instanceof StorageError && e.code === "PERMISSION", String(e));
        assert.ok(e.message.includes(dyn), e.message);
        return true;
      });
      assert.deepEqual(await d.get("kept"), pattern(PAGE, 1));
      await d.close();
    } finally {
      for (const u of undo) u();
      cleanup();
    }
  },
);
