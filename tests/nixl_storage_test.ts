// POSIX storage through a real NIXL (engine "nixl", backends UCX + POSIX): DRAM pages
// WRITE to a file and READ back through NIXL's POSIX plugin (loopback: the remote side
// is the agent's own name), every page checked; the file holds the bytes for another
// process (plain read) and for a new agent after the first is gone; a FILE region that
// runs past the file's end is refused. Skips (saying why) where NIXL is not installed.
import { after, before, describe, test } from "./helpers/skip.ts";
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync, statSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Buffer } from "node:buffer";
import { DescList, type HostBuffer, NixlAgent, NixlError } from "../src/agent.ts";
import { closeFile, openFile } from "../src/agent/files.ts";
import { fillRandom, nixlSkip, reportSkip, uniqueName } from "./helpers/nixl_env.ts";

reportSkip("nixl_storage_test");

const PAGE = 64 * 1024;
const PAGES = 256; // 16 MiB

describe("nixl engine: POSIX storage through NIXL", { skip: nixlSkip }, () => {
  let dir: string;
  let agent: NixlAgent;
  let buf: HostBuffer;
  before(async () => {
    dir = mkdtempSync(join(tmpdir(), "kvport-nixl-storage-"));
    agent = await NixlAgent.create({
      name: uniqueName("nixl-store"),
      engine: "nixl",
      backends: ["UCX", "POSIX"],
    });
    buf = agent.allocate(PAGE * PAGES);
    agent.registerMemory(buf);
  });
  after(async () => {
    await agent?.close();
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  test("the agent serves POSIX through NIXL's plugin", () => {
    const info = agent.info();
    assert.equal(info.engine, "nixl");
    assert.equal(info.backends, "UCX,POSIX");
    assert.match(info["backend.POSIX"] ?? "", /FILE/);
  });

  test("DRAM -> FILE -> DRAM, shuffled pages, every page checked; another process reads the file", async () => {
    const path = join(dir, "slots.bin");
    const file = openFile(agent, path, { create: true, size: PAGE * PAGES });
    const reg = agent.registerMemory([{ fd: file.fd, offset: 0, length: PAGE * PAGES }]);
    using memList = DescList.pages(buf, PAGE, PAGES);
    using fileList = DescList.pages({ fd: file.fd }, PAGE, PAGES);
    const local = agent.prepDescList("", memList);
    const remote = agent.prepDescList(agent.name, fileList); // loopback
    try {
      fillRandom(buf.bytes);
      const slots = new Uint32Array(PAGES).map((_, i) => (i * 37) % PAGES); // a permutation
      const pages = new Uint32Array(PAGES).map((_, i) => i);
      await agent.transfer("WRITE", local, pages, remote, slots, { timeoutMs: 30_000 });
      const want = Array.from(pages, (i) => buf.checksum(i * PAGE, PAGE));

      // The bytes are in the file, where the slots say.
      const onDisk = readFileSync(path);
      for (let i = 0; i < PAGES; i += 17) {
        const s = slots[i];
        assert.deepEqual(
          onDisk.subarray(s * PAGE, (s + 1) * PAGE),
          Buffer.from(buf.bytes.subarray(i * PAGE, (i + 1) * PAGE)),
          `page ${i} in slot ${s}`,
        );
      }
      // ... for another process too.
      const other = spawnSync(
        "cmp",
        ["-n", String(PAGE), "-i", `${slots[1] * PAGE}:0`, path, "-"],
        {
          input: Buffer.from(buf.bytes.subarray(PAGE, 2 * PAGE)),
        },
      );
      if (other.error === undefined) assert.equal(other.status, 0, "cmp sees the page");

      buf.bytes.fill(0);
      await agent.transfer("READ", local, pages, remote, slots, { timeoutMs: 30_000 });
      assert.deepEqual(Array.from(pages, (i) => buf.checksum(i * PAGE, PAGE)), want);
    } finally {
      remote.release();
      local.release();
      reg.deregister();
      closeFile(agent, file);
    }
  });

  test("a new agent reads what a destroyed one wrote", async () => {
    const path = join(dir, "survive.bin");
    const f1 = openFile(agent, path, { create: true, size: PAGE * 8 });
    const r1 = agent.registerMemory([{ fd: f1.fd, offset: 0, length: 0 }]); // 0: to EOF
    using m1 = DescList.pages(buf, PAGE, 8);
    using fl1 = DescList.pages({ fd: f1.fd }, PAGE, 8);
    const l1 = agent.prepDescList("", m1);
    const d1 = agent.prepDescList(agent.name, fl1);
    fillRandom(buf.bytes.subarray(0, 8 * PAGE));
    const want = Array.from({ length: 8 }, (_, i) => buf.checksum(i * PAGE, PAGE));
    await agent.transfer("WRITE", l1, [0, 1, 2, 3, 4, 5, 6, 7], d1, [7, 6, 5, 4, 3, 2, 1, 0]);
    d1.release();
    l1.release();
    r1.deregister();
    closeFile(agent, f1);
    assert.equal(statSync(path).size, 8 * PAGE);

    await using second = await NixlAgent.create({
      name: uniqueName("nixl-store-2"),
      engine: "nixl",
      backends: ["POSIX"],
    });
    const b2 = second.allocate(8 * PAGE);
    second.registerMemory(b2);
    const f2 = openFile(second, path);
    const r2 = second.registerMemory([{ fd: f2.fd, offset: 0, length: 8 * PAGE }]);
    using m2 = DescList.pages(b2, PAGE, 8);
    using fl2 = DescList.pages({ fd: f2.fd }, PAGE, 8);
    const l2 = second.prepDescList("", m2);
    const d2 = second.prepDescList(second.name, fl2);
    await second.transfer("READ", l2, [0, 1, 2, 3, 4, 5, 6, 7], d2, [7, 6, 5, 4, 3, 2, 1, 0]);
    assert.deepEqual(Array.from({ length: 8 }, (_, i) => b2.checksum(i * PAGE, PAGE)), want);
    d2.release();
    l2.release();
    r2.deregister(); // a registered file cannot be closed (ABI 2 file handles)
    closeFile(second, f2);
  });

  test("a file descriptor outside the registered file range is NIXL_ERR_INVALID_PARAM", () => {
    const path = join(dir, "small.bin");
    const f = openFile(agent, path, { create: true, size: PAGE });
    const reg = agent.registerMemory([{ fd: f.fd, offset: 0, length: PAGE }]);
    try {
      using bad = DescList.pages({ fd: f.fd }, PAGE, 2);
      assert.throws(
        () => agent.prepDescList(agent.name, bad),
        (e: unknown) =>
          e instanceof NixlError && e.statusName === "NIXL_ERR_INVALID_PARAM" &&
          /descriptor 1 /.test(e.message),
      );
    } finally {
      reg.deregister();
      closeFile(agent, f);
    }
  });

  test("an agent with POSIX only has no notifications to take (NIXL's own status)", async () => {
    await using lone = await NixlAgent.create({
      name: uniqueName("nixl-posix-only"),
      engine: "nixl",
      backends: ["POSIX"],
    });
    assert.throws(
      () => lone.takeNotifications(),
      (e: unknown) => e instanceof NixlError && e.statusName === "NIXL_ERR_BACKEND",
    );
  });
});
