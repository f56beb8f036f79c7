// The `nixl` channel over the built-in engine, in one process (two agents): handshake,
// page-batch WRITE/READ, notifications after the data, re-handshake of a restarted
// peer, a peer that is gone, timeouts, a cuda buffer without a GPU, and handles released
// on close.
import { skipFor, test } from "./helpers/skip.ts";
import assert from "node:assert/strict";
import {
  ChannelError,
  ChannelTimeoutError,
  createTransferChannel,
  type CreateTransferChannelOptions,
  cudaDevices,
  nativeLibrary,
  NixlChannel,
  type TransferChannel,
} from "../mod.ts";
import { decodeMessage, encodeMessage, RepSocket, ReqSocket } from "../src/channel/wire/mod.ts";

const skip: string | false = await nativeLibrary().then(
  () => false,
  (e) => `libkvport.so not loadable (build it: make -C native): ${String(e).split("\n")[0]}`,
);
if (skip) console.log(`channel_nixl_test skipped: ${skip}`);

const PAGE = 64 * 1024;
const base = {
  channelType: "nixl",
  bufferSize: 32 * PAGE,
  alignBytes: PAGE,
  tpRank: 0,
  backends: ["UCX"],
  // This file is about the built-in engine; where NIXL is installed `auto` would pick it
  // (tests/nixl_*_test.ts cover that engine).
  engine: "builtin",
} as const;

function rx(extra: Partial<CreateTransferChannelOptions> = {}): Promise<TransferChannel> {
  return createTransferChannel({ ...base, role: "receiver", peerInitUrl: "127.0.0.1:0", ...extra });
}

function tx(extra: Partial<CreateTransferChannelOptions> = {}): Promise<TransferChannel> {
  return createTransferChannel({ ...base, role: "sender", peerInitUrl: null, ...extra });
}

test("nixl channel: builtin engine serves UCX; handshake, WRITE, READ, notification", {
  skip,
}, async () => {
  await using r = await rx();
  await using s = await tx();
  assert.equal(r.engine, "builtin");
  assert.ok(r instanceof NixlChannel);
  await s.connect("decoder", r.initUrl!);
  assert.ok(s.hasPeer("decoder"));
  assert.ok(r.hasPeer(s.localId), "the responder prepared the initiator's pages");
  for (let i = 0; i < 8; i++) s.pages[i].fill(i + 1);
  const got = new Promise<{ text: string; firsts: number[] }>((resolve) => {
    r.onNotification((n) =>
      resolve({
        text: new TextDecoder().decode(n.message),
        firsts: [31, 30, 2, 3, 4, 5, 6, 7].map((p) => r.pages[p][PAGE - 1]),
      })
    );
  });
  const remote = [31, 30, 2, 3, 4, 5, 6, 7];
  assert.equal(
    await s.write([0, 1, 2, 3, 4, 5, 6, 7], {
      peerId: "decoder",
      remoteIndexes: remote,
      notification: new TextEncoder().encode("req-1 landed"),
    }),
    8,
  );
  const n = await got;
  assert.equal(n.text, "req-1 landed");
  assert.deepEqual(n.firsts, [1, 2, 3, 4, 5, 6, 7, 8], "the notification came after the data");
  // READ back from the responder into other local pages (page views accepted).
  r.pages[9].fill(99);
  assert.equal(
    await s.read([s.pages[20], s.pages[21]], { peerId: "decoder", remoteIndexes: [9, 31] }),
    2,
  );
  assert.equal(s.pages[20][123], 99);
  assert.equal(s.pages[21][0], 1);
  // The responder writes into the initiator's pages (it handshook both ways).
  r.pages[0].fill(5);
  await r.write([0], { peerId: s.localId, remoteIndexes: [17] });
  assert.equal(s.pages[17][PAGE - 1], 5);
});

test("nixl channel: concurrent writes from many callers all land", { skip }, async () => {
  await using r = await rx();
  await using s = await tx();
  await s.connect("d", r.initUrl!);
  for (let i = 0; i < 32; i++) s.pages[i].fill(i);
  const all = await Promise.all(
    Array.from({ length: 32 }, (_, i) => s.write([i], { peerId: "d", remoteIndexes: [31 - i] })),
  );
  assert.equal(all.reduce((a, b) => a + b, 0), 32);
  for (let i = 0; i < 32; i++) assert.equal(r.pages[31 - i][77], i);
});

test("nixl channel: a restarted peer is re-handshaken; the old incarnation is invalidated", {
  skip,
}, async () => {
  const r1 = await rx();
  const url = r1.initUrl!;
  await using s = await tx();
  await s.connect("d", url);
  await s.write([0], { peerId: "d", remoteIndexes: [0] });
  const oldName = r1.agentName;
  await r1.close();
  await using r2 = await rx({ peerInitUrl: url });
  assert.notEqual(r2.agentName, oldName);
  await s.connect("d", url);
  const agent = (s as NixlChannel).agent;
  assert.ok(agent.remoteAgents.includes(r2.agentName));
  assert.ok(!agent.remoteAgents.includes(oldName), "the old agent was invalidated");
  s.pages[3].fill(33);
  await s.write([3], { peerId: "d", remoteIndexes: [4] });
  assert.equal(r2.pages[4][0], 33);
  await s.forgetPeer("d");
  assert.deepEqual(agent.remoteAgents, []);
  await assert.rejects(s.write([0], { peerId: "d", remoteIndexes: [0] }), { code: "UNKNOWN_PEER" });
});

test("nixl channel: handshake timeouts name the peer, URL and stage", { skip }, async () => {
  await using mute = await RepSocket.bind("tcp://127.0.0.1:0");
  await using s = await tx();
  await assert.rejects(
    s.connect("mute", `127.0.0.1:${mute.port}`, { timeoutMs: 250 }),
    (e) => {
      assert.ok(e instanceof ChannelTimeoutError);
      assert.equal(e.peerId, "mute");
      assert.match(
        e.message,
        /127\.0\.0\.1:\d+ timed out after 250 ms: waiting for NixlInitResponse/,
      );
      return true;
    },
  );
});

test("nixl channel: a mock_memory peer is refused during the handshake", { skip }, async () => {
  await using mock = await createTransferChannel({
    ...base,
    channelType: "mock_memory",
    role: "receiver",
    peerInitUrl: "127.0.0.1:0",
  });
  await using s = await tx();
  await assert.rejects(s.connect("m", mock.initUrl!), { code: "HANDSHAKE_FAILED" });
});

const gpus = skip ? 0 : (await cudaDevices()).count;
test("nixl channel: device cuda without a GPU is a clear error", {
  skip: skip ||
    (gpus > 0
      ? skipFor("needs GPU", `runs without one; ${gpus} here: see channel_vram_test`)
      : false),
}, async () => {
  await assert.rejects(tx({ device: "cuda" }), (e) => {
    assert.ok(e instanceof ChannelError);
    assert.equal(e.code, "DEVICE_UNAVAILABLE");
    assert.match(e.message, /cuda:0/);
    assert.match(e.message, /pd_buffer_device "cpu"/);
    return true;
  });
  await assert.rejects(tx({ device: "tpu" }), /device must be "cpu", "cuda" or "cuda:N"/);
});

test("nixl channel: backends null means UCX; an unknown backend names the engine", {
  skip,
}, async () => {
  await using s = await tx({ backends: null });
  assert.equal(s.engine, "builtin");
  await assert.rejects(tx({ backends: ["GDS"] }), /GDS/);
});

test("nixl channel: corrupt metadata and page lists are refused; the responder goes on", {
  skip,
}, async () => {
  await using r = await rx();
  await using s = await tx();
  const meta = await (s as NixlChannel).agent.localMetadata();
  await using req = ReqSocket.connect(r.initUrl!, { timeoutMs: 3000 });
  const ask = async (m: Parameters<typeof encodeMessage>[0]) =>
    decodeMessage((await req.request(encodeMessage(m)))[0]);
  const bad: Uint8Array[] = [
    new Uint8Array(0),
    new Uint8Array(64).fill(0xab),
    meta.subarray(0, meta.length - 9),
    (() => {
      const m = meta.slice();
      m[m.length - 20] ^= 0xff; // checksum no longer matches
      return m;
    })(),
  ];
  for (const b of bad) {
    const reply = await ask({ type: "NixlInitRequest", local_meta_bytes: b });
    assert.equal(reply.type, "ErrorMsg", `metadata of ${b.length} bytes`);
  }
  const enc = new TextEncoder();
  for (
    const list of [new Uint8Array(3), new Uint8Array(1000).fill(7), new Uint8Array(0)]
  ) {
    const reply = await ask({
      type: "NixlMemRegRequest",
      remote_agent_name: enc.encode("nobody"),
      local_id: "x",
      local_xfer_dlist_bytes: list,
    });
    assert.equal(reply.type, "ErrorMsg");
  }
  assert.equal(r.hasPeer("x"), false);
  // A real peer still handshakes and moves data.
  await s.connect("d", r.initUrl!);
  s.pages[0].fill(42);
  await s.write([0], { peerId: "d", remoteIndexes: [1] });
  assert.equal(r.pages[1][PAGE - 1], 42);
});

test("nixl channel: a WRITE to a peer that is gone fails fast, naming the peer", {
  skip,
}, async () => {
  const r = await rx();
  await using s = await tx({ transferTimeoutMs: 2000 });
  await s.connect("gone", r.initUrl!);
  await r.close();
  const t0 = performance.now();
  await assert.rejects(s.write([0, 1], { peerId: "gone", remoteIndexes: [0, 1] }), (e) => {
    assert.ok(e instanceof ChannelError, String(e));
    assert.equal(e.peerId, "gone");
    assert.equal(e.code, "TRANSFER_FAILED");
    assert.match(
      e.message,
      /WRITE of 2 page\(s\) with peer gone failed: .*NIXL_ERR_REMOTE_DISCONNECT/,
    );
    return true;
  });
  assert.ok(performance.now() - t0 < 2000);
});
