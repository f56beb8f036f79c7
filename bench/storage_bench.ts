/**
 * Storage benchmark: `NixlStorageBackend` (static pool, builtin engine, POSIX) put and
 * get of 4 MiB and 28 MiB chunks, in batches of 1 and 64, buffered and with O_DIRECT,
 * each as a ratio to a raw sequential write/read of the same bytes to the same
 * directory, measured in the same run, interleaved with ours. Goal: >= 0.8.
 *
 * Both sides are durable: a put is pwrite of every chunk to its own file + fdatasync of
 * each + the index commit (one more fdatasync); the raw write is pwrite of the same
 * bytes to as many files + fdatasync of each. A get is one READ request into the staging
 * buffer + a CRC-32 check of every chunk (zero-copy pages, `getPages`); the raw read is
 * pread of the same files. The raw side comes from `native/build/kvport-limits file`
 * when that tool measures files, else from this script re-run in a subprocess with
 * node:fs (printed as the limit's name).
 *
 * Prints a human line then one JSON line per case.
 *
 * ```sh
 * deno run -A bench/storage_bench.ts [--quick] [--dir DIR] [--iters N] [--min-ms MS]
 * bun bench/storage_bench.ts [--quick] [--dir DIR] [--iters N] [--min-ms MS]
 * # one case only: 4 MiB chunks, one per request, buffered (or --direct on|off)
 * bun bench/storage_bench.ts --size-mib 4 --batch 1 --direct off
 * ```
 * @module
 */
import { spawnSync } from "node:child_process";
import * as fs from "node:fs";
import { tmpdir } from "node:os";
import process from "node:process";
import { NixlAgent } from "../src/agent.ts";
import { NixlStorageBackend } from "../src/storage/mod.ts";
import { nativeLimit, Report, type Scored } from "./lib.ts";

const MiB = 1 << 20;
const args = process.argv.slice(2);
const flag = (name: string) => args.includes(name);
const option = (name: string) => {
  const i = args.indexOf(name);
  return i >= 0 ? args[i + 1] : undefined;
};

// ------------------------------------------------------------------ raw side ----
interface RawRequest {
  dir: string;
  size: number;
  count: number;
  direct: boolean;
  op: "write" | "read";
  /** Repeat for at least this long (one repetition at least). */
  minMs: number;
}

/** The subprocess: one raw write or read of `count` files of `size` bytes, GB/s. */
async function rawChild(r: RawRequest): Promise<void> {
  // An aligned buffer for O_DIRECT: the shim allocates page-aligned DRAM.
  // One buffer per file, as the backend's staging buffer has one page per chunk (a
  // single reused buffer would stay in the CPU cache and flatter the raw side).
  const agent = await NixlAgent.create({
    name: `raw-${process.pid}`,
    engine: "builtin",
    backends: ["POSIX"],
  });
  const all = agent.allocate(r.size * r.count);
  all.bytes.fill(0x5a);
  const flags = fs.constants.O_RDWR | fs.constants.O_CREAT | (r.direct ? fs.constants.O_DIRECT : 0);
  const fds: number[] = [];
  for (let i = 0; i < r.count; i++) fds.push(fs.openSync(`${r.dir}/raw_${i}.bin`, flags, 0o644));
  let reps = 0;
  const t0 = performance.now();
  do {
    for (const [i, fd] of fds.entries()) {
      const buf = all.bytes.subarray(i * r.size, (i + 1) * r.size);
      let off = 0;
      while (off < r.size) {
        off += r.op === "write"
          ? fs.writeSync(fd, buf, off, r.size - off, off)
          : fs.readSync(fd, buf, off, r.size - off, off);
      }
      if (r.op === "write") fs.fdatasyncSync(fd);
    }
    reps++;
  } while (performance.now() - t0 < r.minMs);
  const ms = performance.now() - t0;
  for (const fd of fds) fs.closeSync(fd);
  process.stdout.write(
    JSON.stringify({ gbps: (r.size * r.count * reps) / ms / 1e6, ms, reps }) + "\n",
  );
  await agent.close();
}

let rawSource = "";
const rawSourceIsTool = () => rawSource === "kvport-limits file";

/**
 * Raw sequential write (fdatasync included) then read of `count` chunks of `size` bytes
 * in `dir`, GB/s each, repeated for at least `minMs`: `kvport-limits file` when built,
 * else node:fs in a subprocess.
 */
function raw(r: Omit<RawRequest, "op">): { write: number; read: number } {
  let bytes = 0;
  let ws = 0;
  let rs = 0;
  const tool = nativeLimit(["file", r.dir, "4096", "1"]);
  if (tool && typeof tool.write_gbps === "number") {
    rawSource = "kvport-limits file";
    do {
      const p = nativeLimit([
        "file",
        r.dir,
        String(r.size),
        String(r.count),
        ...(r.direct ? ["direct"] : []),
      ]);
      if (!p || typeof p.write_seconds !== "number") throw new Error("kvport-limits file failed");
      ws += p.write_seconds as number;
      rs += p.read_seconds as number;
      bytes += r.size * r.count;
    } while (ws * 1000 < r.minMs);
    return { write: bytes / ws / 1e9, read: bytes / rs / 1e9 };
  }
  rawSource = "node:fs in a subprocess";
  return rawSameMemory(r);
}

/**
 * Raw write+fdatasync and read through node:fs in a subprocess, one file per chunk, from
 * and into a buffer allocated by the shim (the same kind of memory as the staging
 * buffer: shared memory, 4 KiB pages), repeated for at least `minMs`.
 */
function rawSameMemory(r: Omit<RawRequest, "op">): { write: number; read: number } {
  const isDeno = typeof (globalThis as { Deno?: unknown }).Deno !== "undefined";
  const self = new URL(import.meta.url).pathname;
  const cmd = isDeno ? ["run", "-A", self] : [self];
  const once = (op: "write" | "read") => {
    const p = spawnSync(process.execPath, [...cmd, "--raw-child", JSON.stringify({ ...r, op })], {
      encoding: "utf8",
      maxBuffer: 1 << 20,
    });
    if (p.status !== 0) throw new Error(`raw ${op} failed: ${p.stderr}`);
    return JSON.parse(p.stdout.trim().split("\n").pop()!).gbps as number;
  };
  return { write: once("write"), read: once("read") };
}

// ----------------------------------------------------------------- our side ----
interface Case {
  size: number;
  batch: number;
  direct: boolean;
}

const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];

async function runCase(
  c: Case,
  base: string,
  iters: number,
  minMs: number,
  report: Report,
): Promise<Scored[]> {
  const dir = fs.mkdtempSync(`${base}/case-`);
  const pool = `${dir}/pool`;
  const rawDir = `${dir}/raw`;
  fs.mkdirSync(rawDir);
  const store = await NixlStorageBackend.create({
    path: pool,
    pageSize: c.size,
    poolSize: 2 * c.batch, // a re-put writes into free slots, then frees the old ones
    bufferSize: c.batch * c.size,
    useDirectIo: c.direct,
    engine: "builtin",
  });
  const out: Scored[] = [];
  try {
    const keys = Array.from({ length: c.batch }, (_, i) => `bench-${c.size}-${i}`);
    // The chunks are built in staging pages (zero-copy puts, as LMCache's memory
    // objects live in its buffer); the pages are taken for each put and given back
    // before the get, which reads into them (same bytes).
    const first = await store.allocatePages(c.batch);
    first.forEach((p, i) => p.bytes.fill(i + 1));
    for (const p of first) p.release();
    const rq = { dir: rawDir, size: c.size, count: c.batch, direct: c.direct, minMs };
    const bytes = c.size * c.batch;
    const samples = {
      rawW: [] as number[],
      rawR: [] as number[],
      sameMemW: [] as number[],
      sameMemR: [] as number[],
      put: [] as number[],
      get: [] as number[],
    };
    // Each sample: the raw write+read, then put+get pairs (a get right after its put,
    // as the raw read follows the raw write), each side repeated for at least minMs.
    const ours = async () => {
      let putMs = 0;
      let getMs = 0;
      let reps = 0;
      do {
        const pages = await store.allocatePages(c.batch);
        let t0 = performance.now();
        const r = await store.batchedPut(keys, pages.map((p) => p.bytes));
        putMs += performance.now() - t0;
        for (const p of pages) p.release();
        if (!r.every((x) => x.stored)) throw new Error("a put was not stored");
        t0 = performance.now();
        const got = await store.getPages(keys);
        getMs += performance.now() - t0;
        if (got.some((g) => !g)) throw new Error("a get missed");
        for (const g of got) g!.release();
        reps++;
      } while (putMs < minMs);
      return { put: (bytes * reps) / putMs / 1e6, get: (bytes * reps) / getMs / 1e6 };
    };
    // warm-up (first writes allocate blocks on both sides: two puts touch every slot of
    // the pool), then interleaved samples
    raw({ ...rq, minMs: 0 });
    await ours();
    await ours();
    for (let i = 0; i < iters; i++) {
      const lim = raw(rq);
      samples.rawW.push(lim.write);
      samples.rawR.push(lim.read);
      const same = rawSourceIsTool() ? rawSameMemory(rq) : lim;
      samples.sameMemW.push(same.write);
      samples.sameMemR.push(same.read);
      const o = await ours();
      samples.put.push(o.put);
      samples.get.push(o.get);
    }
    const direct = (await store.stats()).direct;
    const tag = `${c.size / MiB}MiB_x${c.batch}_${c.direct ? "direct" : "buffered"}`;
    const extra = {
      chunkBytes: c.size,
      batch: c.batch,
      useDirectIo: c.direct,
      directGranted: direct,
      iterations: iters,
      samples,
      warnings: store.warnings,
    };
    for (
      const [op, ours, lim, same] of [
        ["put", samples.put, samples.rawW, samples.sameMemW],
        ["get", samples.get, samples.rawR, samples.sameMemR],
      ] as const
    ) {
      const s = report.add({
        name: `storage_${op}_${tag}`,
        value: median(ours),
        unit: "GB/s",
        limit: median(lim),
        limitName: `raw ${op === "put" ? "write+fdatasync" : "read"} (${rawSource})`,
        goal: { op: ">=", ratio: 0.8 },
        extra: {
          ...extra,
          // the same raw I/O from shim-allocated memory (shared, 4 KiB pages) to one file
          // per chunk, as the backend does: what is left once the buffer kind is equal
          rawSameMemoryGBps: median(same),
          ratioToSameMemory: median(ours) / median(same),
        },
      });
      console.log(
        `  (vs raw node:fs from shim memory, one file per chunk: ${median(same).toFixed(2)} ` +
          `GB/s, ratio ${(median(ours) / median(same)).toFixed(2)})`,
      );
      console.log(JSON.stringify({ suite: "storage", runtime: runtimeName(), ...s }));
      out.push(s);
    }
  } finally {
    await store.close();
    fs.rmSync(dir, { recursive: true, force: true });
  }
  return out;
}

function runtimeName(): string {
  const g = globalThis as { Deno?: { version: { deno: string } }; Bun?: { version: string } };
  return g.Bun ? `bun ${g.Bun.version}` : g.Deno ? `deno ${g.Deno.version.deno}` : "?";
}

function freeBytes(dir: string): number {
  const r = spawnSync("df", ["-B1", "--output=avail", dir], { encoding: "utf8" });
  return Number(r.stdout.trim().split("\n").pop()) || 0;
}

function freeMemory(): number {
  try {
    const m = /MemAvailable:\s+(\d+) kB/.exec(fs.readFileSync("/proc/meminfo", "utf8"));
    return m ? Number(m[1]) * 1024 : 0;
  } catch {
    return 0;
  }
}

async function main(): Promise<void> {
  const quick = flag("--quick");
  const iters = Number(option("--iters") ?? (quick ? 2 : 3));
  const minMs = Number(option("--min-ms") ?? (quick ? 100 : 400));
  const base = option("--dir") ?? tmpdir();
  fs.mkdirSync(base, { recursive: true });
  const root = fs.mkdtempSync(`${base}/kvport-storage-bench-`);
  const report = new Report("storage");
  const notes: string[] = [];
  try {
    const only = <T>(all: T[], v: T | undefined) => v === undefined ? all : [v];
    const sizeOpt = option("--size-mib");
    const batchOpt = option("--batch");
    const directOpt = option("--direct");
    const directs = only([false, true], directOpt === undefined ? undefined : directOpt === "on");
    const sizes = only(
      [4 * MiB, 28 * MiB],
      sizeOpt === undefined ? undefined : Number(sizeOpt) * MiB,
    );
    const batches = only([1, 64], batchOpt === undefined ? undefined : Number(batchOpt));
    for (const direct of directs) {
      for (const size of sizes) {
        for (const batchWanted of batches) {
          let batch = batchWanted;
          // pool (2 x batch) + raw files (batch) on disk; staging + raw buffer in memory
          const disk = freeBytes(root);
          const mem = freeMemory();
          while (batch > 1 && (3 * batch * size > disk * 0.8 || 2 * batch * size > mem * 0.6)) {
            batch = Math.floor(batch / 2);
          }
          if (quick && size * batch > 512 * MiB) {
            batch = Math.max(1, Math.floor((512 * MiB) / size));
          }
          if (batch !== batchWanted) {
            const why = quick ? "--quick" : "disk or memory is short";
            notes.push(`${size / MiB} MiB x ${batchWanted} reduced to x ${batch} (${why})`);
            console.log(`note: ${notes.at(-1)}`);
          }
          await runCase({ size, batch, direct }, root, iters, minMs, report);
        }
      }
    }
  } finally {
    fs.rmSync(root, { recursive: true, force: true });
  }
  if (notes.length) console.log(`notes: ${notes.join("; ")}`);
}

if (flag("--raw-child")) {
  await rawChild(JSON.parse(option("--raw-child")!));
} else {
  await main();
}
