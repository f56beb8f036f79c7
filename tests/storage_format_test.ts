import assert from "node:assert/strict";
import { readFileSync, writeFileSync } from "node:fs";
import { test } from "node:test";
import { crc32, crc32Portable, fnv1a64Hex } from "../src/storage/checksum.ts";
import { MAX_NAME_BYTES, objectName, slotFileName } from "../src/storage/naming.ts";
import { LruSlotIndex } from "../src/storage/lru.ts";
import {
  applyRecords,
  decodeHeader,
  decodeRecords,
  encodeHeader,
  encodeRecords,
  HEADER_BYTES,
  Journal,
  type JournalEntry,
  type JournalRecord,
} from "../src/storage/journal.ts";
import { decodeTrailer, encodeTrailer, TRAILER_BYTES } from "../src/storage/dynamic_store.ts";
import { PagePool } from "../src/storage/staging.ts";
import { StorageError, toStorageError } from "../src/storage/errors.ts";
import { pattern, tempDir } from "./helpers/storage_util.ts";

const enc = new TextEncoder();

test("storage checksums: crc32 matches the standard check value and the portable table", () => {
  assert.equal(crc32(enc.encode("123456789")), 0xcbf43926);
  const data = pattern(100_003, 1);
  assert.equal(crc32(data), crc32Portable(data));
  assert.equal(crc32(data.subarray(50)), crc32Portable(data.subarray(50)));
  assert.equal(crc32(data.subarray(10), crc32(data.subarray(0, 10))), crc32(data));
  assert.equal(crc32(new Uint8Array(0)), 0);
  assert.equal(fnv1a64Hex(""), "cbf29ce484222325");
  assert.equal(fnv1a64Hex("a"), "af63dc4c8601ec8c");
});

test("storage names: LMCache's quoting (/ and @ to _, quote safe='') and length safety", () => {
  assert.equal(objectName("vllm@llama/8b@1@0@ab12@bfloat16"), "vllm_llama_8b_1_0_ab12_bfloat16");
  assert.equal(objectName("a b+c%d~e.f-g_h"), "a%20b%2Bc%25d~e.f-g_h");
  assert.equal(objectName("é"), "%C3%A9");
  assert.equal(objectName("!*'()"), "%21%2A%27%28%29"); // encodeURIComponent would keep these
  assert.equal(objectName(".hidden"), "%2Ehidden");
  assert.equal(objectName(".."), "%2E.");
  const long = "k".repeat(300);
  const name = objectName(long);
  assert.ok(name.length <= MAX_NAME_BYTES, `${name.length}`);
  assert.match(name, /^k+~[0-9a-f]{16}$/);
  assert.notEqual(objectName(long), objectName("k".repeat(301)));
  const longPct = objectName("é".repeat(100));
  assert.ok(longPct.length <= MAX_NAME_BYTES);
  assert.match(longPct, /^(%[0-9A-F]{2})+~[0-9a-f]{16}$/); // never cuts an escape in half
  assert.equal(slotFileName(7), "obj_7.bin");
});

test("storage LRU index: evicts least recently used, skips pinned, busy and protected keys", () => {
  const idx = new LruSlotIndex(3);
  const add = (k: string) => {
    const slot = idx.takeFree()!;
    idx.set(k, { slot, dataLen: 1, dataCrc: 0, seq: 0n, pins: 0, readers: 0 });
    return slot;
  };
  assert.deepEqual([add("a"), add("b"), add("c")], [0, 1, 2]);
  assert.equal(idx.takeFree(), undefined);
  assert.deepEqual(idx.evictionCandidates(2), ["a", "b"]);
  idx.touch("a");
  assert.deepEqual(idx.evictionCandidates(2), ["b", "c"]);
  idx.peek("b")!.pins = 1;
  idx.peek("c")!.readers = 1;
  assert.deepEqual(idx.evictionCandidates(3), ["a"]);
  assert.deepEqual(idx.evictionCandidates(3, new Set(["a"])), []);
  assert.equal(idx.pinnedCount, 1);
  const e = idx.delete("a")!;
  idx.release(e.slot);
  assert.equal(idx.freeCount, 1);
  const rebuilt = LruSlotIndex.fromEntries(4, [
    ["x", { slot: 2, dataLen: 1, dataCrc: 0, seq: 0n, pins: 0, readers: 0 }],
    ["y", { slot: 2, dataLen: 1, dataCrc: 0, seq: 0n, pins: 0, readers: 0 }], // slot taken: skipped
    ["z", { slot: 9, dataLen: 1, dataCrc: 0, seq: 0n, pins: 0, readers: 0 }], // out of range
  ]);
  assert.deepEqual([...rebuilt.keys()], ["x"]);
  assert.equal(rebuilt.freeCount, 3);
  assert.deepEqual([rebuilt.takeFree(), rebuilt.takeFree(), rebuilt.takeFree()], [0, 1, 3]);
});

test("storage journal format: header and records round-trip; every damaged byte is detected", () => {
  const header = {
    pageSize: 1 << 20,
    poolSize: 7,
    slotBytes: 1 << 20,
    generation: 3n,
    createdMs: 1234,
  };
  const hb = encodeHeader(header);
  assert.equal(hb.length, HEADER_BYTES);
  assert.deepEqual(decodeHeader(hb), header);
  const bad = hb.slice();
  bad[17] ^= 1;
  assert.equal(decodeHeader(bad), "header checksum mismatch");
  assert.equal(decodeHeader(enc.encode("x".repeat(64))), 'magic is "xxxxxxxx", not "KVPORTIX"');
  // a damaged magic need not be UTF-8: every byte flipped is a reason, never a TypeError
  for (let i = 0; i < 8; i++) {
    const m = hb.slice();
    m[i] ^= 0xff;
    assert.match(decodeHeader(m) as string, /^magic is ".*", not "KVPORTIX"$/, `byte ${i}`);
  }

  const recs: JournalRecord[] = [
    { type: "put", key: "k1", slot: 0, dataLen: 10, dataCrc: 0xdeadbeef, seq: 1n },
    { type: "put", key: "ключ", slot: 5, dataLen: 3, dataCrc: 7, seq: 2n },
    { type: "remove", key: "k1", slot: 0, seq: 3n },
  ];
  const body = encodeRecords(recs);
  const file = new Uint8Array(HEADER_BYTES + body.length);
  file.set(hb);
  file.set(body, HEADER_BYTES);
  const d = decodeRecords(file, HEADER_BYTES);
  assert.equal(d.stopReason, undefined);
  assert.equal(d.end, file.length);
  assert.deepEqual(d.records, recs);
  // Every truncation point of the last record stops cleanly before it.
  const lastStart = file.length - (36 + 2);
  for (let cut = lastStart + 1; cut < file.length; cut++) {
    const t = decodeRecords(file.subarray(0, cut), HEADER_BYTES);
    assert.equal(t.records.length, 2);
    assert.equal(t.end, lastStart);
    assert.ok(t.stopReason);
  }
  // Any flipped bit in a record drops it and everything after.
  for (let i = HEADER_BYTES; i < file.length; i += 7) {
    const f = file.slice();
    f[i] ^= 0x10;
    const t = decodeRecords(f, HEADER_BYTES);
    assert.ok(t.records.length < 3, `flip at ${i}`);
    for (let r = 0; r < t.records.length; r++) assert.deepEqual(t.records[r], recs[r]);
  }
});

test("storage journal replay: PUT supersedes, REMOVE needs the same slot, slot reuse drops the old key", () => {
  const state = new Map<string, JournalEntry>();
  const owners = new Map<number, string>();
  const put = (key: string, slot: number): JournalRecord => ({
    type: "put",
    key,
    slot,
    dataLen: 1,
    dataCrc: 0,
  });
  applyRecords(state, owners, [put("a", 0), put("b", 1), put("a", 2)], 4, 10);
  assert.deepEqual([...state].map(([k, e]) => [k, e.slot]), [["b", 1], ["a", 2]]);
  applyRecords(state, owners, [{ type: "remove", key: "a", slot: 0 }], 4, 10); // stale slot: ignored
  assert.ok(state.has("a"));
  applyRecords(state, owners, [put("c", 1)], 4, 10); // slot 1 reused: b is gone
  assert.deepEqual([...state.keys()].sort(), ["a", "c"]);
  const big: JournalRecord = { type: "put", key: "e", slot: 0, dataLen: 11, dataCrc: 0 };
  const ignored = applyRecords(state, owners, [put("d", 9), big], 4, 10);
  assert.equal(ignored, 2);
  assert.ok(!state.has("d") && !state.has("e"));
});

test("storage journal file: commits survive reopen; a torn tail is cut with a warning", async () => {
  const { dir, cleanup } = tempDir();
  try {
    const opts = {
      path: `${dir}/.kvport-index`,
      tmpPath: `${dir}/.kvport-index.tmp`,
      dirPath: dir,
      pageSize: 4096,
      poolSize: 4,
      slotBytes: 4096,
    };
    const j = await Journal.open(opts);
    await Promise.all([
      j.commit([{ type: "put", key: "a", slot: 0, dataLen: 5, dataCrc: 1 }]),
      j.commit([{ type: "put", key: "b", slot: 1, dataLen: 6, dataCrc: 2 }]),
    ]);
    await j.commit([{ type: "remove", key: "a", slot: 0 }], false);
    assert.ok(j.dirty);
    await j.close();
    // a torn record appended by a crash
    const bytes = readFileSync(opts.path);
    const torn = encodeRecords([{
      type: "put",
      key: "zz",
      slot: 2,
      dataLen: 1,
      dataCrc: 0,
      seq: 99n,
    }]);
    writeFileSync(opts.path, Buffer.concat([bytes, torn.subarray(0, 20)]));
    const j2 = await Journal.open(opts);
    assert.deepEqual([...j2.entries().keys()], ["b"]);
    assert.equal(j2.warnings.length, 1);
    assert.match(j2.warnings[0], /dropped/);
    assert.equal(readFileSync(opts.path).length, bytes.length); // truncated
    await j2.close();
    // another page size is refused with a fix
    await assert.rejects(Journal.open({ ...opts, pageSize: 8192, slotBytes: 8192 }), (e) => {
      assert.ok(e instanceof StorageError && e.code === "CONFIG");
      assert.match(e.message, /4096 bytes.*8192/);
      return true;
    });
    // a changed pool size is adopted: records beyond it are dropped
    const j3 = await Journal.open({ ...opts, poolSize: 1 });
    assert.deepEqual([...j3.entries().keys()], []);
    assert.match(j3.warnings.join("\n"), /pool size changed from 4 to 1/);
    assert.equal(j3.header.poolSize, 1);
    await j3.close();
  } finally {
    cleanup();
  }
});

test("storage journal compaction: the file shrinks to the live records and replays the same", async () => {
  const { dir, cleanup } = tempDir();
  try {
    const opts = {
      path: `${dir}/.kvport-index`,
      tmpPath: `${dir}/.kvport-index.tmp`,
      dirPath: dir,
      pageSize: 4096,
      poolSize: 8,
      slotBytes: 4096,
      compactMinBytes: 4096,
    };
    const j = await Journal.open(opts);
    for (let round = 0; round < 100; round++) {
      await j.commit([
        { type: "put", key: `key-${round % 8}`, slot: round % 8, dataLen: round, dataCrc: round },
      ]);
    }
    assert.ok(j.compactions >= 1, `compactions ${j.compactions}`);
    assert.ok(j.bytes < 4096 + 8 * 50, `journal ${j.bytes} bytes`);
    const before = j.entries();
    await j.close();
    const j2 = await Journal.open(opts);
    assert.deepEqual(j2.entries(), before);
    assert.ok(j2.header.generation >= 1n);
    await j2.close();
  } finally {
    cleanup();
  }
});

test("storage dynamic trailer: round trip, damage and foreign files are detected", () => {
  const t = new Uint8Array(TRAILER_BYTES);
  encodeTrailer(t, "my@key", 1234, 0xabcdef01);
  assert.deepEqual(decodeTrailer(t), { key: "my@key", dataLen: 1234, dataCrc: 0xabcdef01 });
  const bad = t.slice();
  bad[20] ^= 1;
  assert.equal(decodeTrailer(bad), "trailer checksum");
  assert.equal(decodeTrailer(new Uint8Array(TRAILER_BYTES)), "no kvport trailer");
  assert.throws(() => encodeTrailer(t, "x".repeat(5000), 0, 0), /TOO_LARGE|Keys must be/);
});

test("storage staging pages: FIFO waiters, release wakes them, close rejects them", async () => {
  const pool = new PagePool(3);
  const a = await pool.acquire(2);
  assert.deepEqual(a, [0, 1]);
  let got: number[] | undefined;
  const waiting = pool.acquire(2).then((p) => (got = p));
  assert.equal(pool.tryAcquire(1), undefined); // FIFO: the waiter goes first
  pool.release([a[0]]);
  await waiting;
  assert.equal(got!.length, 2);
  await assert.rejects(pool.acquire(4), RangeError);
  const stuck = pool.acquire(3);
  pool.close(new Error("closed"));
  await assert.rejects(stuck, /closed/);
});

test("storage errors: errno texts map to kinds with the path and a fix", () => {
  const full = toStorageError(
    new Error("ENOSPC: no space left on device, write"),
    "writing",
    "/d/x",
  );
  assert.equal(full.code, "NO_SPACE");
  assert.match(full.message, /writing at \/d\/x: ENOSPC/);
  assert.match(full.message, /Free space/);
  assert.match(full.message, /already stored are intact/);
  const denied = toStorageError(
    Object.assign(new Error("permission denied, open '/d'"), { code: "EACCES" }),
    "creating",
    "/d",
  );
  assert.equal(denied.code, "PERMISSION");
  assert.match(denied.message, /EACCES: permission denied/);
  assert.match(denied.message, /writable by this user/);
  assert.equal(toStorageError(new Error("File too large"), "w").code, "FILE_TOO_LARGE");
  assert.equal(toStorageError(new Error("Read-only file system"), "w").code, "READ_ONLY");
  assert.equal(toStorageError(new Error("weird"), "w").code, "IO");
});
