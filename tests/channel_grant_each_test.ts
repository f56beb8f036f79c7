// NixlChannel.grantEachPage: one grant per page, made in one turn of the agent's queue
// with one native call (a PD receiver's credit refill grants a batch of pages at once).
// Each grant is revoked on its own, and a bad page index refuses the call before anything
// is granted. Checked against the native agent's count of granted ranges, and (the grant
// book) on the bytes of a peer's WRITEs: PageGrantBook.release ends a bind's per-page
// grants with one rebuild of the engine's grant table.
import { test } from "./helpers/skip.ts";
import assert from "node:assert/strict";
import {
  ChannelError,
  createTransferChannel,
  nativeLibrary,
  NixlChannel,
  NixlError,
  PdReceiver,
  PdSender,
} from "../mod.ts";
import { PageGrantBook } from "../src/channel/grants.ts";

const skip: string | false = await nativeLibrary().then(
  () => false,
  (e) => `libkvport.so not loadable (build it: make -C native): ${String(e).split("\n")[0]}`,
);
const PAGE = 64 * 1024;
const granted = (ch: NixlChannel) => Number(ch.agent.info().grants);

test(
  "channel grants: grantEachPage makes one grant per page, each revoked on its own; all or nothing",
  {
    skip,
  },
  async () => {
    // A receiver and a sender that handshook (grants are bound to a loaded peer), credits
    // off: the only grants are the ones made here.
    await using rx = await PdReceiver.create({
      host: "127.0.0.1",
      initPort: 0,
      allocPort: 0,
      bufferSize: 8 * PAGE,
      pageSize: PAGE,
      channelType: "nixl",
      engine: "builtin",
    });
    await using tx = await PdSender.create({
      bufferSize: 2 * PAGE,
      pageSize: PAGE,
      channelType: "nixl",
      engine: "builtin",
      creditPages: 0,
    });
    await tx.connect({
      receiverHost: "127.0.0.1",
      receiverInitPort: rx.initPort,
      receiverAllocPort: rx.allocPort,
    });
    const ch = rx.channel as NixlChannel;
    const peer = (tx.channel as NixlChannel).agentName;
    assert.equal(ch.pageGrants, "on");
    const before = granted(ch);
    const grants = await ch.grantEachPage(peer, [5, 2, 3], { write: true, expiresMs: 60_000 });
    assert.equal(grants.length, 3);
    // Pages 2 and 3 are next to each other, and still two grants (two ranges).
    assert.equal(granted(ch), before + 3);
    await ch.revokeGrant(grants[1]);
    assert.equal(granted(ch), before + 2, "revoking page 2's grant left the others");
    assert.equal(grants[1].revoked, true);
    assert.equal(grants[0].revoked, false);
    // A page outside the buffer: refused up front, nothing granted.
    await assert.rejects(
      ch.grantEachPage(peer, [1, 99], { write: true }),
      (e) => e instanceof ChannelError && e.code === "INVALID_ARGUMENT" && /99/.test(e.message),
    );
    // An agent that is not loaded: the engine refuses, nothing is left granted.
    await assert.rejects(
      ch.grantEachPage("nobody-loaded", [0, 1], { write: true }),
      (e) => e instanceof NixlError && /not loaded/.test(e.message),
    );
    assert.equal(granted(ch), before + 2);
    for (const g of grants) await ch.revokeGrant(g); // idempotent for the one revoked
    assert.equal(granted(ch), before);
  },
);

test(
  "channel grants: a grant book's release ends per-page grants in one table rebuild; WRITEs land only in granted pages",
  { skip },
  async () => {
    const base = {
      channelType: "nixl",
      bufferSize: 8 * PAGE,
      alignBytes: PAGE,
      tpRank: 0,
      backends: ["UCX"],
      engine: "builtin",
    } as const;
    await using rx = await createTransferChannel({
      ...base,
      role: "receiver",
      peerInitUrl: "127.0.0.1:0",
      pageGrants: true,
    });
    await using tx = await createTransferChannel({ ...base, role: "sender", peerInitUrl: null });
    await tx.connect("rx", rx.initUrl!);
    assert.ok(rx instanceof NixlChannel && rx.pageGrants === "on");
    const tables = () => Number(rx.agent.info().grant_tables);
    const book = new PageGrantBook(rx);
    for (const p of rx.pages) p.fill(0);
    const held = new Uint8Array(rx.pageCount);
    /** tx WRITEs every page (byte `round * 16 + i`): granted ones hold it, others keep theirs. */
    const check = async (granted: readonly number[], round: number) => {
      for (let i = 0; i < rx.pageCount; i++) {
        const v = round * 16 + i;
        tx.pages[0].fill(v);
        const e = await tx.write([0], { peerId: "rx", remoteIndexes: [i] }).then(
          () => null,
          (e) => e,
        );
        const want = granted.includes(i);
        assert.equal(e === null, want, `page ${i} (granted: ${want}): ${String(e)}`);
        if (want) held[i] = v;
        else assert.match(String(e), /NOT_ALLOWED|not granted|does not grant/);
        assert.ok(rx.pages[i].every((b) => b === held[i]), `page ${i} holds the wrong bytes`);
      }
    };
    await check([], 1);
    const t0 = tables();
    await book.grantWriteEach(tx.agentName, [2, 3, 5, 6], 60_000);
    assert.equal(tables(), t0 + 1, "4 per-page grants: one rebuild");
    assert.equal(book.grantedPages, 4);
    await check([2, 3, 5, 6], 2);
    // A bind of pages 2, 5 and 6 lands: their grants end in one native call.
    const t1 = tables();
    await book.release([2, 5, 6]);
    assert.equal(tables(), t1 + 1, "3 revokes: one rebuild");
    assert.equal(book.grantedPages, 1);
    assert.deepEqual(book.failures, { count: 0, lastError: null });
    await check([3], 3);
    // A shared grant keeps its revoke-and-regrant: page 0 goes, 1 stays writable.
    await book.grantWrite(tx.agentName, [0, 1], 60_000);
    await check([0, 1, 3], 4);
    await book.release([0, 3]);
    await check([1], 5);
    await book.close();
    assert.equal(book.grantedPages, 0);
    assert.equal(Number(rx.agent.info().grants), 0);
    await check([], 6);
  },
);
