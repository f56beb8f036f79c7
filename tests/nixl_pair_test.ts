// Two processes over a real NIXL (engine "nixl"): this test process and a spawned peer
// exchange metadata, then WRITE and READ pages through NIXL's UCX backend (same host:
// shared memory / cross-memory attach) and through UCX restricted to TCP on loopback
// (backend "TCP"), every page checked by checksum. Transfer-bound notifications arrive
// once and after their data; standalone notifications arrive in order. Skips (saying
// why) where NIXL is not installed.
import { after, before, describe, test } from "./helpers/skip.ts";
import assert from "node:assert/strict";
import { DescList, type HostBuffer, NixlAgent, NixlError } from "../src/agent.ts";
import {
  fillRandom,
  type NixlPeer,
  nixlSkip,
  reportSkip,
  spawnNixlPeer,
  uniqueName,
} from "./helpers/nixl_env.ts";
import {
  checkNotifiedWrite,
  checkPeerDescList,
  indices,
  linkPeer,
  ranges,
} from "./helpers/pair_checks.ts";

reportSkip("nixl_pair_test");

const MiB = 1 << 20;
const SIZE = 64 * MiB;

const CASES: { page: number; count: number; shuffle: boolean }[] = [
  { page: 1, count: 1, shuffle: false },
  { page: 3, count: 1000, shuffle: true },
  { page: 4096, count: 4096, shuffle: true },
  { page: 65536, count: 512, shuffle: true },
  { page: MiB, count: 32, shuffle: false },
  { page: 32 * MiB, count: 1, shuffle: false },
];

function suite(tag: string, backends: string[]) {
  describe(`nixl engine, two processes over ${tag}`, { skip: nixlSkip }, () => {
    let agent: NixlAgent;
    let buf: HostBuffer;
    let peer: NixlPeer;
    before(async () => {
      peer = await spawnNixlPeer({ name: uniqueName(`np-${tag}`), backends, size: SIZE });
      agent = await NixlAgent.create({ name: uniqueName(`nm-${tag}`), engine: "nixl", backends });
      buf = await linkPeer(agent, peer, SIZE);
    });
    after(async () => {
      await peer?.stop();
      await agent?.close();
    });

    test("both agents run on the nixl engine with the asked backends", () => {
      const info = agent.info();
      assert.equal(agent.engine, "nixl");
      assert.equal(info.engine, "nixl");
      assert.equal(info.backends, backends.join(","));
      assert.equal(peer.info.engine, "nixl");
      assert.match(info.nixl_version, /^\d+\.\d+/);
      assert.equal(info.progress_thread, "1");
    });

    test("the peer's serialized page list prepares and transfers", async () => {
      await checkPeerDescList(agent, buf, peer);
    });

    for (const { page, count, shuffle } of CASES) {
      const label = `${count} x ${page} B${shuffle ? " shuffled" : ""}`;
      test(`WRITE then READ ${label}: every page checked, notification after the data`, async () => {
        using localList = DescList.pages(buf, page, count);
        using remoteList = DescList.pages({ address: peer.address }, page, count);
        const local = agent.prepDescList("", localList);
        const remote = agent.prepDescList(peer.name, remoteList);
        try {
          const li = indices(count, shuffle);
          const ri = indices(count, shuffle);
          await checkNotifiedWrite({
            agent,
            buf,
            peer,
            local,
            remote,
            page,
            li,
            ri,
            label,
            lingerMs: 30,
          });

          // READ: the peer refills its pages; pull them into zeroed local pages.
          await peer.call("fill", { offset: 0, length: page * count });
          buf.bytes.fill(0, 0, page * count);
          await agent.transfer("READ", local, li, remote, ri, { timeoutMs: 20_000 });
          const { sums } = await peer.call("sums", { ranges: ranges(page, ri) });
          assert.deepEqual(
            Array.from(li, (i) => buf.checksum(i * page, page).toString(16)),
            sums,
          );
        } finally {
          remote.release();
          local.release();
        }
      });
    }

    test("a request can be posted again once done", async () => {
      using l = DescList.pages(buf, 4096, 8);
      using r = DescList.pages({ address: peer.address }, 4096, 8);
      const local = agent.prepDescList("", l);
      const remote = agent.prepDescList(peer.name, r);
      const req = agent.createTransfer("WRITE", local, [0, 1, 2, 3], remote, [4, 5, 6, 7]);
      try {
        for (let round = 0; round < 5; round++) {
          fillRandom(buf.bytes.subarray(0, 4 * 4096));
          if (req.post() !== "done") await req.wait(10_000);
          const { sums } = await peer.call("sums", { ranges: [[4 * 4096, 4 * 4096]] });
          assert.deepEqual(sums, [buf.checksum(0, 4 * 4096).toString(16)], `round ${round}`);
        }
      } finally {
        req.release();
        remote.release();
        local.release();
      }
    });

    test("standalone notifications arrive in order, both ways", async () => {
      const waiting = peer.call("waitNotif", { expect: "n-9", timeoutMs: 10_000, lingerMs: 30 });
      for (let i = 0; i < 10; i++) agent.sendNotification(peer.name, `n-${i}`);
      const got = await waiting;
      assert.deepEqual(
        got.seen,
        Array.from({ length: 10 }, (_, i) => `${agent.name}:n-${i}`),
      );
      await peer.call("notify", { remote: agent.name, message: "back" });
      const notes = await agent.waitNotifications(10_000);
      assert.equal(notes.length, 1);
      assert.equal(notes[0].agent, peer.name);
      assert.equal(new TextDecoder().decode(notes[0].message), "back");
    });

    test("a pair of descriptors of different lengths is NIXL_ERR_MISMATCH", () => {
      using l = DescList.fromArrays("DRAM", {
        addrs: BigUint64Array.of(buf.address),
        lens: BigUint64Array.of(4096n),
      });
      using r = DescList.fromArrays("DRAM", {
        addrs: BigUint64Array.of(peer.address),
        lens: BigUint64Array.of(8192n),
      });
      const local = agent.prepDescList("", l);
      const remote = agent.prepDescList(peer.name, r);
      try {
        assert.throws(
          () => agent.createTransfer("WRITE", local, [0], remote, [0]),
          (e: unknown) => e instanceof NixlError && e.statusName === "NIXL_ERR_MISMATCH",
        );
      } finally {
        remote.release();
        local.release();
      }
    });

    test("a remote descriptor outside the peer's memory is NIXL_ERR_INVALID_PARAM, named", () => {
      using r = DescList.fromArrays("DRAM", {
        addrs: BigUint64Array.of(peer.address, peer.address + BigInt(SIZE)),
        lens: BigUint64Array.of(4096n, 4096n),
      });
      assert.throws(
        () => agent.prepDescList(peer.name, r),
        (e: unknown) =>
          e instanceof NixlError && e.statusName === "NIXL_ERR_INVALID_PARAM" &&
          /descriptor 1 /.test(e.message),
      );
    });
  });
}

suite("UCX", ["UCX"]);
suite("TCP", ["TCP"]);
