// The NIXL channel handshake with newer LMCache's per-agent lists: a responder answers
// a request listing N agents with N entries per list (and in the old form for an old
// peer), an initiator lists its agent `peerAgents` times and refuses, naming the field,
// a peer whose lists have another length; data still moves after such a handshake.
import { test } from "node:test";
import assert from "node:assert/strict";
import { ChannelError, MockMemoryChannel } from "../mod.ts";
import {
  decodeMessage,
  encodeMessage,
  type LmcacheMessage,
  RepSocket,
  ReqSocket,
} from "../src/channel/wire/mod.ts";

const PAGE = 256;

async function channel(listen: boolean) {
  return await MockMemoryChannel.create({
    role: "both",
    pageSize: PAGE,
    pageCount: 4,
    peerInitUrl: listen ? "127.0.0.1:0" : null,
  });
}

function dp(ch: MockMemoryChannel) {
  return ch as unknown as {
    dpLocalMetadata(): Promise<Uint8Array>;
    dpLocalPageList(): Promise<Uint8Array>;
  };
}

async function ask(url: string, msg: LmcacheMessage) {
  await using req = ReqSocket.connect(url, { timeoutMs: 3000 });
  const [reply] = await req.request(encodeMessage(msg));
  return decodeMessage(reply);
}

test("responder: a request listing 3 agents gets 3 entries per list, an old one none", async () => {
  await using rx = await channel(true);
  await using peer = await channel(false);
  const meta = await dp(peer).dpLocalMetadata();
  const list = await dp(peer).dpLocalPageList();
  const init = await ask(rx.initUrl!, {
    type: "NixlInitRequest",
    local_meta_bytes: meta,
    local_meta_bytes_list: [meta, meta, meta],
  });
  assert.equal(init.type, "NixlInitResponse");
  if (init.type !== "NixlInitResponse") return;
  assert.equal(init.remote_meta_bytes_list?.length, 3);
  assert.equal(init.remote_agent_names?.length, 3);
  assert.deepEqual(init.remote_meta_bytes_list![2], await dp(rx).dpLocalMetadata());
  assert.equal(new TextDecoder().decode(init.remote_agent_names![1]), peer.agentName);
  const reg = await ask(rx.initUrl!, {
    type: "NixlMemRegRequest",
    remote_agent_name: init.remote_agent_name,
    local_id: "three-agent-peer",
    local_xfer_dlist_bytes: list,
    remote_agent_names: init.remote_agent_names,
    local_xfer_dlist_bytes_list: [list, list, list],
  });
  assert.equal(reg.type, "NixlMemRegResponse");
  if (reg.type !== "NixlMemRegResponse") return;
  assert.equal(reg.remote_xfer_dlist_bytes_list?.length, 3);
  assert.ok(rx.hasPeer("three-agent-peer"));
  // The registered peer is served: a WRITE from the responder lands in its pages.
  rx.pages[1].fill(0xab);
  assert.equal(await rx.write([1], { peerId: "three-agent-peer", remoteIndexes: [3] }), 1);
  assert.ok(peer.pages[3].every((b) => b === 0xab));
  // An old peer (no lists) gets the old form back: no list fields at all.
  const old = await ask(rx.initUrl!, { type: "NixlInitRequest", local_meta_bytes: meta });
  assert.equal("remote_meta_bytes_list" in old, false);
  assert.equal("remote_agent_names" in old, false);
});

test("responder: lists of different lengths are refused naming both fields", async () => {
  await using rx = await channel(true);
  await using peer = await channel(false);
  const list = await dp(peer).dpLocalPageList();
  const name = new TextEncoder().encode(peer.agentName);
  const reply = await ask(rx.initUrl!, {
    type: "NixlMemRegRequest",
    remote_agent_name: name,
    local_id: "x",
    local_xfer_dlist_bytes: list,
    remote_agent_names: [name, name],
    local_xfer_dlist_bytes_list: [list],
  });
  assert.equal(reply.type, "ErrorMsg");
  assert.match(
    String((reply as { error: string }).error),
    /remote_agent_names lists 2 agent\(s\) but local_xfer_dlist_bytes_list 1/,
  );
  assert.equal(rx.hasPeer("x"), false);
});

test("initiator: peerAgents lists our agent N times; a mismatch names the field", async () => {
  await using tx = await channel(false);
  await using target = await channel(false);
  const meta = await dp(target).dpLocalMetadata();
  const list = await dp(target).dpLocalPageList();
  // A responder that runs two agents (as newer LMCache with num_agents 2) and records
  // what it was sent.
  const seen: Record<string, unknown>[] = [];
  await using rep = await RepSocket.bind("tcp://127.0.0.1:0");
  rep.serve(([body]) => {
    const m = decodeMessage(body) as unknown as Record<string, unknown>;
    seen.push(m);
    const name = new TextEncoder().encode(target.agentName);
    if (m.type === "NixlInitRequest") {
      return encodeMessage({
        type: "NixlInitResponse",
        remote_agent_name: name,
        remote_meta_bytes: meta,
        remote_agent_names: [name, name],
        remote_meta_bytes_list: [meta, meta],
      });
    }
    return encodeMessage({
      type: "NixlMemRegResponse",
      remote_xfer_dlist_bytes: list,
      remote_xfer_dlist_bytes_list: [list, list],
    });
  });
  const url = `127.0.0.1:${rep.port}`;
  await assert.rejects(tx.connect("two", url, { timeoutMs: 3000 }), (e) => {
    assert.ok(e instanceof ChannelError);
    assert.match(
      e.message,
      /NixlInitResponse field remote_meta_bytes_list: the peer runs 2 NIXL agent\(s\) but this handshake listed 1: connect with peerAgents: 2/,
    );
    return true;
  });
  await tx.connect("two", url, { timeoutMs: 3000, peerAgents: 2 });
  const init = seen.at(-2)!;
  const reg = seen.at(-1)!;
  assert.equal((init.local_meta_bytes_list as Uint8Array[]).length, 2);
  assert.equal((reg.local_xfer_dlist_bytes_list as Uint8Array[]).length, 2);
  assert.equal((reg.remote_agent_names as Uint8Array[]).length, 2);
  // Data moves to the peer's buffer through the first agent's page list.
  tx.pages[0].fill(7);
  await tx.write([0], { peerId: "two", remoteIndexes: [2] });
  assert.ok(target.pages[2].every((b) => b === 7));
  await assert.rejects(
    tx.connect("bad", url, { peerAgents: 0 }),
    /peerAgents must be an integer from 1 to 64, got 0/,
  );
});

test("initiator against an old responder: the lists it ignores do not matter", async () => {
  await using rx = await channel(true);
  await using tx = await channel(false);
  await tx.connect("old-or-new", rx.initUrl!);
  tx.pages[2].fill(3);
  await tx.write([2], { peerId: "old-or-new", remoteIndexes: [0] });
  assert.ok(rx.pages[0].every((b) => b === 3));
});
