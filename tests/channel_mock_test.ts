import { test } from "node:test";
import assert from "node:assert/strict";
import * as net from "node:net";
import {
  ChannelError,
  ChannelTimeoutError,
  createTransferChannel,
  type CreateTransferChannelOptions,
  type TransferChannel,
} from "../mod.ts";
import { alignBuffer } from "../src/channel/factory.ts";
import { mockMemoryStore } from "../src/channel/mock_memory.ts";
import { RepSocket } from "../src/channel/wire/mod.ts";

const base = {
  channelType: "mock_memory",
  bufferSize: 8 * 1024,
  alignBytes: 1024,
  tpRank: 0,
} as const;

function rx(extra: Partial<CreateTransferChannelOptions> = {}): Promise<TransferChannel> {
  return createTransferChannel({ ...base, role: "receiver", peerInitUrl: "127.0.0.1:0", ...extra });
}

function tx(extra: Partial<CreateTransferChannelOptions> = {}): Promise<TransferChannel> {
  return createTransferChannel({ ...base, role: "sender", peerInitUrl: null, ...extra });
}

test("channel: unknown channel type fails with LMCache's message and the supported list", async () => {
  await assert.rejects(
    createTransferChannel({ ...base, channelType: "tcp", role: "sender", peerInitUrl: null }),
    { message: "Unsupported channel type: tcp (supported: nixl, mock_memory)" },
  );
});

test("channel: nixl without a backends key fails as LMCache does", async () => {
  await assert.rejects(
    createTransferChannel({ ...base, channelType: "nixl", role: "sender", peerInitUrl: null }),
    { message: "`backends` must be provided to create nixl transfer channel." },
  );
});

test("channel: a buffer size not a multiple of the page is aligned down, warned about only when that costs a tenth", async () => {
  await using ch = await tx({ bufferSize: 8 * 1024 + 100 });
  assert.equal(ch.pageCount, 8);
  assert.equal(ch.pages.length, 8);
  assert.equal(ch.pages[7].byteLength, 1024);
  assert.deepEqual(ch.warnings, [], "100 of 8292 bytes unused (1%) is not worth a warning");
  await using lossy = await tx({ bufferSize: 2 * 1024 + 900 });
  assert.equal(lossy.pageCount, 2);
  assert.equal(lossy.warnings.length, 1);
  assert.match(lossy.warnings[0], /holds 2 whole page\(s\) of 1024 bytes: 900 bytes \(31%\)/);
  // LMCache's own 1p1d decoder: 2 GB of 28 MiB chunks leaves 4 MiB (0.2%) over.
  assert.deepEqual(alignBuffer(2147483648, 28 << 20), { pageCount: 73, warnings: [] });
  await assert.rejects(tx({ bufferSize: 100 }), /smaller than one page of 1024 bytes/);
});

test("channel: mock_memory refuses a cuda buffer clearly", async () => {
  await assert.rejects(tx({ device: "cuda" }), (e: unknown) => {
    assert.ok(e instanceof ChannelError);
    assert.equal(e.code, "DEVICE_UNAVAILABLE");
    assert.match(e.message, /use device "cpu"/);
    return true;
  });
});

test("channel: handshake, WRITE and READ of page batches by index and by view", async () => {
  await using r = await rx();
  await using s = await tx();
  assert.ok(r.initUrl);
  assert.equal(s.initUrl, null);
  assert.equal(await s.connect("r", r.initUrl!), null);
  assert.ok(s.hasPeer("r"));
  // The responder knows the initiator under its local_id.
  assert.ok(r.hasPeer(s.localId));
  s.pages[0].fill(1);
  s.pages[1].fill(2);
  s.pages[2].fill(3);
  assert.equal(await s.write([0, 1, 2], { peerId: "r", remoteIndexes: [7, 5, 6] }), 3);
  assert.deepEqual([r.pages[7][0], r.pages[5][1023], r.pages[6][10]], [1, 2, 3]);
  // By page view.
  s.pages[3].fill(9);
  assert.equal(await s.write([s.pages[3]], { peerId: "r", remoteIndexes: [0] }), 1);
  assert.equal(r.pages[0][512], 9);
  // READ back into other local pages.
  r.pages[4].fill(44);
  assert.equal(await s.read([6, 7], { peerId: "r", remoteIndexes: [4, 7] }), 2);
  assert.equal(s.pages[6][0], 44);
  assert.equal(s.pages[7][0], 1);
  // The responder can write into the initiator's pages too (bidirectional).
  r.pages[2].fill(77);
  await r.write([2], { peerId: s.localId, remoteIndexes: [5] });
  assert.equal(s.pages[5][100], 77);
  assert.equal(await s.write([], { peerId: "r", remoteIndexes: [] }), 0);
});

test("channel: bad transfer arguments name the problem", async () => {
  await using r = await rx();
  await using s = await tx();
  await s.connect("r", r.initUrl!);
  await assert.rejects(s.write([0], { peerId: "nobody", remoteIndexes: [0] }), {
    code: "UNKNOWN_PEER",
  });
  await assert.rejects(
    s.write([0, 1], { peerId: "r", remoteIndexes: [0] }),
    /2 local page\(s\) but 1 remote index/,
  );
  await assert.rejects(s.write([0], { peerId: "r", remoteIndexes: [8] }), /outside 0\.\.7/);
  await assert.rejects(s.write([0], { peerId: "r", remoteIndexes: [0.5] }), /index 0.5 is outside/);
  // A missing list is a typed refusal naming the field (it was a TypeError of a spread).
  await assert.rejects(
    s.write([0], { peerId: "r" } as unknown as Parameters<typeof s.write>[1]),
    (e: unknown) =>
      e instanceof ChannelError && e.code === "INVALID_ARGUMENT" &&
      /remoteIndexes must be a list of page indexes, got undefined/.test(e.message),
  );
  await assert.rejects(s.write([9], { peerId: "r", remoteIndexes: [0] }), /outside 0\.\.7/);
  await assert.rejects(
    s.write([new Uint8Array(1024)], { peerId: "r", remoteIndexes: [0] }),
    /not a page view of this channel's buffer/,
  );
  await assert.rejects(
    s.write([0], { peerId: "r", remoteIndexes: [0], notification: new Uint8Array(70_000) }),
    /exceeds 64 KiB/,
  );
});

test("channel: a WRITE's notification arrives after its data", async () => {
  await using r = await rx();
  await using s = await tx();
  await s.connect("r", r.initUrl!);
  const seen: Array<{ from: string; text: string; data: number }> = [];
  const got = new Promise<void>((resolve) => {
    r.onNotification((n) => {
      seen.push({
        from: n.from,
        text: new TextDecoder().decode(n.message),
        data: r.pages[3][0],
      });
      resolve();
    });
  });
  s.pages[0].fill(5);
  await s.write([0], {
    peerId: "r",
    remoteIndexes: [3],
    notification: new TextEncoder().encode("done"),
  });
  await got;
  assert.deepEqual(seen, [{ from: s.agentName, text: "done", data: 5 }]);
});

test("channel: the optional side message travels on the handshake connection", async () => {
  await using r = await rx();
  await using s = await tx();
  r.onSideMessage((m) => {
    assert.equal(m.type, "P2PInitSideMsg");
    return { type: "P2PInitSideRetMsg", peer_lookup_url: "10.0.0.2:8300" };
  });
  const reply = await s.connect("r", r.initUrl!, { sideMessage: { type: "P2PInitSideMsg" } });
  assert.deepEqual(reply, { type: "P2PInitSideRetMsg", peer_lookup_url: "10.0.0.2:8300" });
});

test("channel: a side message without a handler is refused with the reason", async () => {
  await using r = await rx();
  await using s = await tx();
  await assert.rejects(
    s.connect("r", r.initUrl!, { sideMessage: { type: "P2PInitSideMsg" } }),
    (e: unknown) => {
      assert.ok(e instanceof ChannelError);
      assert.equal(e.code, "HANDSHAKE_FAILED");
      assert.equal(e.peerId, "r");
      assert.match(e.message, /no side-message handler/);
      return true;
    },
  );
});

test("channel: a handshake with nobody listening times out naming the peer and URL", async () => {
  const port = await freePort();
  await using s = await tx();
  const t0 = performance.now();
  await assert.rejects(
    s.connect("ghost", `127.0.0.1:${port}`, { timeoutMs: 300 }),
    (e: unknown) => {
      assert.ok(e instanceof ChannelTimeoutError, String(e));
      assert.equal(e.peerId, "ghost");
      assert.equal(e.url, `127.0.0.1:${port}`);
      assert.match(
        e.message,
        /handshake with peer ghost at 127\.0\.0\.1:\d+ timed out after 300 ms/,
      );
      return true;
    },
  );
  assert.ok(performance.now() - t0 < 2000);
  assert.equal(s.hasPeer("ghost"), false);
});

test("channel: a responder that never answers makes the handshake time out, not hang", async () => {
  await using mute = await RepSocket.bind("tcp://127.0.0.1:0");
  await using s = await tx();
  await assert.rejects(
    s.connect("mute", `127.0.0.1:${mute.port}`, { timeoutMs: 300 }),
    (e: unknown) => {
      assert.ok(e instanceof ChannelTimeoutError);
      assert.match(e.message, /waiting for NixlInitResponse/);
      return true;
    },
  );
});

test("channel: a restarted peer is re-handshaken and its old handle released", async () => {
  const r1 = await rx();
  const url = r1.initUrl!;
  await using s = await tx();
  await s.connect("r", url);
  await s.write([0], { peerId: "r", remoteIndexes: [0] });
  const oldAgent = r1.agentName;
  await r1.close();
  assert.equal(mockMemoryStore.has(oldAgent), false);
  // The old incarnation is gone: a transfer fails clearly.
  await assert.rejects(s.write([0], { peerId: "r", remoteIndexes: [0] }), {
    code: "TRANSFER_FAILED",
  });
  await using r2 = await rx({ peerInitUrl: url });
  await s.connect("r", url);
  s.pages[1].fill(8);
  await s.write([1], { peerId: "r", remoteIndexes: [2] });
  assert.equal(r2.pages[2][0], 8);
  await s.forgetPeer("r");
  assert.equal(s.hasPeer("r"), false);
});

test("channel: concurrent callers are serialized and all complete", async () => {
  await using r = await rx({ bufferSize: 64 * 1024 });
  await using s = await tx({ bufferSize: 64 * 1024 });
  await s.connect("r", r.initUrl!);
  for (let i = 0; i < 64; i++) s.pages[i].fill(i);
  const writes = [];
  for (let i = 0; i < 64; i++) {
    writes.push(s.write([i], { peerId: "r", remoteIndexes: [63 - i] }));
  }
  assert.deepEqual(await Promise.all(writes), new Array(64).fill(1));
  for (let i = 0; i < 64; i++) assert.equal(r.pages[63 - i][7], i);
});

test("channel: close is idempotent and later calls fail CLOSED", async () => {
  const r = await rx();
  const s = await tx();
  await s.connect("r", r.initUrl!);
  await Promise.all([s.close(), s.close()]);
  await r.close();
  await assert.rejects(s.write([0], { peerId: "r", remoteIndexes: [0] }), { code: "CLOSED" });
  await assert.rejects(s.connect("r", "127.0.0.1:1"), { code: "CLOSED" });
});

function freePort(): Promise<number> {
  return new Promise((resolve) => {
    const srv = net.createServer();
    srv.listen(0, "127.0.0.1", () => {
      const port = (srv.address() as net.AddressInfo).port;
      srv.close(() => resolve(port));
    });
  });
}

test("channel: the peer table is bounded; the least recently used peer goes and can come back", async () => {
  const { MockMemoryChannel } = await import("../src/channel/mock_memory.ts");
  await using r = await MockMemoryChannel.create({
    role: "receiver",
    pageSize: 1024,
    pageCount: 8,
    peerInitUrl: "127.0.0.1:0",
    maxPeers: 3,
  });
  const senders = await Promise.all(
    [0, 1, 2, 3, 4].map(() =>
      MockMemoryChannel.create({ role: "sender", pageSize: 1024, pageCount: 8 })
    ),
  );
  try {
    const [a, b, c, d, e] = senders;
    for (const s of [a, b, c]) await s.connect("r", r.initUrl!);
    // The receiver uses a (a WRITE into it), so b is now the least recently used.
    r.pages[0].fill(0xa1);
    await r.write([0], { peerId: a.localId, remoteIndexes: [2] });
    assert.ok(a.pages[2].every((x) => x === 0xa1));
    assert.deepEqual(r.peerIds.sort(), [a, b, c].map((s) => s.localId).sort());
    for (const s of [d, e]) await s.connect("r", r.initUrl!);
    assert.equal(r.peerIds.length, 3, "never more than maxPeers");
    assert.deepEqual(r.peerIds, [a.localId, d.localId, e.localId], "b and c went first");
    // A forgotten sender handshakes again and its bytes land.
    b.pages[1].fill(0xb2);
    await b.connect("r", r.initUrl!);
    await b.write([1], { peerId: "r", remoteIndexes: [5] });
    assert.ok(r.pages[5].every((x) => x === 0xb2));
    assert.equal(r.peerIds.length, 3);
    assert.equal(r.hasPeer(b.localId), true);
    assert.equal(r.hasPeer(a.localId), false, "a was the least recently used by then");
  } finally {
    for (const s of senders) await s.close();
  }
});
