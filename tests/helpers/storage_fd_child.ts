/**
 * Child process of tests/storage_limits_test.ts, started under a low `ulimit -n`: opens a
 * static pool over the agent, fills every slot, closes, reopens, reads every key back and
 * checks its bytes, sampling its own descriptors (/proc/self/fd) after every batch.
 * Prints one JSON line: the figures, or the error it ended with.
 *
 * Usage: <runtime> storage_fd_child.ts '{"dir": "...", "poolSize": 2000, "pageSize": 4096}'
 */
import { readdirSync } from "node:fs";
import process from "node:process";
import { NixlStorageBackend } from "../../src/storage/mod.ts";
import { pattern } from "./storage_util.ts";

interface Args {
  dir: string;
  poolSize: number;
  pageSize: number;
  /** Keys per batch (default: the staging pages). */
  batch?: number;
  maxOpenFiles?: number;
  stagingPages?: number;
}

const a = JSON.parse(process.argv[process.argv.length - 1]) as Args;
const fds = () => readdirSync("/proc/self/fd").length;
const base = fds();
let maxFds = base;
const sample = () => (maxFds = Math.max(maxFds, fds()));

function open(): Promise<NixlStorageBackend> {
  return NixlStorageBackend.create({
    path: a.dir,
    pageSize: a.pageSize,
    poolSize: a.poolSize,
    bufferSize: (a.stagingPages ?? 64) * a.pageSize,
    engine: "builtin",
    maxOpenFiles: a.maxOpenFiles,
  });
}

/** Bytes of key i: its index in the first 4 bytes, then a pattern of its own. */
function chunk(i: number): Uint8Array {
  const c = pattern(a.pageSize, i + 1);
  new DataView(c.buffer).setUint32(0, i, true);
  return c;
}

const t0 = performance.now();
try {
  let store = await open();
  sample();
  const batch = a.batch ?? store.stagingPages;
  for (let i = 0; i < a.poolSize; i += batch) {
    const n = Math.min(batch, a.poolSize - i);
    const keys = Array.from({ length: n }, (_, j) => `k${i + j}`);
    const r = await store.batchedPut(keys, keys.map((_, j) => chunk(i + j)));
    if (!r.every((x) => x.stored)) throw new Error(`batch at ${i}: not every key stored`);
    sample();
  }
  const written = await store.stats();
  await store.close();
  store = await open(); // a reopen under the same limit replays the index
  sample();
  let checked = 0;
  for (let i = 0; i < a.poolSize; i += batch) {
    const n = Math.min(batch, a.poolSize - i);
    const keys = Array.from({ length: n }, (_, j) => `k${i + j}`);
    const got = await store.batchedGet(keys);
    got.forEach((g, j) => {
      const want = chunk(i + j);
      if (!g || g.length !== want.length || !g.every((b, x) => b === want[x])) {
        throw new Error(`key k${i + j}: wrong or missing bytes`);
      }
      checked++;
    });
    sample();
  }
  const read = await store.stats();
  await store.close();
  console.log(JSON.stringify({
    ok: true,
    base,
    maxFds,
    after: fds(),
    checked,
    used: written.used,
    corrupt: read.corrupt,
    openFiles: read.details.openFiles,
    maxOpenFiles: read.details.maxOpenFiles,
    fileOpens: written.details.fileOpens,
    stagingPages: store.stagingPages,
    ms: Math.round(performance.now() - t0),
  }));
} catch (e) {
  // deno-lint-ignore no-explicit-any
  const err = e as any;
  console.log(JSON.stringify({
    ok: false,
    name: err?.name,
    code: err?.code,
    message: String(err?.message ?? e),
    base,
    maxFds,
  }));
}
