// GPUDirect Storage through a real NIXL (engine "nixl", NIXL's GDS plugin, cuFile; its
// compatibility mode is fine, where cuFile moves the bytes through host memory): GPU
// pages WRITTEN to a file and READ back into other GPU memory, shuffled, every page
// checked by checksum and every byte of the file compared with what was written; and a
// NixlStorageBackend with nixl_backend GDS, every chunk read back byte for byte. Skips,
// saying why, without NIXL, without NIXL's GDS plugin, or without a CUDA device
// (scripts/gpu_nixl.sh runs it on the GPU machine, with a cufile.json allowing the
// compatibility mode).
import assert from "node:assert/strict";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import process from "node:process";
import { Buffer } from "node:buffer";
import {
  cudaDevices,
  DescList,
  type DeviceBuffer,
  NixlAgent,
  NixlStorageBackend,
  probeEngine,
} from "../mod.ts";
import { closeFile, openFile } from "../src/agent/files.ts";
import { fillRandom, nixlSkip, uniqueName } from "./helpers/nixl_env.ts";
import { after, before, describe, skipFor, test } from "./helpers/skip.ts";

const skip: string | undefined = await (async () => {
  if (nixlSkip) return nixlSkip;
  const probe = await probeEngine("nixl");
  if (!probe.plugins.includes("GDS")) {
    return skipFor(
      "needs NIXL",
      `NIXL has no GDS plugin (plugins: ${probe.plugins.join(",")}; build NIXL with cuFile)`,
    );
  }
  const cuda = await cudaDevices();
  return cuda.count > 0 ? undefined : skipFor("needs GPU", `no CUDA device: ${cuda.reason}`);
})();
if (skip) console.log(`nixl_gds_test skipped: ${skip}`);

const PAGE = 1 << 20;
const PAGES = 16;
const SIZE = PAGE * PAGES;
const idx = Array.from({ length: PAGES }, (_, i) => i);
const slots = idx.map((i) => (i * 5 + 3) % PAGES); // a permutation: every page moves

describe("nixl engine: GDS", { skip }, () => {
  let dir: string;
  let setJson = false;
  before(() => {
    // Where cuFile reads its settings: allow the compatibility mode (no nvidia-fs needed)
    // unless the caller pointed it elsewhere. Read when the GDS plugin opens cuFile.
    dir = mkdtempSync(join(process.env.KVPORT_GDS_DIR ?? tmpdir(), "kvport-gds-"));
    if (!process.env.CUFILE_ENV_PATH_JSON) {
      const json = join(dir, "cufile.json");
      writeFileSync(json, JSON.stringify({ properties: { allow_compat_mode: true } }));
      process.env.CUFILE_ENV_PATH_JSON = json;
      setJson = true;
    }
  });
  after(() => {
    // Unset what before() set: it names a file removed here, and later files of the run
    // share this process's environment.
    if (setJson) delete process.env.CUFILE_ENV_PATH_JSON;
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  test("VRAM -> FILE -> VRAM, shuffled pages, every page and every byte checked", async () => {
    await using agent = await NixlAgent.create({
      name: uniqueName("gds"),
      engine: "nixl",
      backends: ["GDS"],
    });
    const path = join(dir, "pages.bin");
    // O_DIRECT where the file system has it (GDS wants it; tmpfs refuses it).
    let file;
    try {
      file = openFile(agent, path, { create: true, direct: true, size: SIZE });
    } catch {
      file = openFile(agent, path, { create: true, size: SIZE });
    }
    try {
      const a: DeviceBuffer = agent.allocate(SIZE, { device: "cuda:0" });
      const b: DeviceBuffer = agent.allocate(SIZE, { device: "cuda:0" });
      agent.registerMemory(a);
      agent.registerMemory(b);
      agent.registerMemory([{ fd: file.fd, offset: 0, length: SIZE }]);
      const data = new Uint8Array(SIZE);
      fillRandom(data);
      a.copyFrom(data);
      using la = agent.prepDescList("", DescList.pages(a, PAGE, PAGES));
      using lb = agent.prepDescList("", DescList.pages(b, PAGE, PAGES));
      using lf = agent.prepDescList(agent.name, DescList.pages({ fd: file.fd }, PAGE, PAGES));
      await agent.transfer("WRITE", la, idx, lf, slots, { timeoutMs: 60_000 });
      const onDisk = readFileSync(path);
      for (const i of idx) {
        const s = slots[i];
        assert.ok(
          onDisk.subarray(s * PAGE, (s + 1) * PAGE).equals(data.subarray(i * PAGE, (i + 1) * PAGE)),
          `page ${i} in slot ${s} of the file`,
        );
      }
      await agent.transfer("READ", lb, idx, lf, slots, { timeoutMs: 60_000 });
      for (const i of idx) {
        assert.equal(b.checksum(i * PAGE, PAGE), a.checksum(i * PAGE, PAGE), `page ${i}`);
      }
      const back = new Uint8Array(SIZE);
      b.copyTo(back);
      assert.ok(Buffer.from(back).equals(Buffer.from(data)), "every byte read back into VRAM");
      assert.equal(agent.info().backends, "GDS");
    } finally {
      closeFile(agent, file);
    }
  });

  test("NixlStorageBackend with nixl_backend GDS: put and get, every chunk checked", async () => {
    const chunks = idx.map(() => {
      const c = new Uint8Array(256 * 1024);
      fillRandom(c);
      return c;
    });
    const keys = idx.map((i) => `gds-chunk-${i}`);
    await using store = await NixlStorageBackend.fromConfig({
      nixl_buffer_size: 4 << 20,
      nixl_buffer_device: "cpu",
      extra_config: {
        enable_nixl_storage: true,
        nixl_backend: "GDS",
        nixl_pool_size: 32,
        nixl_path: join(dir, "pool"),
      },
    }, { pageSize: 256 * 1024, engine: "nixl" });
    const put = await store.batchedPut(keys, chunks);
    assert.equal(put.length, keys.length);
    assert.equal(await store.batchedContains(keys), keys.length);
    const got = await store.batchedGet(keys);
    got.forEach((g, i) => assert.ok(g && Buffer.from(g).equals(Buffer.from(chunks[i])), keys[i]));
  });
});
