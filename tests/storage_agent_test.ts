// NixlStorageBackend over its real data path: an agent (builtin engine, POSIX backend),
// a registered DRAM staging buffer, FILE segments opened by the shim. Skipped with a line
// saying why when libkvport.so is not built.
import assert from "node:assert/strict";
import { statSync } from "node:fs";
import { describe, test } from "./helpers/skip.ts";
import { nativeLibrary } from "../src/agent.ts";
import {
  NixlStorageBackend,
  type NixlStorageOptions,
  NO_EVICTION_CANDIDATE,
  StorageError,
} from "../src/storage/mod.ts";
import { pattern, tempDir } from "./helpers/storage_util.ts";
import { metricsRegistry } from "../src/metrics/registry.ts";
import { sumOf } from "../src/metrics/snapshot.ts";

/** Posts of every agent of the default registry that completed inside the post call. */
async function postsInline(): Promise<number> {
  const f = (await metricsRegistry().collect()).find((x) =>
    x.name === "kvport_agent_posts_inline_total"
  );
  return sumOf(f) ?? 0;
}

const skip = await nativeLibrary().then(
  () => undefined,
  (e) => `libkvport.so not loadable (build it: make -C native): ${String(e).split("\n")[0]}`,
);
if (skip) console.log(`storage_agent_test skipped: ${skip}`);

const PAGE = 256 * 1024;

function open(dir: string, opts: Partial<NixlStorageOptions> = {}): Promise<NixlStorageBackend> {
  return NixlStorageBackend.create({
    path: dir,
    pageSize: PAGE,
    poolSize: 8,
    bufferSize: 8 * PAGE,
    engine: "builtin",
    ...opts,
  });
}

describe("NixlStorageBackend over the agent", { skip }, () => {
  test("round trip: equal bytes at another address; unknown key undefined; partial chunk", async () => {
    const { dir, cleanup } = tempDir();
    try {
      await using store = await open(dir);
      const data = pattern(PAGE, 1);
      assert.equal((await store.put("k", data)).stored, true);
      const got = await store.get("k");
      assert.ok(got && got.buffer !== data.buffer);
      assert.deepEqual(got, data);
      assert.equal(await store.get("missing"), undefined);
      await store.put("short", pattern(1000, 2));
      assert.deepEqual(await store.get("short"), pattern(1000, 2));
      assert.equal(statSync(`${dir}/obj_0.bin`).size, PAGE); // slot files hold one page
    } finally {
      cleanup();
    }
  });

  test("LRU with a pool of 2 respects pin and unpin", async () => {
    const { dir, cleanup } = tempDir();
    try {
      await using store = await open(dir, { poolSize: 2 });
      await store.put("a", pattern(PAGE, 1));
      await store.put("b", pattern(PAGE, 2));
      store.pin("a");
      await store.put("c", pattern(PAGE, 3));
      assert.deepEqual(await store.batchedContains(["a", "c"]), 2);
      assert.equal(await store.contains("b"), false);
      store.pin("c");
      const r = await store.put("d", pattern(PAGE, 4));
      assert.equal(r.stored, false);
      assert.equal(r.reason, NO_EVICTION_CANDIDATE);
      store.unpin("a");
      assert.equal((await store.put("d", pattern(PAGE, 4))).stored, true);
      assert.equal(await store.contains("a"), false);
      assert.deepEqual(await store.get("c"), pattern(PAGE, 3));
      assert.deepEqual(await store.get("d"), pattern(PAGE, 4));
    } finally {
      cleanup();
    }
  });

  test("batches, concurrency and restart: every byte back after close and reopen", async () => {
    const { dir, cleanup } = tempDir();
    try {
      const keys = Array.from({ length: 16 }, (_, i) => `key-${i}`);
      {
        await using store = await open(dir, { poolSize: 16, bufferSize: 4 * PAGE });
        const r = await store.batchedPut(
          keys.slice(0, 4),
          keys.slice(0, 4).map((_, i) => pattern(PAGE, i)),
        );
        assert.ok(r.every((x) => x.stored));
        await Promise.all(keys.slice(4).map((k, i) => store.put(k, pattern(PAGE - i, i + 4))));
        const got = await Promise.all(keys.map((k) => store.get(k)));
        got.forEach((g, i) => assert.deepEqual(g, pattern(i < 4 ? PAGE : PAGE - (i - 4), i)));
      }
      await using again = await open(dir, { poolSize: 16, bufferSize: 4 * PAGE });
      assert.equal((await again.keys()).length, 16);
      const got = await again.batchedGet(keys);
      got.forEach((g, i) => assert.deepEqual(g, pattern(i < 4 ? PAGE : PAGE - (i - 4), i)));
    } finally {
      cleanup();
    }
  });

  test("O_DIRECT where the file system allows it, a warning where it refuses", async () => {
    const { dir, cleanup } = tempDir();
    const shm = tempDir("kvport-storage-shm-");
    try {
      {
        await using store = await open(dir, { useDirectIo: true });
        await store.put("d", pattern(PAGE, 5));
        assert.deepEqual(await store.get("d"), pattern(PAGE, 5));
        const s = await store.stats();
        if (s.direct) assert.deepEqual(store.warnings, []);
        else assert.match(store.warnings.join("\n"), /refused O_DIRECT/);
      }
      // /dev/shm is tmpfs: it refuses O_DIRECT before Linux 6.6, accepts it since
      const shmDir = `/dev/shm/kvport-storage-test-${process.pid}-${Date.now()}`;
      try {
        await using store = await open(shmDir, { useDirectIo: true, poolSize: 0 });
        await store.put("x", pattern(PAGE, 6));
        assert.deepEqual(await store.get("x"), pattern(PAGE, 6));
        if ((await store.stats()).direct) assert.deepEqual(store.warnings, []);
        else {assert.match(
            store.warnings.join("\n"),
            /use_direct_io: the file system of .* refused O_DIRECT/,
          );}
      } finally {
        (await import("node:fs")).rmSync(shmDir, { recursive: true, force: true });
      }
    } finally {
      cleanup();
      shm.cleanup();
    }
  });

  test("dynamic mode: one file per key through FILE segments", async () => {
    const { dir, cleanup } = tempDir();
    try {
      await using store = await open(dir, { poolSize: 0, presenceCache: true });
      const keys = Array.from({ length: 20 }, (_, i) => `m@d/${i}`);
      await store.batchedPut(keys, keys.map((_, i) => pattern(PAGE - i, i)));
      assert.equal(await store.batchedContains([...keys, "nope"]), 20);
      const got = await store.batchedGet(keys);
      got.forEach((g, i) => assert.deepEqual(g, pattern(PAGE - i, i)));
      assert.equal(await store.remove(keys[3]), true);
      assert.equal(await store.batchedContains(keys), 3);
    } finally {
      cleanup();
    }
  });

  test("backends other than POSIX on the builtin engine: NIXL is needed, said clearly", async () => {
    const { dir, cleanup } = tempDir();
    try {
      for (const backend of ["GDS", "GDS_MT", "HF3FS", "OBJ"] as const) {
        await assert.rejects(open(dir, { backend }), (e) => {
          assert.ok(e instanceof StorageError && e.code === "NOT_SUPPORTED", String(e));
          assert.match(
            e.message,
            new RegExp(`^backend ${backend} needs the nixl engine: NIXL is not available`),
          );
          return true;
        });
      }
      await assert.rejects(
        open(dir, { backend: "POSIX", bufferDevice: "cuda" }),
        /POSIX takes cpu buffers only/,
      );
    } finally {
      cleanup();
    }
  });

  test("a get the page cache can serve is read inside the post, else by the workers: same bytes", async () => {
    // cached_read_max (builtin engine, default 4 MiB): buffered reads of cached data skip
    // the copy workers' two thread hops (issue 15); 0 turns it off.
    for (const [params, inline] of [[undefined, 1], [{ cached_read_max: 0 }, 0]] as const) {
      const { dir, cleanup } = tempDir();
      try {
        await using store = await open(dir, { engineParams: params });
        const data = pattern(PAGE, 9);
        await store.batchedPut(["k"], [data]);
        const before = await postsInline();
        const [page] = await store.getPages(["k"]);
        const after = await postsInline();
        assert.ok(page, "the chunk was read");
        assert.deepEqual(page.bytes, data, "the bytes read are the bytes put");
        page.release();
        assert.equal(
          after - before,
          inline,
          `posts inside the post call with ${JSON.stringify(params)}`,
        );
        // And the next reads of it: the same bytes.
        assert.deepEqual(await store.get("k"), data);
      } finally {
        cleanup();
      }
    }
  });
});
