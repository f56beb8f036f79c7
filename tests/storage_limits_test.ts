// A static pool against the machine's limits: free disk space (a pool that does not fit is
// refused with the figures before a byte is written), the open-file limit (a pool of
// 2,000 and 10,000 slots under `ulimit -n 256` keeps its descriptors bounded; a create
// that runs out of descriptors removes what it created and says which limit to raise).
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { existsSync, mkdirSync, readdirSync, statfsSync } from "node:fs";
import process from "node:process";
import { NixlStorageBackend, type NixlStorageOptions, StorageError } from "../src/storage/mod.ts";
import { nativeSkip } from "./helpers/agent_pair.ts";
import { test } from "./helpers/skip.ts";
import { FsStorageIo } from "./helpers/storage_fs_io.ts";
import { pattern, tempDir } from "./helpers/storage_util.ts";

const PAGE = 8192;

function open(dir: string, io: FsStorageIo, opts: Partial<NixlStorageOptions> = {}) {
  return NixlStorageBackend.create({
    path: dir,
    pageSize: PAGE,
    poolSize: 4,
    bufferSize: PAGE * 4,
    io,
    ...opts,
  });
}

const newIo = (page = PAGE) => new FsStorageIo(4 * (page + 8192));

test("storage limits: a pool larger than the free disk space is refused with the figures, before a byte is written", async () => {
  const { dir, cleanup } = tempDir();
  try {
    const s = statfsSync(dir);
    const free = Number(s.bavail) * Number(s.bsize);
    const slotBytes = 1 << 20;
    const poolSize = Math.ceil((2 * free) / slotBytes);
    const pool = `${dir}/pool`;
    const started = Date.now();
    await assert.rejects(open(pool, newIo(slotBytes), { pageSize: slotBytes, poolSize }), (e) => {
      assert.ok(e instanceof StorageError, String(e));
      assert.equal(e.code, "NO_SPACE");
      assert.ok(e.message.includes(pool), e.message);
      const needed = poolSize * slotBytes + 4096; // every slot, and the index
      assert.ok(
        e.message.includes(
          `${poolSize} slot files of ${slotBytes} bytes need ${needed} more bytes`,
        ),
        e.message,
      );
      const m = /has (\d+) bytes free/.exec(e.message);
      assert.ok(m, e.message);
      assert.ok(Math.abs(Number(m[1]) - free) < free * 0.05 + (64 << 20), `${m[1]} vs ${free}`);
      assert.match(e.message, /nothing was written/);
      assert.match(e.fix ?? "", /Lower nixl_pool_size \(about \d+ slots of this size fit now\)/);
      return true;
    });
    assert.ok(Date.now() - started < 5000, "refused at once, not after allocating");
    assert.equal(existsSync(pool), false, "not even the directory is left");
    // an existing pool asked to grow past the free space: refused, and left as it was
    const io = newIo();
    const small = await open(pool, io);
    await small.put("k", pattern(PAGE, 1));
    await small.close();
    const before = readdirSync(pool).sort();
    await assert.rejects(open(pool, newIo(), { poolSize: Math.ceil((2 * free) / PAGE) }), (e) => {
      assert.ok(e instanceof StorageError && e.code === "NO_SPACE", String(e));
      return true;
    });
    assert.deepEqual(readdirSync(pool).sort(), before);
    const again = await open(pool, newIo());
    assert.deepEqual(await again.get("k"), pattern(PAGE, 1));
    await again.close();
  } finally {
    cleanup();
  }
});

test("storage limits: a create that runs out of descriptors removes what it created and names the limit to raise", async () => {
  const { dir, cleanup } = tempDir();
  try {
    // a new pool: nothing of it is left, not even its directory
    const pool = `${dir}/new`;
    const io = newIo();
    io.opensLeft = 5;
    await assert.rejects(open(pool, io, { poolSize: 20 }), (e) => {
      assert.ok(e instanceof StorageError, String(e));
      assert.equal(e.code, "TOO_MANY_FILES");
      assert.match(e.message, /creating slot file 5 of 20 at .*obj_5\.bin: EMFILE/);
      assert.match(e.fix ?? "", /RLIMIT_NOFILE \(now: soft \d+, hard \d+\): raise it \(`ulimit -n/);
      assert.match(e.fix ?? "", /maxOpenFiles/);
      return true;
    });
    assert.equal(existsSync(pool), false);
    assert.deepEqual(io.openFiles.size, 0);
    // an existing pool that grows: the new slot files go, the old pool stays whole
    mkdirSync(`${dir}/old`);
    const old = `${dir}/old/pool`;
    const a = await open(old, newIo());
    await a.batchedPut(["x", "y"], [pattern(PAGE, 1), pattern(PAGE, 2)]);
    await a.close();
    const before = readdirSync(old).sort();
    const io2 = newIo();
    io2.opensLeft = 3;
    await assert.rejects(open(old, io2, { poolSize: 12 }), /TOO_MANY_FILES|open files/i);
    assert.deepEqual(readdirSync(old).sort(), before);
    const b = await open(old, newIo());
    assert.deepEqual(await b.batchedGet(["x", "y"]), [pattern(PAGE, 1), pattern(PAGE, 2)]);
    assert.deepEqual(b.warnings, []);
    await b.close();
  } finally {
    cleanup();
  }
});

test("storage limits: slot files are opened on demand, at most maxOpenFiles kept between transfers", async () => {
  const { dir, cleanup } = tempDir();
  try {
    const io = newIo();
    const store = await open(dir, io, { poolSize: 40, maxOpenFiles: 6 });
    const keys = Array.from({ length: 40 }, (_, i) => `k${i}`);
    for (let i = 0; i < 40; i += 4) {
      await store.batchedPut(
        keys.slice(i, i + 4),
        keys.slice(i, i + 4).map((_, j) => pattern(PAGE, i + j)),
      );
      assert.ok(io.openFiles.size <= 6, `${io.openFiles.size} files open`);
    }
    const got = await store.batchedGet(keys);
    got.forEach((g, i) => assert.deepEqual(g, pattern(PAGE, i), keys[i]));
    const s = await store.stats();
    assert.equal(s.details.maxOpenFiles, 6);
    assert.ok((s.details.openFiles as number) <= 6);
    assert.ok((s.details.fileOpens as number) >= 40, "each slot was opened at least once");
    assert.ok(io.openFiles.size <= 6);
    await store.close();
    assert.equal(io.openFiles.size, 0, "close closes every slot file");
    assert.equal(io.registered.size, 0, "and deregisters it first");
    await assert.rejects(
      open(dir, newIo(), { maxOpenFiles: 0 }),
      /maxOpenFiles 0: expected an integer >= 1/,
    );
  } finally {
    cleanup();
  }
});

/** Runs tests/helpers/storage_fd_child.ts under `ulimit -n <limit>` and parses its line. */
function fdChild(limit: number, args: Record<string, unknown>): Record<string, unknown> {
  const script = new URL("./helpers/storage_fd_child.ts", import.meta.url).pathname;
  const isDeno = typeof (globalThis as { Deno?: unknown }).Deno !== "undefined";
  const runtime = isDeno ? [process.execPath, "run", "-A", script] : [process.execPath, script];
  const r = spawnSync(
    "bash",
    ["-c", `ulimit -n ${limit} && exec "$@"`, "bash", ...runtime, JSON.stringify(args)],
    { encoding: "utf8", timeout: 300_000 },
  );
  const line = r.stdout.trim().split("\n").at(-1) ?? "";
  assert.ok(line.startsWith("{"), `child (exit ${r.status}): ${r.stdout}\n${r.stderr}`);
  return JSON.parse(line);
}

/** A directory on tmpfs when there is one: fdatasync of 10,000 files is then free. */
function fastTemp() {
  return existsSync("/dev/shm") ? tempDir("kvport-fd-", "/dev/shm") : tempDir("kvport-fd-");
}

for (const slots of [2_000, 10_000]) {
  test(
    `storage limits: ${slots} slots under ulimit -n 256 create, write, reopen and read back every byte with bounded descriptors`,
    {
      skip: nativeSkip,
      timeout: 300_000,
    },
    () => {
      const { dir, cleanup } = fastTemp();
      try {
        const r = fdChild(256, { dir: `${dir}/pool`, poolSize: slots, pageSize: 4096 });
        assert.equal(r.ok, true, JSON.stringify(r));
        assert.equal(r.used, slots);
        assert.equal(r.checked, slots, "every key read back with its own bytes");
        assert.equal(r.corrupt, 0);
        // the cache: a quarter of the limit (at least the staging pages), reused many times
        assert.equal(r.maxOpenFiles, Math.max(r.stagingPages as number, 64));
        assert.ok((r.openFiles as number) <= (r.maxOpenFiles as number));
        assert.ok((r.fileOpens as number) >= slots);
        // bounded: the cache, one sync descriptor per slot of a batch, the index, slack
        const bound = (r.maxOpenFiles as number) + (r.stagingPages as number) + 16;
        assert.ok((r.maxFds as number) - (r.base as number) <= bound, JSON.stringify(r));
        assert.ok((r.after as number) - (r.base as number) <= 8, `left open: ${JSON.stringify(r)}`);
      } finally {
        cleanup();
      }
    },
  );
}

test(
  "storage limits: a batch that cannot get its descriptors fails with TOO_MANY_FILES naming the limit",
  {
    skip: nativeSkip,
  },
  () => {
    const { dir, cleanup } = fastTemp();
    try {
      // 64 keys in one transfer need 64 slot files open at once: more than 60 descriptors
      const r = fdChild(60, {
        dir: `${dir}/pool`,
        poolSize: 200,
        pageSize: 4096,
        maxOpenFiles: 64,
      });
      assert.equal(r.ok, false, JSON.stringify(r));
      assert.equal(r.code, "TOO_MANY_FILES", JSON.stringify(r));
      assert.match(r.message as string, /RLIMIT_NOFILE \(now: soft 60, hard \d+\)/);
      assert.match(r.message as string, /ulimit -n/);
    } finally {
      cleanup();
    }
  },
);
