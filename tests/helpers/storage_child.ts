/**
 * A second process for the storage tests. Options (one JSON argument): `dir`, `io`
 * ("agent" or "fs"), `pageSize`, `poolSize`, `action`:
 *  - "loop":  put k<start>, k<start+1>, ... forever, printing {"stored": i} after each
 *             put resolves (the parent kills it with SIGKILL at some moment);
 *  - "tear":  put k0..k<count-1>, then a put of "torn" whose write stops halfway and
 *             never finishes (printing {"tearing": true}); the parent kills it;
 *  - "read":  print {"keys": {key: crc32 of its bytes}} of every key, then exit;
 *  - "write": put k0..k<count-1> and exit cleanly.
 * Every line on stdout is one JSON object; the first is {"ready": true, "pid": n}.
 *
 * Run: `deno run -A tests/helpers/storage_child.ts '<json>'` or `bun tests/helpers/storage_child.ts '<json>'`.
 */
import process from "node:process";
import { NixlStorageBackend } from "../../src/storage/mod.ts";
import { crc32 } from "../../src/storage/checksum.ts";
import { FsStorageIo } from "./storage_fs_io.ts";
import { pattern } from "./storage_util.ts";

interface Options {
  dir: string;
  io: "agent" | "fs";
  pageSize: number;
  poolSize: number;
  action: "loop" | "tear" | "read" | "write";
  start?: number;
  count?: number;
}

const o = JSON.parse(process.argv[process.argv.length - 1]) as Options;
const say = (v: unknown) => process.stdout.write(JSON.stringify(v) + "\n");
const fsIo = o.io === "fs" ? new FsStorageIo(8 * (o.pageSize + 8192)) : undefined;
const store = await NixlStorageBackend.create({
  path: o.dir,
  pageSize: o.pageSize,
  poolSize: o.poolSize,
  bufferSize: 8 * o.pageSize,
  engine: "builtin",
  io: fsIo,
});
say({ ready: true, pid: process.pid });
switch (o.action) {
  case "loop":
    for (let i = o.start ?? 0;; i++) {
      const r = await store.put(`k${i}`, pattern(o.pageSize - (i % 3), i));
      if (r.stored) say({ stored: i });
    }
  // falls through (never reached)
  case "tear": {
    for (let i = 0; i < (o.count ?? 0); i++) {
      await store.put(`k${i}`, pattern(o.pageSize, i));
      say({ stored: i });
    }
    setInterval(() => {}, 1000); // stay alive until killed
    fsIo!.tearNext = true;
    const p = store.put("torn", pattern(o.pageSize, 999));
    say({ tearing: true });
    await p;
    break;
  }
  case "read": {
    const keys: Record<string, number> = {};
    for (const k of await store.keys()) {
      const b = await store.get(k);
      if (b) keys[k] = crc32(b);
    }
    say({ keys, warnings: store.warnings });
    await store.close();
    break;
  }
  case "write":
    for (let i = 0; i < (o.count ?? 0); i++) await store.put(`k${i}`, pattern(o.pageSize, i));
    await store.close();
    say({ done: true });
    break;
}
process.exit(0);
