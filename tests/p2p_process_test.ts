// P2P sharing between three processes on the built-in engine: a `kvport p2p-registry`
// child, a `kvport p2p-peer` child holding chunks (driven by JSON lines on its stdin), and
// the requester in this process. Full, partial and missed prefixes; error 3 (the holder
// forgot our handshake) -> re-handshake and retry; the holder evicting between lookup and
// fetch; the holder killed and restarted between lookups. Every byte
// of every fetched chunk is checked, and the CRC compared with the holder's.
import { test } from "./helpers/skip.ts";
import assert from "node:assert/strict";
import process from "node:process";
import { nativeLibrary } from "../mod.ts";
import { freePort, nextEvent } from "../cli/demo_cmd.ts";
import { spawnP2p, type StdinChild } from "../cli/p2p_cmd.ts";
import {
  checkFetched,
  docKeys,
  instance,
  instanceConfig,
  tempDir,
  waitForHits,
} from "./helpers/p2p_util.ts";

const skip: string | false = await nativeLibrary().then(
  () => false,
  (e) => `libkvport.so not loadable (build it: make -C native): ${String(e).split("\n")[0]}`,
);
if (skip) console.log(`p2p_process_test skipped: ${skip}`);

const SHAPE = "2,2,256,128"; // 256 KiB chunks of bf16
const PAGE = 2 * 2 * 256 * 128 * 2;

function cmd(child: StdinChild, c: Record<string, unknown>): void {
  child.write(JSON.stringify(c));
}

test("p2p process: registry, holder and requester processes; every byte checked", {
  skip,
}, async () => {
  const tmp = tempDir("kvport-p2p-test-");
  // The registry binds ports of its own choosing and says which (no pick-then-bind race);
  // the holder keeps fixed ports, as it restarts on them below.
  const registry = spawnP2p("registry", [
    "p2p-registry",
    "--pull-url",
    "127.0.0.1:0",
    "--reply-url",
    "127.0.0.1:0",
    "--heartbeat-timeout",
    "5",
    "--json",
  ]);
  const rReady = await nextEvent(registry, "ready", 30_000);
  const pullUrl = String(rReady.pull);
  const replyUrl = String(rReady.reply);
  const [init, lookup, worker] = await Promise.all([1, 2, 3].map(() => freePort()));
  const holderYaml = instanceConfig(tmp.dir, {
    id: "holder",
    initPort: init,
    lookupPort: lookup,
    workerPort: worker,
    pull: pullUrl,
    reply: replyUrl,
    bufferBytes: 16 * PAGE,
  });
  const children: StdinChild[] = [];
  const startHolder = async (store: string) => {
    const h = spawnP2p("holder", [
      "p2p-peer",
      "--config",
      holderYaml,
      "--kv-shape",
      SHAPE,
      "--store",
      store,
      "--engine",
      "builtin",
      "--json",
    ]);
    children.push(h);
    return { child: h, ready: await nextEvent(h, "ready", 30_000) };
  };
  children.push(registry);
  const requester = await instance({ pullUrl, replyUrl }, "requester", {
    channelType: "nixl",
    engine: "builtin",
    pageSize: PAGE,
    bufferSize: 16 * PAGE,
  });
  try {
    const h1 = await startHolder("A:8");
    assert.match(pullUrl, /^127\.0\.0\.1:\d+$/);
    assert.deepEqual([h1.ready.engine, h1.ready.stored], ["builtin", 8]);
    assert.equal(h1.ready.init, `127.0.0.1:${init}`);
    const a = docKeys("A", 8);
    await waitForHits(requester, a, 8);

    // a full hit, compared with the holder's own CRC
    const full = await requester.retrieve(a);
    assert.equal(full.error, undefined);
    assert.deepEqual([full.hitChunks, full.handshakes], [8, 1]);
    assert.equal(full.holder?.peerInitUrl, `127.0.0.1:${init}`);
    const mine = checkFetched(requester, full);
    cmd(h1.child, { cmd: "checksum", keys: a });
    const theirs = await nextEvent(h1.child, "checksum", 5000);
    assert.deepEqual([mine.bad, mine.crc], [0, theirs.crc]);

    // a partial prefix and a miss
    const p = await requester.retrieve([...a.slice(0, 5), ...docKeys("B", 3, 5)]);
    assert.deepEqual([p.hitChunks, p.handshakes], [5, 0]);
    assert.equal(checkFetched(requester, p).bad, 0);
    const miss = await requester.retrieve(docKeys("C", 3));
    assert.deepEqual([miss.hitChunks, miss.error], [0, undefined]);

    // the holder forgets our handshake: it answers error 3, we handshake again and retry
    cmd(h1.child, { cmd: "forget", peer: requester.receiverId });
    await nextEvent(h1.child, "forgot", 5000);
    const retried = await requester.retrieve(a);
    assert.equal(retried.error, undefined);
    assert.deepEqual([retried.hitChunks, retried.attempts, retried.handshakes], [8, 2, 1]);
    assert.equal(checkFetched(requester, retried).bad, 0);

    // the holder evicts chunk 5 between our lookup and our fetch
    const l = await requester.lookup(a);
    assert.equal(l.hitChunks, 8);
    cmd(h1.child, { cmd: "evict", keys: [a[5]] });
    assert.equal((await nextEvent(h1.child, "evicted", 5000)).n, 1);
    const shorter = await requester.fetch(l);
    assert.deepEqual([shorter.promised, shorter.hitChunks], [8, 5]);
    assert.equal(checkFetched(requester, shorter).bad, 0);

    // the holder dies (no deregistration) and a new incarnation takes its ports
    process.kill(h1.ready.pid as number, "SIGKILL");
    await h1.child.exited;
    const h2 = await startHolder("A:6");
    assert.equal(h2.ready.init, `127.0.0.1:${init}`);
    await waitForHits(requester, a, 6);
    const again = await requester.retrieve(a);
    assert.equal(again.error, undefined, String(again.error));
    assert.equal(again.hitChunks, 6);
    assert.ok(again.handshakes >= 1, "the new incarnation was handshaken");
    assert.equal(checkFetched(requester, again).bad, 0);
    assert.equal(requester.stats.handshakes, 3);
    assert.equal(requester.stats.freePages, requester.pool.pageCount, "no page leaked");

    for (const c of [h2.child, registry]) cmd(c, { cmd: "exit" });
    assert.deepEqual(await Promise.all([h2.child.exited, registry.exited]), [0, 0]);
  } finally {
    await requester.close();
    for (const c of children) c.kill();
    await Promise.all(children.map((c) => c.exited));
    tmp.cleanup();
  }
});
