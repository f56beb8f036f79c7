// Static pool logic over a node:fs StorageIo (no native library needed): LMCache's
// scenarios, restart persistence, the on-disk index, corruption, concurrency, config.
import assert from "node:assert/strict";
import { readFileSync, writeFileSync } from "node:fs";
import { test } from "node:test";
import {
  NixlStorageBackend,
  type NixlStorageOptions,
  NO_EVICTION_CANDIDATE,
  StorageError,
} from "../src/storage/mod.ts";
import { FsStorageIo } from "./helpers/storage_fs_io.ts";
import { pattern, tempDir } from "./helpers/storage_util.ts";

const PAGE = 8192;

async function open(
  dir: string,
  opts: Partial<NixlStorageOptions> = {},
): Promise<{ store: NixlStorageBackend; io: FsStorageIo }> {
  const pages = Math.ceil((opts.bufferSize ?? PAGE * 8) / PAGE);
  const io = new FsStorageIo(pages * (PAGE + 8192));
  const store = await NixlStorageBackend.create({
    path: dir,
    pageSize: PAGE,
    poolSize: 4,
    bufferSize: PAGE * 8,
    io,
    ...opts,
  });
  return { store, io };
}

test("storage static: round trip gives equal bytes at another address; unknown key is undefined", async () => {
  const { dir, cleanup } = tempDir();
  try {
    const { store } = await open(dir);
    const data = pattern(PAGE, 1);
    assert.deepEqual(await store.put("k1", data), { key: "k1", stored: true, pending: false });
    const got = await store.get("k1");
    assert.ok(got);
    assert.notEqual(got.buffer, data.buffer);
    assert.deepEqual(got, data);
    assert.equal(await store.get("nope"), undefined);
    assert.equal(await store.contains("k1"), true);
    assert.equal(await store.contains("nope"), false);
    const partial = pattern(100, 2);
    await store.put("short", partial);
    assert.deepEqual(await store.get("short"), partial);
    const s = await store.stats();
    assert.equal(s.mode, "static");
    assert.equal(s.used, 2);
    assert.equal(s.bytes, PAGE + 100);
    assert.equal(s.hits, 2);
    assert.equal(s.misses, 1);
    await store.close();
  } finally {
    cleanup();
  }
});

test("storage static: LRU with a pool of 2 respects pin and unpin; a put with nothing evictable says so", async () => {
  const { dir, cleanup } = tempDir();
  try {
    const { store } = await open(dir, { poolSize: 2 });
    await store.put("a", pattern(PAGE, 1));
    await store.put("b", pattern(PAGE, 2));
    assert.ok(store.pin("a"));
    await store.put("c", pattern(PAGE, 3)); // a is pinned and older: b goes
    assert.equal(await store.contains("a"), true);
    assert.equal(await store.contains("b"), false);
    assert.equal(await store.contains("c"), true);
    assert.ok(store.pin("c"));
    const dropped = await store.put("d", pattern(PAGE, 4));
    assert.deepEqual(dropped, {
      key: "d",
      stored: false,
      pending: false,
      reason: NO_EVICTION_CANDIDATE,
    });
    assert.equal(await store.contains("d"), false);
    assert.ok(store.unpin("a"));
    assert.equal((await store.put("d", pattern(PAGE, 4))).stored, true); // a goes now
    assert.equal(await store.contains("a"), false);
    assert.deepEqual(await store.get("c"), pattern(PAGE, 3));
    assert.deepEqual(await store.get("d"), pattern(PAGE, 4));
    assert.equal(store.pin("zz"), false);
    assert.equal(store.unpin("zz"), false);
    // contains(key, { pin: true }) pins what it finds (LMCache's contains(key, pin=True))
    assert.ok(store.unpin("c"));
    assert.equal(await store.batchedContains(["c", "d"], { pin: true }), 2);
    assert.equal((await store.put("e", pattern(PAGE, 5))).stored, false);
    const s = await store.stats();
    assert.equal(s.pinned, 2);
    assert.equal(s.dropped, 2);
    assert.equal(s.evictions, 2);
    await store.close();
  } finally {
    cleanup();
  }
});

test("storage static: a batch put is one transfer request; a batch get too; partial drops keep the prefix", async () => {
  const { dir, cleanup } = tempDir();
  try {
    const { store, io } = await open(dir, { poolSize: 6 });
    const keys = ["k0", "k1", "k2", "k3", "k4"];
    const data = keys.map((_, i) => pattern(PAGE - i, i));
    const r = await store.batchedPut(keys, data);
    assert.ok(r.every((x) => x.stored));
    assert.deepEqual(io.batches, [{ op: "WRITE", count: 5 }]);
    const got = await store.batchedGet([...keys, "missing"]);
    assert.deepEqual(io.batches.at(-1), { op: "READ", count: 5 });
    assert.deepEqual(got.slice(0, 5), data);
    assert.equal(got[5], undefined);
    assert.equal(await store.batchedContains(["k0", "k1", "x", "k2"]), 2);
    // 3 more keys, 1 free slot, everything else pinned: the first one is stored
    for (const k of keys) store.pin(k);
    const r2 = await store.batchedPut(["n0", "n1", "n2"], [data[0], data[1], data[2]]);
    assert.deepEqual(r2.map((x) => x.stored), [true, false, false]);
    assert.equal(r2[1].reason, NO_EVICTION_CANDIDATE);
    // duplicate keys in one batch: the last one wins
    const r3 = await store.batchedPut(["n0", "n0"], [data[3], data[4]]);
    assert.equal(r3[0].stored, false);
    assert.match(r3[0].reason!, /later item/);
    assert.equal(r3[1].stored, true);
    assert.deepEqual(await store.get("n0"), data[4]);
    await store.close();
  } finally {
    cleanup();
  }
});

test("storage static: the pool survives close and reopen (stable names, same bytes, LRU by put order)", async () => {
  const { dir, cleanup } = tempDir();
  try {
    const a = await open(dir);
    await a.store.batchedPut(["x", "y", "z"], [pattern(PAGE, 1), pattern(10, 2), pattern(PAGE, 3)]);
    await a.store.remove("y");
    await a.store.put("x", pattern(PAGE, 4)); // replaced: x is now the newest
    await a.store.close();
    assert.deepEqual(
      (await import("node:fs")).readdirSync(dir).sort(),
      [".kvport-index", "obj_0.bin", "obj_1.bin", "obj_2.bin", "obj_3.bin"],
    );
    const b = await open(dir);
    assert.deepEqual(await b.store.keys(), ["z", "x"]);
    assert.deepEqual(await b.store.get("x"), pattern(PAGE, 4));
    assert.deepEqual(await b.store.get("z"), pattern(PAGE, 3));
    assert.equal(await b.store.get("y"), undefined);
    assert.deepEqual(b.store.warnings, []);
    // pageSize may be left out: the pool records it
    await b.store.close();
    const io = new FsStorageIo(8 * PAGE);
    const c = await NixlStorageBackend.create({ path: dir, poolSize: 4, io });
    assert.equal(c.pageSize, PAGE);
    assert.deepEqual(await c.get("z"), pattern(PAGE, 3));
    await c.close();
    // a different chunk size is refused, naming both
    await assert.rejects(open(dir, { pageSize: PAGE * 2 }), (e) => {
      assert.ok(e instanceof StorageError && e.code === "CONFIG");
      assert.match(e.message, /8192.*16384/s);
      return true;
    });
    // a larger pool keeps every key
    const d = await open(dir, { poolSize: 8 });
    assert.deepEqual((await d.store.keys()).sort(), ["x", "z"]);
    assert.equal((await d.store.stats()).slots, 8);
    await d.store.close();
  } finally {
    cleanup();
  }
});

test("storage static: one process at a time per pool (a second open is LOCKED)", async () => {
  const { dir, cleanup } = tempDir();
  try {
    const a = await open(dir);
    await assert.rejects(open(dir), (e) => {
      assert.ok(e instanceof StorageError && e.code === "LOCKED");
      assert.match(e.message, /already open here/);
      return true;
    });
    await a.store.close();
    const b = await open(dir);
    await b.store.close();
  } finally {
    cleanup();
  }
});

test("storage static: damaged chunk data is a miss with a warning, never wrong bytes", async () => {
  const { dir, cleanup } = tempDir();
  try {
    const a = await open(dir);
    await a.store.batchedPut(["good", "bad"], [pattern(PAGE, 1), pattern(PAGE, 2)]);
    await a.store.close();
    const slot = readFileSync(`${dir}/obj_1.bin`);
    slot[123] ^= 0xff;
    writeFileSync(`${dir}/obj_1.bin`, slot);
    const b = await open(dir);
    assert.deepEqual(await b.store.get("good"), pattern(PAGE, 1));
    assert.equal(await b.store.get("bad"), undefined);
    assert.equal(await b.store.contains("bad"), false);
    assert.equal((await b.store.stats()).corrupt, 1);
    assert.match(b.store.warnings.join("\n"), /"bad".*obj_1\.bin.*failed its checksum/);
    await b.store.close();
  } finally {
    cleanup();
  }
});

test("storage static: a failed transfer throws, frees its slots and loses nothing stored", async () => {
  const { dir, cleanup } = tempDir();
  try {
    const { store, io } = await open(dir, { poolSize: 2 });
    await store.put("keep", pattern(PAGE, 1));
    io.failNext = new Error("ENOSPC: no space left on device");
    await assert.rejects(store.put("lost", pattern(PAGE, 2)), (e) => {
      assert.ok(e instanceof StorageError);
      assert.equal(e.code, "NO_SPACE");
      assert.match(e.message, new RegExp(`storing 1 chunk\\(s\\) in the pool at ${dir}`));
      return true;
    });
    assert.equal(await store.contains("lost"), false);
    assert.deepEqual(await store.get("keep"), pattern(PAGE, 1));
    // both slots usable again
    const r = await store.batchedPut(["p", "q"], [pattern(PAGE, 3), pattern(PAGE, 4)]);
    assert.deepEqual(r.map((x) => x.stored), [true, true]); // keep is evicted for q
    await store.close();
  } finally {
    cleanup();
  }
});

test("storage static: concurrent puts and gets (Promise.all) with fewer staging pages than chunks", async () => {
  const { dir, cleanup } = tempDir();
  try {
    const { store } = await open(dir, { poolSize: 32, bufferSize: PAGE * 3 });
    assert.equal(store.stagingPages, 3);
    const keys = Array.from({ length: 24 }, (_, i) => `c${i}`);
    const results = await Promise.all(keys.map((k, i) => store.put(k, pattern(PAGE, i))));
    assert.ok(results.every((r) => r.stored));
    const reads = await Promise.all(keys.map((k) => store.get(k)));
    reads.forEach((r, i) => assert.deepEqual(r, pattern(PAGE, i)));
    // mixed: overwrite half while reading the other half
    await Promise.all(
      keys.map((k, i) =>
        i % 2 ? store.put(k, pattern(PAGE, 100 + i)) : store.get(k).then((r) => {
          assert.deepEqual(r, pattern(PAGE, i));
        })
      ),
    );
    for (let i = 1; i < 24; i += 2) {
      assert.deepEqual(await store.get(keys[i]), pattern(PAGE, 100 + i));
    }
    // a batch larger than the staging buffer goes in buffer-fulls
    const big = await store.batchedGet(keys);
    assert.equal(big.filter((x) => x).length, 24);
    await store.close();
  } finally {
    cleanup();
  }
});

test("storage static: zero-copy pages: allocatePages + batchedPut, getPages views", async () => {
  const { dir, cleanup } = tempDir();
  try {
    const { store } = await open(dir);
    const [p0, p1] = await store.allocatePages(2);
    p0.bytes.set(pattern(PAGE, 7));
    p1.bytes.set(pattern(PAGE, 8));
    await store.batchedPut(["z0", "z1"], [p0.bytes, p1.bytes.subarray(0, 500)]);
    p0.release();
    p1.release();
    const pages = await store.getPages(["z0", "z1", "none"]);
    assert.deepEqual(pages[0]!.bytes, pattern(PAGE, 7));
    assert.deepEqual(pages[1]!.bytes, pattern(PAGE, 8).subarray(0, 500));
    assert.equal(pages[2], undefined);
    for (const p of pages) p?.release();
    await assert.rejects(store.getPages(Array(9).fill("z0")), /staging buffer has 8 pages/);
    await store.close();
  } finally {
    cleanup();
  }
});

test("storage static: errors name the key and the sizes; a closed backend refuses work", async () => {
  const { dir, cleanup } = tempDir();
  try {
    const { store } = await open(dir);
    await assert.rejects(
      store.put("k", new Uint8Array(PAGE + 1)),
      /8193 bytes, a chunk holds at most 8192/,
    );
    await assert.rejects(store.put("", new Uint8Array(1)), /Keys must be 1\.\./);
    await assert.rejects(store.batchedPut(["a"], []), /1 keys but 0 chunks/);
    await store.close();
    await store.close(); // idempotent
    await assert.rejects(store.get("k"), (e) => e instanceof StorageError && e.code === "CLOSED");
  } finally {
    cleanup();
  }
});

test("storage static: the index journal is compacted as it grows and reopens the same", async () => {
  const { dir, cleanup } = tempDir();
  try {
    const { store } = await open(dir, { poolSize: 4, compactMinBytes: 2048 });
    for (let i = 0; i < 200; i++) await store.put(`key-${i % 6}`, pattern(64, i));
    const s = await store.stats();
    assert.ok((s.details.compactions as number) >= 1);
    assert.ok((s.details.journalBytes as number) < 4096);
    const keys = await store.keys();
    await store.close();
    const b = await open(dir, { poolSize: 4 });
    assert.deepEqual((await b.store.keys()).sort(), [...keys].sort());
    for (let i = 196; i < 200; i++) {
      assert.deepEqual(await b.store.get(`key-${i % 6}`), pattern(64, i));
    }
    await b.store.close();
  } finally {
    cleanup();
  }
});

test("storage static: use_direct_io refused by the file system is a warning, not an error", async () => {
  const { dir, cleanup } = tempDir();
  try {
    const { store } = await open(dir, { useDirectIo: true }); // the node:fs io never grants it
    assert.match(
      store.warnings.join("\n"),
      /use_direct_io: the file system of .* refused O_DIRECT; slot files use buffered I\/O/,
    );
    assert.equal((await store.stats()).direct, false);
    await store.put("k", pattern(PAGE, 1));
    assert.deepEqual(await store.get("k"), pattern(PAGE, 1));
    await store.close();
  } finally {
    cleanup();
  }
});

test("storage static: verifyReads 'always' checks every read, even of chunks written in this session", async () => {
  const { dir, cleanup } = tempDir();
  try {
    const { store } = await open(dir, { verifyReads: "always" });
    await store.put("k", pattern(PAGE, 1));
    const slot = readFileSync(`${dir}/obj_0.bin`);
    slot[5] ^= 1;
    writeFileSync(`${dir}/obj_0.bin`, slot);
    assert.equal(await store.get("k"), undefined);
    assert.equal((await store.stats()).corrupt, 1);
    await store.close();
  } finally {
    cleanup();
  }
});

test("storage static: a caller holding every staging page gets a BUSY error, not a hang", async () => {
  const { dir, cleanup } = tempDir();
  try {
    const { store } = await open(dir, { bufferSize: 2 * PAGE, timeoutMs: 50 });
    await store.put("k", pattern(PAGE, 1));
    const held = await store.allocatePages(2);
    await assert.rejects(store.get("k"), (e) => {
      assert.ok(e instanceof StorageError && e.code === "BUSY", String(e));
      assert.match(e.message, /the caller holds 2 of 2/);
      return true;
    });
    for (const p of held) p.release();
    assert.deepEqual(await store.get("k"), pattern(PAGE, 1));
    await store.close();
  } finally {
    cleanup();
  }
});
