/**
 * Steps and checks that the two-process tests of the builtin engine
 * (`agent_pair_test.ts`) and of NIXL (`nixl_pair_test.ts`) share: linking this process's
 * agent to a peer, page indices, and the checked transfers both run.
 *
 * @module
 */
import assert from "node:assert/strict";
import { Buffer } from "node:buffer";
import {
  DescList,
  type HostBuffer,
  type NixlAgent,
  type PreparedDescList,
} from "../../src/agent.ts";
import type { PeerReply } from "./peer_process.ts";

/** What these checks need of a peer (`Peer` of agent_pair.ts, `NixlPeer` of nixl_env.ts). */
export interface PairPeer {
  name: string;
  meta: Uint8Array;
  address: bigint;
  call(cmd: string, args?: Record<string, unknown>, timeoutMs?: number): Promise<PeerReply>;
}

/** Fills bytes with random data (crypto, 64 KiB at a time). */
export function fillRandom(bytes: Uint8Array): void {
  for (let at = 0; at < bytes.length; at += 65536) {
    crypto.getRandomValues(bytes.subarray(at, Math.min(at + 65536, bytes.length)));
  }
}

/** Indices 0..count-1, shuffled when `shuffle`. */
export function indices(count: number, shuffle: boolean): Uint32Array {
  const idx = new Uint32Array(count).map((_, i) => i);
  if (shuffle) {
    for (let i = count - 1; i > 0; i--) {
      const j = Math.floor(Math.random() * (i + 1));
      [idx[i], idx[j]] = [idx[j], idx[i]];
    }
  }
  return idx;
}

/** `[offset, length]` of pages `idx` of `page` bytes. */
export const ranges = (page: number, idx: Uint32Array): [number, number][] =>
  Array.from(idx, (i) => [i * page, page]);

/**
 * Allocates and registers `size` bytes on `agent`, and loads each side's metadata into
 * the other (checking that the peer's loads under its name).
 *
 * @returns the registered buffer
 */
export async function linkPeer(
  agent: NixlAgent,
  peer: PairPeer,
  size: number,
): Promise<HostBuffer> {
  const buf = agent.allocate(size);
  agent.registerMemory(buf);
  assert.equal(agent.addRemoteAgent(peer.meta), peer.name);
  await peer.call("load", { meta: Buffer.from(agent.localMetadata()).toString("base64") });
  return buf;
}

/** The peer's serialized list of 16 pages of 4 KiB prepares, and a WRITE into its last
 * page lands there. */
export async function checkPeerDescList(
  agent: NixlAgent,
  buf: HostBuffer,
  peer: PairPeer,
): Promise<void> {
  const reply = await peer.call("dlist", { pageSize: 4096, count: 16 });
  using list = DescList.deserialize(Buffer.from(reply.bytes as string, "base64"));
  assert.equal(list.count, 16);
  const remote = agent.prepDescList(peer.name, list);
  const local = agent.prepDescList("", DescList.pages(buf, 4096, 16));
  fillRandom(buf.bytes.subarray(0, 4096));
  await agent.transfer("WRITE", local, [0], remote, [15]);
  const { sums } = await peer.call("sums", { ranges: [[15 * 4096, 4096]] });
  assert.deepEqual(sums, [buf.checksum(0, 4096).toString(16)]);
  remote.release();
  local.release();
}

/**
 * WRITEs random local pages `li` to remote pages `ri` with a notification, the peer
 * checksumming its pages when the notification arrives: they must hold the data
 * already, and the notification must arrive exactly once.
 */
export async function checkNotifiedWrite(
  step: {
    agent: NixlAgent;
    buf: HostBuffer;
    peer: PairPeer;
    local: PreparedDescList;
    remote: PreparedDescList;
    page: number;
    li: Uint32Array;
    ri: Uint32Array;
    label: string;
    lingerMs: number;
  },
): Promise<void> {
  const { agent, buf, peer, local, remote, page, li, ri, label, lingerMs } = step;
  fillRandom(buf.bytes.subarray(0, page * li.length));
  const tagW = `w-${label}-${Math.random()}`;
  const waiting = peer.call("waitNotif", {
    expect: tagW,
    timeoutMs: 20_000,
    ranges: ranges(page, ri),
    lingerMs,
  }, 30_000);
  await agent.transfer("WRITE", local, li, remote, ri, {
    notification: tagW,
    timeoutMs: 20_000,
  });
  const got = await waiting;
  const want = Array.from(li, (i) => buf.checksum(i * page, page).toString(16));
  assert.deepEqual(got.sums, want, "remote pages at notification time");
  assert.equal(
    (got.seen as string[]).filter((x) => x === `${agent.name}:${tagW}`).length,
    1,
    "the notification arrived exactly once",
  );
}
