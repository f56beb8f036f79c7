// NixlChannel.grantEachPage: one grant per page, made in one turn of the agent's queue
// (a PD receiver's credit refill grants a batch of pages at once). Each grant is revoked
// on its own, and a bad page index refuses the call before anything is granted. Checked
// against the native agent's count of granted ranges.
import { test } from "./helpers/skip.ts";
import assert from "node:assert/strict";
import {
  ChannelError,
  nativeLibrary,
  type NixlChannel,
  NixlError,
  PdReceiver,
  PdSender,
} from "../mod.ts";

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
