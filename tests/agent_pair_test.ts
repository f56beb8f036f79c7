// Two processes on one machine (builtin engine): this test process and a spawned peer
// exchange metadata, then WRITE and READ pages from 1 B to 64 MiB in batches of 1 to
// 4096 descriptors, every page checked by checksum; once over the same-host path (UCX)
// and once forced over TCP on loopback. Notifications arrive once and after their
// data; a stopped peer times a transfer out; a killed peer fails it with
// NIXL_ERR_REMOTE_DISCONNECT within the timeout.
import { after, before, describe, test } from "./helpers/skip.ts";
import assert from "node:assert/strict";
import { DescList, type HostBuffer, NixlAgent, NixlError, NixlTimeoutError } from "../src/agent.ts";
import { nativeSkip, type Peer, spawnPeer } from "./helpers/agent_pair.ts";
import {
  checkNotifiedWrite,
  checkPeerDescList,
  indices,
  linkPeer,
  ranges,
} from "./helpers/pair_checks.ts";

if (nativeSkip) console.log(`agent_pair_test skipped: ${nativeSkip}`);

const MiB = 1 << 20;
const SIZE = 128 * MiB;
const TCP_PARAMS = { listen_host: "127.0.0.1", advertise_host: "127.0.0.1" };

/** Page size, pages per request, and whether the indices are shuffled. */
const CASES: { page: number; count: number; shuffle: boolean }[] = [
  { page: 1, count: 1, shuffle: false },
  { page: 1, count: 4096, shuffle: true },
  { page: 3, count: 1000, shuffle: true },
  { page: 4096, count: 4096, shuffle: false },
  { page: 4097, count: 333, shuffle: true },
  { page: 65536, count: 1024, shuffle: true },
  { page: MiB, count: 64, shuffle: false },
  { page: 64 * MiB, count: 1, shuffle: false },
];

interface Side {
  agent: NixlAgent;
  buf: HostBuffer;
  peer: Peer;
}

async function setUp(tag: string, backends: string[], params?: Record<string, string>) {
  const stamp = `${Date.now()}-${Math.floor(Math.random() * 1e6)}`;
  const peer = await spawnPeer({ name: `peer-${tag}-${stamp}`, backends, params, size: SIZE });
  const agent = await NixlAgent.create({
    name: `main-${tag}-${stamp}`,
    engine: "builtin",
    backends,
    params,
  });
  const buf = await linkPeer(agent, peer, SIZE);
  return { agent, buf, peer };
}

function transportSuite(tag: string, backends: string[], params?: Record<string, string>) {
  describe(`two processes over ${tag}`, { skip: nativeSkip }, () => {
    let s: Side;
    before(async () => {
      s = await setUp(tag, backends, params);
    });
    after(async () => {
      await s?.peer.stop();
      await s?.agent.close();
    });

    test("the peer's serialized page list prepares and transfers", async () => {
      await checkPeerDescList(s.agent, s.buf, s.peer);
    });

    for (const { page, count, shuffle } of CASES) {
      const label = `${count} x ${page} B${shuffle ? " shuffled" : ""}`;
      test(`WRITE then READ ${label}: every page checked`, async () => {
        const { agent, buf, peer } = s;
        using localList = DescList.pages(buf, page, count);
        using remoteList = DescList.pages({ address: peer.address }, page, count);
        const local = agent.prepDescList("", localList);
        const remote = agent.prepDescList(peer.name, remoteList);
        try {
          // WRITE: local random pages -> shuffled remote pages, with a notification the
          // peer checksums its pages on arrival (the data must already be there).
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
            lingerMs: 20,
          });

          // READ: peer's fresh random pages -> local pages in another order.
          await peer.call("fill", { offset: 0, length: page * count });
          const li2 = indices(count, shuffle);
          const ri2 = indices(count, shuffle);
          const { sums } = await peer.call("sums", { ranges: ranges(page, ri2) });
          await agent.transfer("READ", local, li2, remote, ri2, { timeoutMs: 20_000 });
          assert.deepEqual(
            Array.from(li2, (i) => buf.checksum(i * page, page).toString(16)),
            sums,
          );
        } finally {
          local.release();
          remote.release();
        }
      });
    }

    test("notifications between processes arrive in order, each once", async () => {
      const { agent, peer } = s;
      agent.takeNotifications();
      for (let i = 0; i < 20; i++) {
        await peer.call("notify", { remote: agent.name, message: `n${i}` });
      }
      const got: string[] = [];
      const deadline = Date.now() + 10_000;
      while (got.length < 20 && Date.now() < deadline) {
        for (const n of await agent.waitNotifications(1000)) {
          assert.equal(n.agent, peer.name);
          got.push(new TextDecoder().decode(n.message));
        }
      }
      assert.deepEqual(got, Array.from({ length: 20 }, (_, i) => `n${i}`));
      assert.deepEqual(await agent.waitNotifications(20), []);
    });

    test(`the transfers went over ${tag === "TCP" ? "TCP only" : "the same-host path"}`, () => {
      const info = s.agent.info();
      const tcp = Number(info.posts_tcp);
      const sameHost = Number(info.posts_mem) + Number(info.posts_cma) +
        Number(info.posts_inline);
      if (tag === "TCP") {
        assert.ok(tcp > 0 && sameHost === 0, JSON.stringify(info));
      } else {
        assert.ok(sameHost > 0 && tcp === 0, JSON.stringify(info));
      }
    });
  });
}

transportSuite("UCX", ["UCX"]);
transportSuite("TCP", ["TCP"], TCP_PARAMS);

async function failurePair() {
  const s = await setUp("fail", ["TCP"], TCP_PARAMS);
  const local = s.agent.prepDescList("", DescList.pages(s.buf, 4 * MiB, 32));
  const remote = s.agent.prepDescList(
    s.peer.name,
    DescList.pages({ address: s.peer.address }, 4 * MiB, 32),
  );
  return { ...s, local, remote };
}

async function tearDown(s: Side | undefined) {
  if (!s) return;
  s.peer.signal("SIGCONT");
  s.peer.signal("SIGKILL");
  await s.peer.exited;
  await s.agent.close();
}

const all = new Uint32Array(32).map((_, i) => i);

describe("peer failures over TCP", { skip: nativeSkip }, () => {
  test("a stopped peer times the transfer out; the request is released", async () => {
    const s = await failurePair();
    const { agent, peer, local, remote } = s;
    try {
      await agent.transfer("WRITE", local, all, remote, all); // connected and warm
      peer.signal("SIGSTOP");
      const t0 = performance.now();
      await assert.rejects(
        agent.transfer("WRITE", local, all, remote, all, { timeoutMs: 300 }),
        (e: NixlTimeoutError) => {
          assert.ok(e instanceof NixlTimeoutError, String(e));
          assert.equal(e.op, "WRITE");
          assert.equal(e.peer, peer.name);
          assert.equal(e.count, 32);
          assert.equal(e.timeoutMs, 300);
          assert.match(e.message, /cancelled and released/);
          return true;
        },
      );
      const took = performance.now() - t0;
      assert.ok(took >= 290 && took < 3000, `timed out after ${took} ms`);
      const ac = new AbortController();
      setTimeout(() => ac.abort(new Error("stop waiting")), 50);
      await assert.rejects(
        agent.transfer("WRITE", local, all, remote, all, { signal: ac.signal }),
        /stop waiting/,
      );
      peer.signal("SIGCONT");
      // The connection survives cancelled requests.
      await agent.transfer("WRITE", local, [0], remote, [0], { timeoutMs: 5_000 });
    } finally {
      await tearDown(s);
    }
  });

  test("a peer killed mid-transfer fails it with NIXL_ERR_REMOTE_DISCONNECT in time", async () => {
    const s = await failurePair();
    const { agent, peer, local, remote } = s;
    try {
      const timeoutMs = 10_000;
      await agent.transfer("WRITE", local, all, remote, all, { timeoutMs }); // connected
      const t0 = performance.now();
      let error: unknown;
      let transfers = 0;
      setTimeout(() => peer.signal("SIGKILL"), 20);
      while (performance.now() - t0 < timeoutMs) {
        try {
          await agent.transfer("WRITE", local, all, remote, all, { timeoutMs });
          transfers++;
        } catch (e) {
          error = e;
          break;
        }
      }
      const took = performance.now() - t0;
      assert.ok(error instanceof NixlError, `expected a NixlError, got ${error}`);
      assert.equal(error.statusName, "NIXL_ERR_REMOTE_DISCONNECT", error.message);
      assert.ok(took < timeoutMs, `failed after ${took} ms (${transfers} transfers before)`);
      // And so does the next one, at once.
      await assert.rejects(
        agent.transfer("READ", local, [0], remote, [0], { timeoutMs }),
        (e: NixlError) => e.statusName === "NIXL_ERR_REMOTE_DISCONNECT",
      );
    } finally {
      await tearDown(s);
    }
  });
});
