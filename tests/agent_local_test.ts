// NixlAgent within one process (builtin engine): lifecycle, memory, registration,
// descriptor lists, transfers between two in-process agents and loopback, notifications,
// and the error of every misuse (asserted by NIXL status name).
import { after, before, describe, test } from "./helpers/skip.ts";
import assert from "node:assert/strict";
import {
  DescList,
  HostBuffer,
  NixlAgent,
  NixlError,
  type PreparedDescList,
  Registration,
  TransferRequest,
} from "../src/agent.ts";
import { fillRandom, nativeSkip } from "./helpers/agent_pair.ts";

if (nativeSkip) console.log(`agent_local_test skipped: ${nativeSkip}`);

/** Asserts that `fn` throws (or rejects with) a NixlError of `statusName`. */
async function expectStatus(
  statusName: string,
  fn: () => unknown,
  message?: RegExp,
): Promise<NixlError> {
  let error: unknown;
  try {
    await fn();
  } catch (e) {
    error = e;
  }
  assert.ok(error instanceof NixlError, `expected a NixlError ${statusName}, got ${error}`);
  assert.equal(error.statusName, statusName, error.message);
  if (message) assert.match(error.message, message);
  return error;
}

/** 64-bit FNV-1a, as kvp_mem_checksum computes it. */
function fnv1a(bytes: Uint8Array): bigint {
  let h = 0xcbf29ce484222325n;
  for (const b of bytes) h = BigInt.asUintN(64, (h ^ BigInt(b)) * 0x100000001b3n);
  return h;
}

const PAGE = 4096;
const PAGES = 64;

describe("NixlAgent in one process", { skip: nativeSkip }, () => {
  let a: NixlAgent;
  let b: NixlAgent;
  let bufA: HostBuffer;
  let bufB: HostBuffer;
  let localA: PreparedDescList;
  let remoteB: PreparedDescList;

  before(async () => {
    a = await NixlAgent.create({ name: `local-a-${Date.now()}`, engine: "builtin" });
    b = await NixlAgent.create({ name: `local-b-${Date.now()}`, engine: "builtin" });
    bufA = a.allocate(PAGE * PAGES);
    bufB = b.allocate(PAGE * PAGES);
    a.registerMemory(bufA);
    b.registerMemory(bufB);
    assert.equal(a.addRemoteAgent(b.localMetadata()), b.name);
    localA = a.prepDescList("", DescList.pages(bufA, PAGE, PAGES));
    using theirs = DescList.deserialize(DescList.pages(bufB, PAGE, PAGES).serialize());
    remoteB = a.prepDescList(b.name, theirs);
  });

  after(async () => {
    await a?.close();
    await b?.close();
  });

  test("create reports the resolved engine, backends and listen address", () => {
    assert.equal(a.engine, "builtin");
    assert.deepEqual([...a.backends], ["UCX"]);
    assert.equal(a.info().name, a.name);
    assert.deepEqual(a.remoteAgents, [b.name]);
  });

  test("create refuses an unknown engine and backend with the right status", async () => {
    await expectStatus("NIXL_ERR_INVALID_PARAM", () => NixlAgent.create({ name: "" }));
    await expectStatus(
      "NIXL_ERR_NOT_SUPPORTED",
      () => NixlAgent.create({ name: "x-gds", engine: "builtin", backends: ["GDS"] }),
    );
  });

  test("allocate: bytes view native memory, checksum is FNV-1a, free detaches", () => {
    const buf = a.allocate(10_000);
    assert.ok(buf instanceof HostBuffer);
    assert.equal(buf.size, 10_000);
    assert.equal(buf.address % 4096n, 0n, "page-aligned");
    fillRandom(buf.bytes);
    assert.equal(buf.checksum(), fnv1a(buf.bytes));
    assert.equal(buf.checksum(17, 1000), fnv1a(buf.bytes.subarray(17, 1017)));
    const copy = new Uint8Array(100);
    buf.copyTo(copy, 50);
    assert.deepEqual(copy, buf.bytes.subarray(50, 150));
    const view = buf.bytes;
    buf.free();
    assert.equal(view.length, 0, "a freed buffer's view is detached");
    buf.free(); // idempotent
    assert.throws(() => buf.checksum(), NixlError);
  });

  test("allocate shared: false gives private memory that moves bytes like shared memory", async () => {
    const PAGE_SIZE = 1 << 16;
    const src = a.allocate(4 * PAGE_SIZE, { shared: false });
    const dst = b.allocate(4 * PAGE_SIZE);
    try {
      assert.equal(src.address % 4096n, 0n, "page-aligned");
      fillRandom(src.bytes);
      assert.equal(src.checksum(), fnv1a(src.bytes));
      const regSrc = a.registerMemory(src);
      const regDst = b.registerMemory(dst);
      a.addRemoteAgent(b.localMetadata());
      using ls = DescList.pages(src, PAGE_SIZE, 4);
      using rs = DescList.pages(dst, PAGE_SIZE, 4);
      const local = a.prepDescList("", ls);
      const remote = a.prepDescList(b.name, rs);
      await a.transfer("WRITE", local, [0, 1, 2, 3], remote, [3, 2, 1, 0], { timeoutMs: 5000 });
      for (let i = 0; i < 4; i++) {
        assert.equal(
          dst.checksum((3 - i) * PAGE_SIZE, PAGE_SIZE),
          src.checksum(i * PAGE_SIZE, PAGE_SIZE),
        );
      }
      local.release();
      remote.release();
      a.deregisterMemory(regSrc);
      b.deregisterMemory(regDst);
    } finally {
      src.free();
      dst.free();
    }
  });

  test("allocate refuses bad sizes and types", async () => {
    await expectStatus("NIXL_ERR_INVALID_PARAM", () => a.allocate(0));
    await expectStatus("NIXL_ERR_INVALID_PARAM", () => a.allocate(-1));
    await expectStatus(
      "NIXL_ERR_INVALID_PARAM",
      () => a.allocate(1, { memType: "FILE" as "DRAM" }),
    );
  });

  test("registerMemory takes buffers, Uint8Arrays, regions and typed arrays", async () => {
    const buf = a.allocate(8192);
    const r1 = a.registerMemory(buf);
    assert.ok(r1 instanceof Registration);
    await expectStatus("NIXL_ERR_NOT_ALLOWED", () => buf.free(), /deregister it first/);
    r1.deregister();
    await expectStatus("NIXL_ERR_NOT_FOUND", () => r1.deregister());
    const js = new Uint8Array(12_345);
    const r2 = a.registerMemory(js);
    assert.equal(r2.memType, "DRAM");
    const r3 = a.registerMemory([
      { address: buf.address, length: 4096 },
      { address: buf.address + 4096n, length: 4096n },
    ]);
    assert.equal(r3.count, 2);
    const r4 = a.registerMemory({
      addrs: new BigUint64Array([buf.address]),
      lens: new BigUint64Array([8192n]),
    });
    for (const r of [r2, r3, r4]) a.deregisterMemory(r);
    buf.free();
    await expectStatus("NIXL_ERR_INVALID_PARAM", () => a.registerMemory(new Uint8Array(0)));
    await expectStatus(
      "NIXL_ERR_MISMATCH",
      () => a.registerMemory({ addrs: new BigUint64Array(2), lens: new BigUint64Array(1) }),
    );
  });

  test("DescList: bulk build, serialize round trip, malformed bytes", async () => {
    const n = 10_000;
    const addrs = new BigUint64Array(n).map((_, i) => bufA.address + BigInt(i % PAGES) * 4096n);
    using list = DescList.fromArrays("DRAM", {
      addrs,
      lens: new BigUint64Array(n).fill(4096n),
    });
    assert.equal(list.count, n);
    assert.equal(list.memType, "DRAM");
    using copy = DescList.deserialize(list.serialize());
    assert.equal(copy.count, n);
    assert.deepEqual(copy.serialize(), list.serialize());
    await expectStatus(
      "NIXL_ERR_MISMATCH",
      () => DescList.deserialize(new Uint8Array([1, 2, 3, 4, 5])),
    );
    await expectStatus(
      "NIXL_ERR_MISMATCH",
      () => DescList.fromArrays("DRAM", { addrs, lens: new BigUint64Array(3) }),
    );
    await expectStatus("NIXL_ERR_INVALID_PARAM", () => DescList.pages(bufA, PAGE, PAGES + 1));
    list.release();
    await expectStatus("NIXL_ERR_NOT_FOUND", () => list.serialize());
  });

  test("prepDescList: unregistered memory and unknown peers", async () => {
    const stray = new Uint8Array(4096);
    await expectStatus(
      "NIXL_ERR_INVALID_PARAM",
      () => a.prepDescList("", DescList.pages(stray, 4096, 1)),
    );
    await expectStatus(
      "NIXL_ERR_NOT_FOUND",
      () => a.prepDescList("nobody", DescList.pages(bufA, PAGE, 1)),
    );
    await expectStatus(
      "NIXL_ERR_INVALID_PARAM",
      () => a.prepDescList(b.name, DescList.pages({ address: 4096n }, PAGE, 1)),
    );
  });

  test("WRITE and READ between two agents move every byte", async () => {
    fillRandom(bufA.bytes);
    const idx = Array.from({ length: PAGES }, (_, i) => i);
    const shuffled = idx.slice().sort(() => Math.random() - 0.5);
    await a.transfer("WRITE", localA, idx, remoteB, shuffled);
    for (let i = 0; i < PAGES; i++) {
      const src = bufA.bytes.subarray(i * PAGE, (i + 1) * PAGE);
      const dst = bufB.bytes.subarray(shuffled[i] * PAGE, (shuffled[i] + 1) * PAGE);
      assert.deepEqual(dst, src, `page ${i} -> ${shuffled[i]}`);
    }
    fillRandom(bufB.bytes);
    await a.transfer("READ", localA, shuffled, remoteB, idx, { timeoutMs: 5000 });
    for (let i = 0; i < PAGES; i++) {
      assert.equal(bufA.checksum(shuffled[i] * PAGE, PAGE), bufB.checksum(i * PAGE, PAGE));
    }
  });

  test("loopback: an agent transfers between its own regions", async () => {
    using self = DescList.pages(bufA, PAGE, PAGES);
    const loop = a.prepDescList(a.name, self);
    fillRandom(bufA.bytes.subarray(0, PAGE));
    await a.transfer("WRITE", localA, [0], loop, [PAGES - 1]);
    assert.deepEqual(bufA.bytes.subarray((PAGES - 1) * PAGE), bufA.bytes.subarray(0, PAGE));
    loop.release();
  });

  test("a reusable TransferRequest posts, waits and reposts", async () => {
    using req = a.createTransfer("WRITE", localA, [1, 2], remoteB, [3, 4]);
    assert.ok(req instanceof TransferRequest);
    for (let i = 0; i < 50; i++) {
      bufA.bytes[PAGE] = i;
      if (req.post() === "pending") await req.wait(5000);
      assert.equal(req.status(), "done");
      assert.equal(bufB.bytes[3 * PAGE], i);
    }
    req.release();
    await expectStatus("NIXL_ERR_NOT_FOUND", () => req.post());
    req.release(); // idempotent
  });

  test("misuse: out-of-range index, mismatched lengths and counts, released lists", async () => {
    await expectStatus(
      "NIXL_ERR_INVALID_PARAM",
      () => a.transfer("WRITE", localA, [PAGES], remoteB, [0]),
    );
    await expectStatus(
      "NIXL_ERR_INVALID_PARAM",
      () => a.transfer("WRITE", localA, [0], remoteB, [PAGES + 5]),
    );
    await expectStatus("NIXL_ERR_MISMATCH", () => a.transfer("READ", localA, [0, 1], remoteB, [0]));
    const wide = a.prepDescList(b.name, DescList.pages(bufB, 2 * PAGE, 2));
    await expectStatus("NIXL_ERR_MISMATCH", () => a.transfer("WRITE", localA, [0], wide, [0]));
    wide.release();
    await expectStatus("NIXL_ERR_NOT_FOUND", () => a.transfer("WRITE", localA, [0], wide, [0]));
    await expectStatus(
      "NIXL_ERR_INVALID_PARAM",
      () => a.transfer("COPY" as "READ", localA, [0], remoteB, [0]),
    );
    await expectStatus(
      "NIXL_ERR_INVALID_PARAM",
      () => a.transfer("WRITE", localA, [-1], remoteB, [0]),
    );
  });

  test("unknown remote: notifications, invalidation", async () => {
    await expectStatus("NIXL_ERR_NOT_FOUND", () => a.sendNotification("nobody", "hi"));
    await expectStatus("NIXL_ERR_NOT_FOUND", () => a.invalidateRemoteAgent("nobody"));
    await expectStatus("NIXL_ERR_MISMATCH", () => a.addRemoteAgent(new Uint8Array([9, 9, 9])));
  });

  test("invalidating a peer fails its lists with NIXL_ERR_NOT_FOUND; it can be re-added", async () => {
    const c = await NixlAgent.create({ name: `local-inv-${Date.now()}`, engine: "builtin" });
    try {
      const buf = c.allocate(PAGE * 2);
      c.registerMemory(buf);
      assert.equal(c.addRemoteAgent(b.localMetadata()), b.name);
      assert.equal(c.addRemoteAgent(b.localMetadata()), b.name, "loading again is a no-op");
      const local = c.prepDescList("", DescList.pages(buf, PAGE, 2));
      const remote = c.prepDescList(b.name, DescList.pages(bufB, PAGE, 2));
      await c.transfer("WRITE", local, [0], remote, [0]);
      c.invalidateRemoteAgent(b.name);
      assert.deepEqual(c.remoteAgents, []);
      await expectStatus("NIXL_ERR_NOT_FOUND", () => c.transfer("WRITE", local, [0], remote, [0]));
      await expectStatus("NIXL_ERR_NOT_FOUND", () => c.sendNotification(b.name, "x"));
      c.addRemoteAgent(b.localMetadata());
      const again = c.prepDescList(b.name, DescList.pages(bufB, PAGE, 2));
      await c.transfer("WRITE", local, [1], again, [1]);
    } finally {
      await c.close();
    }
  });

  test("notifications arrive once, after the data of their transfer", async () => {
    assert.deepEqual(b.takeNotifications(), []);
    bufA.bytes.fill(0xab, 0, PAGE);
    await a.transfer("WRITE", localA, [0], remoteB, [9], { notification: "page-9" });
    const got = await b.waitNotifications(5000);
    assert.equal(got.length, 1);
    assert.equal(got[0].agent, a.name);
    assert.equal(new TextDecoder().decode(got[0].message), "page-9");
    assert.equal(bufB.bytes[9 * PAGE + PAGE - 1], 0xab);
    assert.deepEqual(b.takeNotifications(), [], "delivered once");
    b.addRemoteAgent(a.localMetadata());
    const big = new Uint8Array(65536).fill(7);
    b.sendNotification(a.name, big);
    b.sendNotification(a.name, "second");
    const notes = await a.waitNotifications(5000);
    if (notes.length < 2) notes.push(...(await a.waitNotifications(5000)));
    assert.deepEqual(notes.map((n) => n.message.length), [65536, 6]);
    assert.deepEqual(notes[0].message, big);
    await expectStatus(
      "NIXL_ERR_INVALID_PARAM",
      () => b.sendNotification(a.name, new Uint8Array(65537)),
    );
    const t0 = performance.now();
    assert.deepEqual(await b.waitNotifications(30), []);
    assert.ok(performance.now() - t0 >= 25, "waited for the timeout");
  });

  test("close releases everything, is idempotent, and later use is NIXL_ERR_NOT_FOUND", async () => {
    const c = await NixlAgent.create({ name: `local-c-${Date.now()}`, engine: "builtin" });
    const buf = c.allocate(4 * PAGE);
    const js = new Uint8Array(PAGE);
    const reg = c.registerMemory(buf);
    c.registerMemory(js);
    c.addRemoteAgent(b.localMetadata());
    const local = c.prepDescList("", DescList.pages(buf, PAGE, 4));
    const remote = c.prepDescList(b.name, DescList.pages(bufB, PAGE, 4));
    const req = c.createTransfer("WRITE", local, [0], remote, [0]);
    await c.close();
    await c.close();
    await c[Symbol.asyncDispose]();
    assert.ok(req.released && local.released && remote.released && reg.released);
    assert.ok(buf.freed, "agent-allocated buffers are freed");
    await expectStatus("NIXL_ERR_NOT_FOUND", () => c.localMetadata(), /is closed/);
    await expectStatus("NIXL_ERR_NOT_FOUND", () => req.post());
  });
});
