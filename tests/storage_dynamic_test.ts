// Dynamic mode (one file per key) over a node:fs StorageIo, and config-driven construction.
import assert from "node:assert/strict";
import { existsSync, readdirSync, readFileSync, statSync, writeFileSync } from "node:fs";
import { test } from "node:test";
import {
  NixlStorageBackend,
  type NixlStorageOptions,
  objectName,
  StorageError,
  storageOptionsFromConfig,
} from "../src/storage/mod.ts";
import { FsStorageIo } from "./helpers/storage_fs_io.ts";
import { pattern, tempDir } from "./helpers/storage_util.ts";

const PAGE = 5000; // not a multiple of 4096: the data part of a file is 8192 bytes

async function open(dir: string, opts: Partial<NixlStorageOptions> = {}) {
  const io = new FsStorageIo(16 * (8192 + 4096));
  const store = await NixlStorageBackend.create({
    path: dir,
    pageSize: PAGE,
    poolSize: 0,
    bufferSize: PAGE * 16,
    io,
    ...opts,
  });
  return { store, io };
}

test("storage dynamic: one file per key, LMCache's name, round trip, unknown key undefined", async () => {
  const { dir, cleanup } = tempDir();
  try {
    const { store, io } = await open(dir);
    assert.equal(store.mode, "dynamic");
    const key = "vllm@model/x@1@0@abc@bfloat16";
    await store.put(key, pattern(PAGE, 1));
    const name = objectName(key);
    assert.equal(name, "vllm_model_x_1_0_abc_bfloat16");
    assert.equal(statSync(`${dir}/${name}`).size, 8192 + 4096);
    // LMCache reading page_size bytes from offset 0 sees the chunk
    assert.deepEqual(
      new Uint8Array(readFileSync(`${dir}/${name}`)).subarray(0, PAGE),
      pattern(PAGE, 1),
    );
    assert.deepEqual(await store.get(key), pattern(PAGE, 1));
    assert.equal(await store.get("nope"), undefined);
    await store.batchedPut(["a", "b", "c"], [pattern(10, 2), pattern(PAGE, 3), pattern(1, 4)]);
    assert.deepEqual(io.batches.filter((b) => b.op === "WRITE").map((b) => b.count), [1, 3]);
    assert.deepEqual(await store.batchedGet(["a", "b", "c", "d"]), [
      pattern(10, 2),
      pattern(PAGE, 3),
      pattern(1, 4),
      undefined,
    ]);
    assert.deepEqual((await store.keys()).sort(), ["a", "b", "c", key].sort());
    assert.equal(await store.remove("b"), true);
    assert.equal(await store.remove("b"), false);
    assert.equal(await store.get("b"), undefined);
    assert.equal(store.pin("a"), false); // nothing is ever evicted in dynamic mode
    const s = await store.stats();
    assert.equal(s.used, 3);
    assert.equal(s.slots, null);
    assert.equal(s.bytes, PAGE + 10 + 1);
    // no temporary file is left behind
    assert.deepEqual(readdirSync(dir).filter((n) => n.startsWith(".kvport-tmp")), []);
    await store.close();
    // reopen: the files are the storage
    const b = await open(dir);
    assert.deepEqual(await b.store.get(key), pattern(PAGE, 1));
    await b.store.close();
  } finally {
    cleanup();
  }
});

test("storage dynamic: contains checks 16 keys at a time and stops at the first miss", async () => {
  const { dir, cleanup } = tempDir();
  try {
    const { store } = await open(dir);
    const keys = Array.from({ length: 40 }, (_, i) => `k${i}`);
    await store.batchedPut(keys.slice(0, 10), keys.slice(0, 10).map((_, i) => pattern(8, i)));
    await store.batchedPut(keys.slice(20, 36), keys.slice(20, 36).map((_, i) => pattern(8, i)));
    const dyn =
      () => (store as unknown as { stats(): Promise<{ details: { fileChecks: number } }> });
    const before = (await dyn().stats()).details.fileChecks;
    assert.equal(await store.batchedContains(keys), 10); // k10 is missing
    const checks = (await dyn().stats()).details.fileChecks - before;
    assert.equal(checks, 16); // one batch of 16, never the 24 keys after it
    assert.equal(await store.batchedContains(keys.slice(20)), 16);
    assert.equal(await store.batchedContains([]), 0);
    assert.equal(await store.contains("k3"), true);
    assert.equal(await store.contains("k13"), false);
    await store.close();
  } finally {
    cleanup();
  }
});

test("storage dynamic: the presence cache answers repeated lookups without the file system", async () => {
  const { dir, cleanup } = tempDir();
  try {
    const { store } = await open(dir, { presenceCache: true });
    await store.batchedPut(["a", "b"], [pattern(8, 1), pattern(8, 2)]);
    const checks = async () => (await store.stats()).details.fileChecks as number;
    const c0 = await checks();
    for (let i = 0; i < 5; i++) assert.equal(await store.batchedContains(["a", "b"]), 2);
    assert.equal(await checks(), c0); // all from the cache
    assert.equal((await store.stats()).details.presenceCached, 2);
    await store.remove("a");
    assert.equal(await store.contains("a"), false);
    await store.close();
    // presence-cache-only: a key put by another process is not seen until read
    const b = await open(dir, { presenceCache: true, presenceCacheOnly: true });
    assert.equal(await b.store.contains("b"), false);
    assert.deepEqual(await b.store.get("b"), pattern(8, 2));
    assert.equal(await b.store.contains("b"), true);
    await b.store.close();
  } finally {
    cleanup();
  }
});

test("storage dynamic: asynchronous put returns at once, flush waits; contains is false meanwhile, get waits", async () => {
  const { dir, cleanup } = tempDir();
  try {
    const { store, io } = await open(dir, { asyncPut: true });
    let openGate = () => {};
    io.writeGate = new Promise<void>((resolve) => openGate = resolve); // hold the write
    const r = await store.put("a", pattern(PAGE, 1));
    assert.deepEqual(r, { key: "a", stored: false, pending: true });
    assert.equal(await store.contains("a"), false); // still writing (as LMCache)
    assert.equal((await store.stats()).pendingPuts, 1);
    io.writeGate = undefined;
    openGate();
    assert.deepEqual(await store.get("a"), pattern(PAGE, 1)); // read-your-writes
    await store.batchedPut(["b", "c"], [pattern(PAGE, 2), pattern(PAGE, 3)]);
    await store.flush();
    assert.equal(await store.batchedContains(["a", "b", "c"]), 3);
    // a failing background put is reported by flush
    io.failNext = new Error("EIO: i/o error");
    assert.equal((await store.put("d", pattern(PAGE, 4))).pending, true);
    await assert.rejects(store.flush(), (e) => {
      assert.ok(e instanceof AggregateError);
      assert.match(e.message, /1 asynchronous put\(s\) failed/);
      return true;
    });
    assert.equal(await store.contains("d"), false);
    await store.flush(); // errors are reported once
    // the caller's buffer may be reused at once: data was copied
    const buf = pattern(PAGE, 5);
    await store.put("e", buf);
    buf.fill(0);
    await store.close(); // close flushes
    const b = await open(dir);
    assert.deepEqual(await b.store.get("e"), pattern(PAGE, 5));
    await b.store.close();
  } finally {
    cleanup();
  }
});

test("storage dynamic: names that collide (a@b, a_b) never return the other key's bytes", async () => {
  const { dir, cleanup } = tempDir();
  try {
    const { store } = await open(dir);
    await store.put("a@b", pattern(64, 1));
    await store.put("a_b", pattern(64, 2)); // same file name: replaces it
    assert.equal(await store.get("a@b"), undefined);
    assert.deepEqual(await store.get("a_b"), pattern(64, 2));
    // a damaged file is a miss with a warning
    const path = `${dir}/${objectName("a_b")}`;
    const bytes = readFileSync(path);
    bytes[3] ^= 1;
    writeFileSync(path, bytes);
    assert.equal(await store.get("a_b"), undefined);
    assert.match(store.warnings.join("\n"), /damaged \(data checksum\)/);
    // long keys get length-safe names
    const long = "x".repeat(1000);
    await store.put(long, pattern(8, 3));
    assert.deepEqual(await store.get(long), pattern(8, 3));
    await store.close();
  } finally {
    cleanup();
  }
});

test("storage dynamic: a stale temporary file of a dead process is removed on open", async () => {
  const { dir, cleanup } = tempDir();
  try {
    const a = await open(dir);
    await a.store.close();
    const host = (await import("node:os")).hostname().replace(/[^A-Za-z0-9.]/g, "_");
    writeFileSync(`${dir}/.kvport-tmp-${host}-999999-0`, "torn");
    writeFileSync(`${dir}/.kvport-tmp-otherhost-999999-0`, "not ours to judge");
    const b = await open(dir);
    assert.equal(existsSync(`${dir}/.kvport-tmp-${host}-999999-0`), false);
    assert.equal(existsSync(`${dir}/.kvport-tmp-otherhost-999999-0`), true);
    await assert.rejects(open(dir, { pageSize: 4096 }), /holds chunks of 5000 bytes/);
    await b.store.close();
  } finally {
    cleanup();
  }
});

const base = {
  nixl_buffer_size: 4 * PAGE,
  nixl_buffer_device: "cpu",
  save_unfull_chunk: false,
  extra_config: {
    enable_nixl_storage: true,
    nixl_backend: "POSIX",
    nixl_pool_size: 8,
    nixl_path: "/tmp/x",
  },
};

test("storage config: extra_config maps to options; fromConfig builds the backend", async () => {
  const opts = storageOptionsFromConfig(
    {
      ...base,
      extra_config: {
        ...base.extra_config,
        use_direct_io: true,
        nixl_presence_cache: true,
        nixl_async_put: true,
        nixl_backend_params: { a: "1", b: 2 },
      },
    },
    { pageSize: PAGE },
  );
  assert.equal(opts.poolSize, 8);
  assert.equal(opts.bufferSize, 4 * PAGE);
  assert.equal(opts.backend, "POSIX");
  assert.equal(opts.path, "/tmp/x");
  assert.equal(opts.useDirectIo, true);
  assert.equal(opts.presenceCache, true);
  assert.equal(opts.asyncPut, true);
  assert.deepEqual(opts.backendParams, { a: "1", b: "2" });
  assert.equal(opts.pageSize, PAGE);

  const { dir, cleanup } = tempDir();
  try {
    const io = new FsStorageIo(16 * 8192);
    const store = await NixlStorageBackend.fromConfig(
      {
        ...base,
        nixl_buffer_size: 3 * PAGE + 1,
        extra_config: { ...base.extra_config, nixl_path: dir },
      },
      { pageSize: PAGE, io },
    );
    assert.equal(store.mode, "static");
    assert.equal(store.stagingPages, 4); // rounded up, with a warning
    assert.match(store.warnings[0], /not a multiple of the chunk size 5000: rounded up to 20000/);
    await store.put("k", pattern(PAGE, 1));
    assert.deepEqual(await store.get("k"), pattern(PAGE, 1));
    await store.close();
  } finally {
    cleanup();
  }
});

test("storage config: every problem at once, naming the key; backend/device pairs as LMCache", async () => {
  try {
    storageOptionsFromConfig({
      nixl_buffer_size: null,
      nixl_buffer_device: "cuda:0",
      extra_config: {
        enable_nixl_storage: false,
        nixl_backend: "POSIX",
        nixl_pool_size: -1,
        use_direct_io: "yes",
      },
    });
    assert.fail("no error");
  } catch (e) {
    assert.ok(e instanceof StorageError && e.code === "CONFIG");
    const m = e.message;
    assert.match(m, /enable_nixl_storage is false/);
    assert.match(m, /nixl_pool_size is -1/);
    assert.match(m, /nixl_buffer_size is null/);
    assert.match(m, /POSIX takes cpu buffers only, got "cuda:0"/);
    assert.match(m, /nixl_path is null: the POSIX backend stores files there/);
    assert.match(m, /use_direct_io is "yes": expected true or false/);
  }
  assert.throws(
    () =>
      storageOptionsFromConfig({
        ...base,
        extra_config: { ...base.extra_config, nixl_backend: "NFS" },
      }),
    /nixl_backend is "NFS": expected one of GDS, GDS_MT, POSIX, HF3FS, OBJ, AZURE_BLOB/,
  );
  assert.throws(
    () =>
      storageOptionsFromConfig({
        ...base,
        save_unfull_chunk: true,
        extra_config: { ...base.extra_config, nixl_pool_size: 0 },
      }),
    /save_unfull_chunk is true/,
  );
  // OBJ needs no path; GDS takes cuda
  const obj = storageOptionsFromConfig({
    ...base,
    nixl_buffer_device: "cuda:1",
    extra_config: { enable_nixl_storage: true, nixl_backend: "OBJ", nixl_pool_size: 0 },
  });
  assert.equal(obj.backend, "OBJ");
  const { checkBackendDevice } = await import("../src/storage/mod.ts");
  const ok: [string, string][] = [
    ["GDS", "cpu"],
    ["GDS", "cuda"],
    ["GDS_MT", "cuda:3"],
    ["POSIX", "cpu"],
    ["HF3FS", "cpu"],
    ["OBJ", "cpu"],
    ["OBJ", "cuda"],
  ];
  for (const [b, d] of ok) assert.equal(checkBackendDevice(b, d), undefined, `${b}/${d}`);
  for (
    const [b, d] of [["POSIX", "cuda"], ["HF3FS", "cuda:0"], ["INVALID", "cpu"], ["GDS", "gpu"]]
  ) {
    assert.ok(checkBackendDevice(b, d), `${b}/${d}`);
  }
  // a missing chunk size for a fresh directory is a clear error
  const { dir, cleanup } = tempDir();
  try {
    await assert.rejects(
      NixlStorageBackend.fromConfig(
        { ...base, extra_config: { ...base.extra_config, nixl_path: dir } },
        { io: new FsStorageIo(8192) },
      ),
      /no chunk size given and .* holds no static storage yet.*Pass pageSize/s,
    );
  } finally {
    cleanup();
  }
});

test("storage config: loadConfig output drives the backend (YAML keys as LMCache writes them)", async () => {
  const { loadConfig } = await import("../src/config/mod.ts");
  const { dir, cleanup } = tempDir();
  try {
    const { config } = loadConfig({
      env: {},
      overrides: {
        nixl_buffer_size: 4 * PAGE,
        nixl_buffer_device: "cpu",
        extra_config: {
          enable_nixl_storage: true,
          nixl_backend: "POSIX",
          nixl_pool_size: 0,
          nixl_path: dir,
          nixl_presence_cache: true,
        },
      },
    });
    const store = await NixlStorageBackend.fromConfig(config, {
      pageSize: PAGE,
      io: new FsStorageIo(4 * (8192 + 4096)),
    });
    assert.equal(store.mode, "dynamic");
    await store.put("k", pattern(PAGE, 9));
    assert.deepEqual(await store.get("k"), pattern(PAGE, 9));
    await store.close();
  } finally {
    cleanup();
  }
});
