/**
 * PD page credits (issue 15): a kvport sender holds receiver pages ahead of its requests,
 * so that a request needs no AllocRequest round trip; the receiver binds the pages to
 * keys from the sender's notification. Every check reads bytes (sha256 per chunk) or
 * page counts: a second request makes no AllocRequest and lands byte-exact, 200 in a
 * row with refills keep within the caps and give every page back, a stale credit falls
 * back to an AllocRequest, a receiver restart drops them, credits off is the old path,
 * and nothing a stranger (or a confused sender) sends binds a page or lands a key.
 */
import { test } from "./helpers/skip.ts";
import assert from "node:assert/strict";
import {
  loadConfig,
  nativeLibrary,
  type NixlChannel,
  NixlError,
  PdReceiver,
  type PdReceiverOptions,
  PdSender,
  type PdSenderOptions,
} from "../mod.ts";
import { openRequester } from "../src/channel/control.ts";
import { allocRequest } from "../src/pd/alloc_wire.ts";
import { encodeBind } from "../src/pd/bind_notify.ts";
import { encodeLanded } from "../src/pd/notify.ts";
import { eventually, fillFor, loopbackSpec, pause, sha, testKey } from "./helpers/pd_util.ts";

const skip: string | false = await nativeLibrary().then(
  () => false,
  (e) => `libkvport.so not loadable (build it: make -C native): ${String(e).split("\n")[0]}`,
);

const PAGE = 64 * 1024;
// One full chunk of [2, 1, 256, 64] bfloat16 (KV_2LTD) is exactly one page.
const SHAPE = [2, 1, 256, 64];

/** A builtin-engine receiver that counts the AllocRequests carrying keys. */
async function receiver(pages: number, extra: Partial<PdReceiverOptions> = {}) {
  const allocs: string[][] = [];
  const rx = await PdReceiver.create({
    host: "127.0.0.1",
    initPort: 0,
    allocPort: 0,
    bufferSize: pages * PAGE,
    pageSize: PAGE,
    channelType: "nixl",
    engine: "builtin",
    timeline: (stage, _req, keys) => {
      if (stage === "alloc_received" && keys.length > 0) allocs.push([...keys]);
    },
    ...extra,
  });
  return { rx, allocs };
}

function sender(extra: Partial<PdSenderOptions> = {}) {
  return PdSender.create({
    bufferSize: 16 * PAGE,
    pageSize: PAGE,
    channelType: "nixl",
    engine: "builtin",
    ...extra,
  });
}

const spec = loopbackSpec;

/** Sends one request of `keys` (content from the key) and returns each chunk's sha256. */
async function sendKeys(tx: PdSender, rx: PdReceiver, reqId: string, keys: string[]) {
  const pages = await tx.allocate(keys.length);
  const hashes = keys.map((k, i) => {
    const v = tx.channel.pages[pages[i]];
    fillFor(k, v);
    return sha(v);
  });
  const res = await tx.send(spec(rx, reqId), {
    keys,
    pages,
    shape: SHAPE,
    dtype: "bfloat16",
    lastChunkToks: 256,
  });
  await rx.waitFor(keys, 10_000);
  return { hashes, res };
}

/** Every key held byte-exact (against `hashes`), then removed. */
function checkAndRemove(rx: PdReceiver, keys: string[], hashes: string[]): void {
  keys.forEach((k, i) => {
    const info = rx.info(k);
    assert.ok(info?.landed, `${k} landed`);
    assert.equal(sha(rx.view(k)!), hashes[i], `bytes of ${k}`);
    assert.ok(rx.remove(k));
  });
}

const keysOf = (req: string, n: number) => Array.from({ length: n }, (_, i) => testKey(req, i));

test("pd credits: the second request of a kvport pair makes no AllocRequest and lands byte-exact", {
  skip,
}, async () => {
  const { rx, allocs } = await receiver(64);
  await using _rx = rx;
  await using tx = await sender({ creditPages: 8 });
  const k1 = keysOf("c1", 4);
  const r1 = await sendKeys(tx, rx, "c1", k1);
  assert.equal(allocs.length, 1, "the first request asks");
  assert.ok(allocs[0].includes(k1[0]));
  checkAndRemove(rx, k1, r1.hashes);
  // Its reply brought credits for the next request.
  await eventually(() => tx.credits.pages >= 4, "credits at the sender");
  assert.ok(rx.stats.creditPages >= 4 && rx.stats.creditPages <= 8, `${rx.stats.creditPages}`);
  const k2 = keysOf("c2", 4);
  const r2 = await sendKeys(tx, rx, "c2", k2);
  assert.equal(allocs.length, 1, "the second request made no AllocRequest");
  assert.equal(tx.credits.batches, 1);
  assert.deepEqual(r2.res, {
    receiverId: r1.res.receiverId,
    sent: 4,
    skipped: 0,
    notified: false,
    handshook: false,
  });
  assert.equal(rx.stats.binds, 1);
  const info = rx.info(k2[3])!;
  assert.deepEqual(info.shape, SHAPE);
  assert.equal(info.bytes, PAGE);
  checkAndRemove(rx, k2, r2.hashes);
});

test(
  "pd credits: connect() with the chunk form fetches credits, so even the first request makes no AllocRequest",
  {
    skip,
  },
  async () => {
    const { rx, allocs } = await receiver(32);
    await using _rx = rx;
    await using tx = await sender({ creditPages: 4 });
    assert.equal(
      await tx.connect(spec(rx, ""), { credits: { shape: SHAPE, dtype: "bfloat16" } }),
      true,
    );
    assert.equal(tx.credits.pages, 4);
    assert.equal(rx.stats.creditRefills, 1);
    const k = keysOf("first", 3);
    checkAndRemove(rx, k, (await sendKeys(tx, rx, "first", k)).hashes);
    assert.equal(allocs.length, 0, "no AllocRequest carried keys");
    assert.equal(rx.stats.binds, 1);
  },
);

test(
  "pd credits: 200 requests in a row with refills: every chunk exact, within the caps, every page back",
  {
    skip,
  },
  async () => {
    const PAGES = 48;
    const { rx, allocs } = await receiver(PAGES, { creditMaxPerSender: 10, creditMaxTotal: 12 });
    await using _rx = rx;
    await using tx = await sender({ creditPages: 8 });
    let maxCredits = 0;
    rx.onLanded(() => {
      maxCredits = Math.max(maxCredits, rx.stats.creditPages);
    });
    let chunks = 0;
    for (let r = 0; r < 200; r++) {
      const n = 1 + (r * 7) % 8; // 1..8 chunks
      const keys = keysOf(`m${r}`, n);
      const { hashes } = await sendKeys(tx, rx, `m${r}`, keys);
      maxCredits = Math.max(maxCredits, rx.stats.creditPages);
      checkAndRemove(rx, keys, hashes);
      chunks += n;
      // Let the background refill land now and then (as requests would be spaced).
      if (r % 3 === 0) await pause(1);
    }
    assert.ok(maxCredits <= 10, `the per-sender cap held: at most ${maxCredits} credit pages`);
    const st = rx.stats;
    assert.ok(tx.credits.batches >= 100, `${tx.credits.batches} of 200 requests used credits`);
    assert.equal(allocs.length + tx.credits.batches, 200, "each request asked or used credits");
    assert.equal(tx.credits.refillErrors, 0);
    assert.equal(st.binds, tx.credits.batches);
    assert.equal(st.keys, 0);
    // Every page is free or a credit the sender still holds (none leaked, none quarantined).
    await eventually(() => rx.stats.freePages + rx.stats.creditPages === PAGES, "pages back");
    assert.equal(rx.stats.quarantinedPages, 0);
    assert.ok(rx.stats.creditPages <= 10);
    assert.equal(
      Object.values(st.bindsRefused).reduce((a, b) => a + b, 0),
      0,
      `no bind refused (${rx.lastError})`,
    );
    assert.ok(chunks > 800);
    await tx.close();
    // The sender's agent is gone: its credits come back through the quarantine at the latest.
  },
);

test(
  "pd credits: refills come in lots of half the stock or more, so 24 requests need a handful, every chunk exact",
  { skip },
  async () => {
    const { rx, allocs } = await receiver(96, { creditMaxPerSender: 32, creditMaxTotal: 32 });
    await using _rx = rx;
    await using tx = await sender({ creditPages: 32 });
    await tx.connect(spec(rx, ""), { credits: { shape: SHAPE, dtype: "bfloat16" } });
    assert.equal(tx.credits.pages, 32);
    const before = rx.stats.creditRefills;
    for (let r = 0; r < 24; r++) {
      const k = keysOf(`lot${r}`, 4);
      checkAndRemove(rx, k, (await sendKeys(tx, rx, `lot${r}`, k)).hashes);
      // A prefiller does other work between requests (a macrotask turn, in which the
      // refill's reply is read: under Bun a loop of nothing but these sends, whose copies
      // finish inside the post, read no socket for several requests).
      await pause(0);
    }
    assert.equal(allocs.length, 0, "no request made an AllocRequest");
    assert.equal(tx.credits.batches, 24);
    assert.equal(tx.credits.refillErrors, 0);
    // 96 pages used from a stock of 32: a refill each time it falls to half (16 pages, 4
    // requests: 6 refills), not one per request (19-24 before).
    const refills = rx.stats.creditRefills - before;
    assert.ok(refills >= 2 && refills <= 8, `${refills} refills for 24 requests of 4 pages`);
  },
);

test(
  "pd credits: with kvport_pd_credit_pages 0 every batch asks, as before, and no credit is held",
  {
    skip,
  },
  async () => {
    const { rx, allocs } = await receiver(32);
    await using _rx = rx;
    await using tx = await sender({ creditPages: 0 });
    for (let r = 0; r < 3; r++) {
      const keys = keysOf(`off${r}`, 3);
      const { hashes } = await sendKeys(tx, rx, `off${r}`, keys);
      checkAndRemove(rx, keys, hashes);
    }
    assert.equal(allocs.length, 3);
    assert.equal(rx.stats.creditPages, 0);
    assert.equal(rx.stats.creditsGiven, 0);
    assert.equal(tx.credits.batches, 0);
    assert.equal(rx.stats.freePages, 32);
  },
);

test(
  "pd credits: a stale credit falls back to an AllocRequest and delivers exact bytes; the receiver's TTL takes the pages back",
  {
    skip,
  },
  async () => {
    const PAGES = 32;
    const { rx, allocs } = await receiver(PAGES, { cancelQuarantineMs: 50 });
    await using _rx = rx;
    // Usable for 3500 - 1000 (transfer timeout) - 2000 (margin) = 500 ms after the ask.
    await using tx = await sender({ creditPages: 4, creditTtlMs: 3500, transferTimeoutMs: 1000 });
    const a = keysOf("s1", 2);
    checkAndRemove(rx, a, (await sendKeys(tx, rx, "s1", a)).hashes);
    const b = keysOf("s2", 2);
    checkAndRemove(rx, b, (await sendKeys(tx, rx, "s2", b)).hashes);
    assert.equal(allocs.length, 1, "the second request used its credits");
    await pause(700); // past the usable window
    const c = keysOf("s3", 4);
    checkAndRemove(rx, c, (await sendKeys(tx, rx, "s3", c)).hashes);
    assert.equal(allocs.length, 2, "the stale credits were not used: the third request asked");
    assert.equal(tx.credits.batches, 1);
    // ... and gave them back with its AllocRequest, before their expiry.
    assert.ok(rx.stats.creditsReturned >= 2, `${rx.stats.creditsReturned} returned`);
    // The receiver's TTL (3.5 s) ends the lot the third request got, never used.
    const given = rx.stats.creditPages;
    assert.ok(given > 0);
    await eventually(() => rx.stats.creditsExpired === given, "credits expired", 6000);
    await eventually(
      () => rx.stats.freePages + rx.stats.creditPages === PAGES,
      "expired credits free again",
      6000,
    );
  },
);

test(
  "pd credits: a receiver restart drops the credits, and the next request works",
  { skip },
  async () => {
    const first = await receiver(32);
    const ports = { initPort: first.rx.initPort, allocPort: first.rx.allocPort };
    await using tx = await sender({ creditPages: 4 });
    const a = keysOf("r1", 2);
    checkAndRemove(first.rx, a, (await sendKeys(tx, first.rx, "r1", a)).hashes);
    await eventually(() => tx.credits.pages >= 2, "credits at the sender");
    await first.rx.close();
    const second = await receiver(32, ports);
    await using _rx = second.rx;
    const b = keysOf("r2", 2);
    const { hashes, res } = await sendKeys(tx, second.rx, "r2", b);
    checkAndRemove(second.rx, b, hashes);
    assert.equal(res.handshook, true, "a new handshake");
    assert.equal(second.allocs.length, 1, "the new receiver was asked");
    assert.equal(second.rx.stats.bindsRefused.not_credit, 0);
    // And its own credits work for the next one.
    await eventually(() => tx.credits.pages >= 2, "new credits");
    const c = keysOf("r3", 2);
    checkAndRemove(second.rx, c, (await sendKeys(tx, second.rx, "r3", c)).hashes);
    assert.equal(second.allocs.length, 1);
    assert.equal(second.rx.stats.binds, 1);
  },
);

test(
  "pd credits: a receiver that forgets the sender's peer keeps its credits (no early reclaim): the next request lands through them",
  {
    skip,
  },
  async () => {
    const PAGES = 32;
    const { rx, allocs } = await receiver(PAGES);
    await using _rx = rx;
    await using tx = await sender({ creditPages: 4 });
    const a = keysOf("f1", 2);
    checkAndRemove(rx, a, (await sendKeys(tx, rx, "f1", a)).hashes);
    await eventually(() => rx.stats.creditPages === 4 && tx.credits.pages === 4, "credits");
    const [peer] = (rx.channel as NixlChannel).peerIds;
    await rx.channel.forgetPeer(peer);
    // The sender does not know: were its credits ended now, its WRITE could land before the
    // revocation and its bind be refused after its send succeeded (data lost, no error).
    assert.equal(rx.stats.creditPages, 4);
    const b = keysOf("f2", 2);
    const { hashes } = await sendKeys(tx, rx, "f2", b);
    checkAndRemove(rx, b, hashes);
    assert.equal(allocs.length, 1, "the second request used its credits");
    assert.equal(rx.stats.binds, 1);
  },
);

test(
  "pd credits: a batch too large for the credits gives them back with its AllocRequest, so a tight pool still fits it",
  {
    skip,
  },
  async () => {
    const PAGES = 20;
    const { rx, allocs } = await receiver(PAGES, { allocationTimeoutMs: 1500 });
    await using _rx = rx;
    await using tx = await sender({ creditPages: 4, bufferSize: PAGES * PAGE });
    const a = keysOf("t1", 4);
    checkAndRemove(rx, a, (await sendKeys(tx, rx, "t1", a)).hashes);
    // Twice the batch asked and given (within the receiver's default total: 10 of 20
    // pages, half of them, as a quarter is less than a sender's default stock).
    await eventually(() => rx.stats.creditPages === 8, "credits held");
    assert.equal(rx.stats.freePages, 12);
    // Every page of the pool: only with the credits given back.
    const b = keysOf("t2", PAGES);
    const { hashes } = await sendKeys(tx, rx, "t2", b);
    checkAndRemove(rx, b, hashes);
    assert.equal(allocs.length, 2);
    assert.equal(rx.stats.creditsReturned, 8);
    assert.equal(rx.stats.allocTimeouts, 0);
  },
);

test("pd credits: a closing sender gives its credits back, free at once", {
  skip,
}, async () => {
  const PAGES = 32;
  const { rx } = await receiver(PAGES);
  await using _rx = rx;
  const tx = await sender({ creditPages: 6 });
  const a = keysOf("z1", 3);
  checkAndRemove(rx, a, (await sendKeys(tx, rx, "z1", a)).hashes);
  await eventually(() => rx.stats.creditPages === 6, "credits given");
  await tx.close();
  assert.equal(rx.stats.creditPages, 0);
  assert.equal(rx.stats.creditsReturned, 6);
  assert.equal(rx.stats.freePages, PAGES);
});

/** A raw AllocRequest of `agent` on the receiver's allocation socket. */
async function rawAlloc(
  rx: PdReceiver,
  keys: string[],
  extra: Record<string, unknown>,
) {
  const req = await openRequester(rx.allocUrl, { timeoutMs: 5000 });
  try {
    const msg = allocRequest("async", {
      keys,
      fmt: 1,
      shape: SHAPE,
      dtype: "bfloat16",
      last_chunk_toks: 256,
    }, { reqId: "raw", isLastBatch: true, totalChunks: keys.length });
    Object.assign(msg, extra);
    return await req.request(msg, 5000);
  } finally {
    await req.close();
  }
}

test(
  "pd credits: an AllocRequest without kvport_credit_want gets no credit field (LMCache's reply)",
  {
    skip,
  },
  async () => {
    const { rx } = await receiver(16, { pageGrants: false });
    await using _rx = rx;
    const plain = await rawAlloc(rx, [testKey("l", 0)], {});
    assert.deepEqual(Object.keys(plain).sort(), ["already_sent_indexes", "remote_indexes", "type"]);
    assert.equal(rx.stats.creditPages, 0);
    // Asking in the name of an agent nobody handshook with gets none either.
    const stranger = await rawAlloc(rx, [], { kvport_agent: "nobody", kvport_credit_want: 4 });
    assert.deepEqual(stranger.kvport_credit, []);
    assert.equal(rx.stats.creditPages, 0);
  },
);

test(
  "pd credits: hostile binds (another agent's, expired, garbage, oversized) create nothing; a stranger cannot WRITE credit pages",
  {
    skip,
  },
  async () => {
    const PAGES = 32;
    const { rx } = await receiver(PAGES);
    await using _rx = rx;
    await using owner = await sender({ creditPages: 0 });
    await using stranger = await sender({ creditPages: 0 });
    await owner.connect(spec(rx, ""));
    await stranger.connect(spec(rx, ""));
    const ownerCh = owner.channel as NixlChannel;
    const strangerCh = stranger.channel as NixlChannel;
    const rxAgent = ownerCh.peerAgentName(rx.id)!;
    const landed: string[] = [];
    rx.onLanded((k) => landed.push(...k));
    // The owner's credits, asked by hand (so the test knows the pages).
    const reply = await rawAlloc(rx, [], {
      kvport_agent: ownerCh.agentName,
      kvport_credit_want: 4,
      kvport_credit_ttl_ms: 60_000,
    });
    const credits = (reply.kvport_credit as number[]).map(Number);
    assert.equal(credits.length, 4);
    assert.equal(rx.stats.creditPages, 4);
    const before = credits.map((p) => sha(rx.channel.pages[p]));
    const bind = (keys: string[], pages: number[], shape = SHAPE) =>
      encodeBind({ reqId: "h", fmt: 1, shape, dtype: "bfloat16", lastChunkToks: 256, keys, pages });
    const settle = () => pause(100);

    // A stranger binds the owner's credit pages: refused.
    strangerCh.agent.sendNotification(rxAgent, bind([testKey("h", 0)], [credits[0]]));
    await settle();
    assert.equal(rx.stats.bindsRefused.not_credit, 1, String(rx.lastError));
    assert.match(String(rx.lastError), new RegExp(`agent ${strangerCh.agentName}`));
    // A stranger WRITEs them: the grant refuses it, the bytes stay.
    strangerCh.pages[0].fill(0xee);
    await assert.rejects(
      stranger.channel.write([0], { peerId: rx.id, remoteIndexes: [credits[1]] }),
      (e: unknown) => {
        const err = (e as { cause?: unknown }).cause ?? e;
        return err instanceof NixlError && err.statusName === "NIXL_ERR_NOT_ALLOWED";
      },
    );
    // Garbage after the prefix, and a bind with a page twice: malformed.
    ownerCh.agent.sendNotification(rxAgent, new TextEncoder().encode("kvport.pd.bind\n{nope"));
    ownerCh.agent.sendNotification(
      rxAgent,
      bind([testKey("h", 1), testKey("h", 2)], [credits[0], credits[0]]),
    );
    // A shape larger than a page, on the owner's own credit: refused.
    ownerCh.agent.sendNotification(rxAgent, bind([testKey("h", 3)], [credits[2]], [2, 1, 512, 64]));
    // A page that was never a credit.
    const other = [...Array(PAGES).keys()].find((p) => !credits.includes(p))!;
    ownerCh.agent.sendNotification(rxAgent, bind([testKey("h", 4)], [other]));
    await settle();
    const st = rx.stats;
    assert.deepEqual(st.bindsRefused, { malformed: 2, not_credit: 2, chunk_too_large: 1 });
    assert.equal(st.keys, 0, "no entry created");
    assert.equal(st.binds, 0);
    assert.deepEqual(landed, []);
    assert.equal(st.creditPages, 4, "the credits are still the owner's");
    assert.deepEqual(credits.map((p) => sha(rx.channel.pages[p])), before);

    // The owner's genuine bind after a WRITE: the key lands with the owner's bytes.
    const k = testKey("h", 5);
    fillFor(k, ownerCh.pages[3]);
    const want = sha(ownerCh.pages[3]);
    await owner.channel.write([3], {
      peerId: rx.id,
      remoteIndexes: [credits[3]],
      notification: bind([k], [credits[3]]),
    });
    await eventually(() => rx.info(k)?.landed === true, "the genuine bind");
    assert.equal(sha(rx.view(k)!), want);
    assert.deepEqual(landed, [k]);
    assert.equal(rx.stats.creditPages, 3);
    // Bound: the page is no longer the owner's to write.
    await assert.rejects(
      owner.channel.write([3], { peerId: rx.id, remoteIndexes: [credits[3]] }),
      (e: unknown) => {
        const err = (e as { cause?: unknown }).cause ?? e;
        return err instanceof NixlError && err.statusName === "NIXL_ERR_NOT_ALLOWED";
      },
    );

    // Expired credits: a short-lived lot, bound after its end.
    const short = await rawAlloc(rx, [], {
      kvport_agent: ownerCh.agentName,
      kvport_credit_want: 2,
      kvport_credit_ttl_ms: 150,
    });
    const gone = (short.kvport_credit as number[]).map(Number);
    assert.equal(gone.length, 2);
    await pause(400);
    assert.ok(rx.stats.creditsExpired >= 2);
    ownerCh.agent.sendNotification(rxAgent, bind([testKey("h", 6)], [gone[0]]));
    await settle();
    assert.equal(rx.stats.bindsRefused.not_credit, 3);
    assert.equal(rx.contains(testKey("h", 6)), false);
    assert.deepEqual(landed, [k]);
  },
);

test(
  "pd credits: with credits and nothing ahead in its request, send() posts the WRITE in its own call; a later batch of the request waits its turn, another request's does not",
  {
    skip,
  },
  async () => {
    const { rx } = await receiver(64);
    await using _rx = rx;
    const stages: string[] = [];
    await using tx = await sender({
      creditPages: 8,
      timeline: (stage, reqId) => stages.push(`${reqId} ${stage}`),
    });
    const r0 = await sendKeys(tx, rx, "w0", keysOf("w0", 2));
    checkAndRemove(rx, keysOf("w0", 2), r0.hashes);
    await eventually(() => tx.credits.pages >= 6, "credits at the sender");
    stages.length = 0;
    const batch = async (req: string, from: number) => {
      const keys = keysOf(req, from + 2).slice(from);
      const pages = await tx.allocate(2);
      const hashes = keys.map((k, i) => {
        fillFor(k, tx.channel.pages[pages[i]]);
        return sha(tx.channel.pages[pages[i]]);
      });
      return { keys, pages, hashes };
    };
    const a = await batch("w1", 0);
    const b = await batch("w1", 2);
    const c = await batch("w2", 0);
    const send = (req: string, x: { keys: string[]; pages: number[] }, last: boolean) =>
      tx.send({ ...spec(rx, req), isLastPrefill: last }, {
        ...x,
        shape: SHAPE,
        dtype: "bfloat16",
        lastChunkToks: 256,
      });
    const sentA = send("w1", a, false);
    // In the call: the credits, the WRITE and its post (the copy ran inside the post).
    assert.deepEqual(stages, ["w1 send", "w1 credits", "w1 write", "w1 posted"]);
    // The request's next batch, behind it (its wait has not returned yet): queued, not
    // written in the call.
    const sentB = send("w1", b, true);
    assert.deepEqual(stages.slice(4), ["w1 send", "w1 credits"]);
    // Another request to the same receiver is not behind w1: written in its own call.
    const sentC = send("w2", c, true);
    assert.deepEqual(stages.slice(6), ["w2 send", "w2 credits", "w2 write", "w2 posted"]);
    await Promise.all([sentA, sentB, sentC]);
    const written = stages.filter((x) => x.startsWith("w1") && x.endsWith(" written"));
    assert.equal(written.length, 2, "both batches of w1 written");
    const firstOfB = stages.indexOf("w1 write", 4);
    assert.ok(firstOfB > stages.indexOf("w1 written"), "w1's second batch after its first");
    await rx.waitFor([...a.keys, ...b.keys, ...c.keys], 10_000);
    checkAndRemove(rx, a.keys, a.hashes);
    checkAndRemove(rx, b.keys, b.hashes);
    checkAndRemove(rx, c.keys, c.hashes);
    assert.equal(tx.credits.batches, 3);
  },
);

test(
  "pd credits: one bind over pages of two credit lots lands every key byte-exact, each in a lease of its own; a key held already frees its page",
  { skip },
  async () => {
    const PAGES = 16;
    const { rx } = await receiver(PAGES);
    await using _rx = rx;
    await using owner = await sender({ creditPages: 0 });
    await owner.connect(spec(rx, ""));
    const ch = owner.channel as NixlChannel;
    const lot = async () =>
      ((await rawAlloc(rx, [], {
        kvport_agent: ch.agentName,
        kvport_credit_want: 3,
        kvport_credit_ttl_ms: 60_000,
      })).kvport_credit as number[]).map(Number);
    const a = await lot();
    const b = await lot();
    assert.equal(a.length + b.length, 6);
    assert.equal(rx.stats.creditPages, 6);
    // A key the receiver holds already (its own AllocRequest and WRITE).
    const held = testKey("two", 9);
    const { hashes: heldHash } = await sendKeys(owner, rx, "held", [held]);
    const freeBefore = rx.pool.free;
    // Five keys over both lots, interleaved, and the held key on a sixth credit page.
    const pages = [a[0], b[0], a[1], b[1], a[2], b[2]];
    const keys = [...keysOf("two", 5), held];
    const local = await owner.allocate(pages.length);
    const hashes = keys.map((k, i) => {
      fillFor(k, owner.channel.pages[local[i]]);
      return sha(owner.channel.pages[local[i]]);
    });
    const landed: string[] = [];
    rx.onLanded((k) => landed.push(...k));
    await owner.channel.write(local, {
      peerId: rx.id,
      remoteIndexes: pages,
      notification: encodeBind({
        reqId: "two",
        fmt: 1,
        shape: SHAPE,
        dtype: "bfloat16",
        lastChunkToks: 100,
        keys,
        pages,
      }),
    });
    await eventually(() => landed.length === 5, "the bind's keys");
    assert.deepEqual(landed, keys.slice(0, 5), "the fresh keys, in order (not the held one)");
    assert.equal(rx.stats.binds, 1);
    assert.equal(rx.stats.creditPages, 0, "every credit page used");
    assert.equal(rx.pool.free, freeBefore + 1, "the held key's credit page is free again");
    assert.equal(sha(rx.view(held)!), heldHash[0], "the held key keeps its bytes");
    // Each key in its own lease on its page: the last key has the bind's tokens.
    const leases = new Set<unknown>();
    keys.slice(0, 5).forEach((k, i) => {
      const info = rx.info(k)!;
      assert.equal(info.page, pages[i], `${k}'s page`);
      // (The bind's last key, the held one, had the short chunk: these are all full.)
      assert.equal(info.tokens, 256, `${k}'s tokens`);
      assert.equal(sha(rx.view(k)!), hashes[i], `bytes of ${k}`);
      const lease = rx.pool.leaseOf(pages[i])!;
      assert.deepEqual(lease.pages, [pages[i]]);
      leases.add(lease);
    });
    assert.equal(leases.size, 5);
    // Removing one key frees exactly its page.
    assert.ok(rx.remove(keys[2]));
    assert.equal(rx.pool.free, freeBefore + 2);
    assert.equal(rx.pool.leaseOf(pages[2]), undefined);
    for (const k of [keys[0], keys[1], keys[3], keys[4]]) assert.ok(rx.info(k)?.landed);
    owner.release(local);
  },
);

test("pd: a landed notification counts only from the agent the key's pages were given to", {
  skip,
}, async () => {
  const { rx } = await receiver(16);
  await using _rx = rx;
  await using owner = await sender({ creditPages: 0 });
  await using stranger = await sender({ creditPages: 0 });
  await owner.connect(spec(rx, ""));
  await stranger.connect(spec(rx, ""));
  const ownerCh = owner.channel as NixlChannel;
  const strangerCh = stranger.channel as NixlChannel;
  const rxAgent = ownerCh.peerAgentName(rx.id)!;
  const k = testKey("land", 0);
  const reply = await rawAlloc(rx, [k], { kvport_agent: ownerCh.agentName });
  const page = Number((reply.remote_indexes as number[])[0]);
  assert.equal(rx.info(k)?.landed, false);
  const landed: string[] = [];
  rx.onLanded((keys) => landed.push(...keys));
  strangerCh.agent.sendNotification(rxAgent, encodeLanded([k]));
  await pause(100);
  assert.equal(rx.info(k)?.landed, false, "the stranger's word does not land the key");
  assert.equal(rx.stats.landedRefused, 1);
  assert.deepEqual(landed, []);
  fillFor(k, ownerCh.pages[0]);
  await owner.channel.write([0], {
    peerId: rx.id,
    remoteIndexes: [page],
    notification: encodeLanded([k]),
  });
  await eventually(() => rx.info(k)?.landed === true, "the owner's landed");
  assert.equal(sha(rx.view(k)!), sha(ownerCh.pages[0]));
  assert.deepEqual(landed, [k]);
});

test(
  "pd credits: from the configuration: extra_config.kvport_pd_credit_pages 0 turns them off, the receiver's caps hold",
  {
    skip,
  },
  async () => {
    const fixture = (name: string) => new URL(`./fixtures/pd/${name}`, import.meta.url).pathname;
    const common = { pd_buffer_device: "cpu", transfer_channel: "nixl", nixl_backends: null };
    const dec = loadConfig({
      file: fixture("lmcache-decoder-config.yaml"),
      env: {},
      overrides: {
        ...common,
        pd_buffer_size: 32 * PAGE,
        extra_config: { kvport_pd_credit_max: 3, kvport_pd_credit_total: 2 },
      },
    }).config;
    const pre = (pages: number) =>
      loadConfig({
        file: fixture("lmcache-prefiller-config.yaml"),
        env: {},
        overrides: {
          ...common,
          pd_buffer_size: 16 * PAGE,
          pd_skip_proxy_notification: true,
          extra_config: { kvport_pd_credit_pages: pages },
        },
      }).config;
    await using rx = await PdReceiver.fromConfig(dec, {
      pageSize: PAGE,
      host: "127.0.0.1",
      initPort: 0,
      allocPort: 0,
      engine: "builtin",
    });
    await using off = await PdSender.fromConfig(pre(0), { pageSize: PAGE, engine: "builtin" });
    for (let r = 0; r < 2; r++) {
      const keys = keysOf(`cfg-off${r}`, 2);
      checkAndRemove(rx, keys, (await sendKeys(off, rx, `cfg-off${r}`, keys)).hashes);
    }
    assert.equal(rx.stats.allocRequests, 2);
    assert.equal(rx.stats.creditsGiven, 0);
    await using on = await PdSender.fromConfig(pre(8), { pageSize: PAGE, engine: "builtin" });
    const a = keysOf("cfg-on0", 1);
    checkAndRemove(rx, a, (await sendKeys(on, rx, "cfg-on0", a)).hashes);
    // Eight asked for, the receiver's total cap (2) given.
    await eventually(() => on.credits.pages === 2, "two credits");
    assert.equal(rx.stats.creditPages, 2);
    const b = keysOf("cfg-on1", 2);
    checkAndRemove(rx, b, (await sendKeys(on, rx, "cfg-on1", b)).hashes);
    assert.equal(rx.stats.allocRequests, 3, "the last request used the two credits");
    assert.equal(rx.stats.binds, 1);
  },
);
