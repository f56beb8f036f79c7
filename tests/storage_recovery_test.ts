// A static pool opened over what a crash, a disk or a person left: a damaged index magic, an
// index truncated to nothing (or missing) while slot files remain, a lock file full of
// garbage, a lock of a process that is gone. Over the node:fs test io (no native library).
import assert from "node:assert/strict";
import { readdirSync, readFileSync, truncateSync, utimesSync, writeFileSync } from "node:fs";
import process from "node:process";
import { test } from "node:test";
import { NixlStorageBackend, type NixlStorageOptions, StorageError } from "../src/storage/mod.ts";
import { FsStorageIo } from "./helpers/storage_fs_io.ts";
import { pattern, tempDir } from "./helpers/storage_util.ts";

const PAGE = 8192;

function open(dir: string, opts: Partial<NixlStorageOptions> = {}): Promise<NixlStorageBackend> {
  return NixlStorageBackend.create({
    path: dir,
    pageSize: PAGE,
    poolSize: 4,
    bufferSize: PAGE * 4,
    io: new FsStorageIo(4 * (PAGE + 8192)),
    ...opts,
  });
}

/** A pool in `dir` holding keys a and b. */
async function twoKeys(dir: string): Promise<void> {
  const s = await open(dir);
  await s.batchedPut(["a", "b"], [pattern(PAGE, 1), pattern(PAGE, 2)]);
  await s.close();
}

test("storage recovery: any byte of the index magic flipped is StorageError FORMAT with the fix, never a TypeError", async () => {
  const { dir, cleanup } = tempDir();
  try {
    await twoKeys(dir);
    const path = `${dir}/.kvport-index`;
    const good = readFileSync(path);
    for (let i = 0; i < 8; i++) {
      const bad = Uint8Array.from(good);
      bad[i] ^= 0xff; // 0x4b -> 0xb4 ...: not UTF-8 any more
      writeFileSync(path, bad);
      await assert.rejects(open(dir), (e) => {
        assert.ok(e instanceof StorageError, `byte ${i}: ${e}`);
        assert.equal(e.code, "FORMAT");
        assert.ok(e.message.includes(path), e.message);
        assert.match(e.message, /magic is ".*", not "KVPORTIX"/);
        assert.match(e.fix ?? "", /point nixl_path at an empty directory|delete the pool/);
        return true;
      });
    }
    writeFileSync(path, good); // the pool was not touched by the refusals
    const s = await open(dir);
    assert.deepEqual(await s.get("b"), pattern(PAGE, 2));
    await s.close();
  } finally {
    cleanup();
  }
});

test("storage recovery: an index truncated to 0 bytes while slot files remain warns, starts empty, and the pool works", async () => {
  const { dir, cleanup } = tempDir();
  try {
    await twoKeys(dir);
    for (const size of [0, 17]) {
      truncateSync(`${dir}/.kvport-index`, size);
      const s = await open(dir);
      const w = s.warnings.join("\n");
      assert.match(
        w,
        new RegExp(`was ${size} bytes, shorter than its 64-byte header \\(truncated\\)`),
      );
      assert.match(w, /the keys it held are lost and the pool starts empty; its 4 slot file\(s\)/);
      assert.deepEqual(await s.keys(), []);
      assert.equal(await s.get("a"), undefined);
      await s.batchedPut(["c", "d", "e", "f"], [1, 2, 3, 4].map((i) => pattern(PAGE, 10 + i)));
      await s.close();
      const again = await open(dir); // the new index is whole: no warning, every key back
      assert.deepEqual(again.warnings, []);
      assert.deepEqual(await again.keys(), ["c", "d", "e", "f"]);
      assert.deepEqual(await again.get("e"), pattern(PAGE, 13));
      await again.close();
    }
    // an index deleted outright: the same warning, not a silent empty pool
    const { rmSync } = await import("node:fs");
    rmSync(`${dir}/.kvport-index`);
    const s = await open(dir);
    assert.match(s.warnings.join("\n"), /is missing but 4 slot file\(s\) remain/);
    await s.close();
  } finally {
    cleanup();
  }
});

test("storage recovery: a lock file full of garbage is stale: taken over with a warning, as a dead holder's is", async () => {
  const { dir, cleanup } = tempDir();
  try {
    await twoKeys(dir);
    const lock = `${dir}/.kvport-lock`;
    const old = new Date(Date.now() - 60_000);
    for (
      const garbage of [
        new Uint8Array([0xde, 0xad, 0xbe, 0xef, 0, 0xff, 0x0a]),
        new TextEncoder().encode("not a pid\nhost\n"),
        new Uint8Array(0), // created, never written (a crash between open and write)
        new TextEncoder().encode("0\n\n"),
      ]
    ) {
      writeFileSync(lock, garbage);
      utimesSync(lock, old, old);
      const s = await open(dir);
      assert.match(
        s.warnings.join("\n"),
        /pool lock .*\.kvport-lock named no owner \(\d+ bytes: .*\): treated as stale/,
      );
      assert.deepEqual(await s.get("a"), pattern(PAGE, 1));
      assert.equal(readFileSync(lock, "utf8").split("\n")[0], String(process.pid));
      await s.close();
    }
    // a fresh garbage lock may be one being written: it is given a moment, then taken over
    writeFileSync(lock, "");
    const t0 = Date.now();
    const s = await open(dir);
    assert.ok(Date.now() - t0 >= 500, `${Date.now() - t0} ms`);
    assert.match(s.warnings.join("\n"), /named no owner/);
    await s.close();
    // a lock of a process that no longer runs: taken over, with a warning too
    writeFileSync(lock, `${2 ** 22 + 12345}\n\n`); // above pid_max's default: not running
    const d = await open(dir);
    assert.match(d.warnings.join("\n"), /held by process \d+, which no longer runs: taken over/);
    // a live holder (this process) is still LOCKED, and its lock is left alone
    await assert.rejects(open(dir), (e) => e instanceof StorageError && e.code === "LOCKED");
    await d.close();
    assert.deepEqual(readdirSync(dir).filter((n) => n.startsWith(".kvport-lock")), []);
  } finally {
    cleanup();
  }
});
