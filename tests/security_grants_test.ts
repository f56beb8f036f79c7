// Issue 13.1 and 13.3 at the TypeScript/channel level, with crafted clients that follow
// our own wire formats (the control plane's msgpack messages, the builtin engine's
// metadata blob): pages, not buffers (a stranger that got a PD receiver's metadata can
// neither READ its buffer nor WRITE a page never given to it, while a genuine sender
// goes on; a PD sender reaches only the pages of its AllocResponse, and not after they
// landed, were cancelled or expired; a P2P holder only the pages offered for that
// lookup), and locality proven (a forged blob copying a P2P holder's identity makes no
// chunk of it overwritten). Every check reads the bytes. The native side has its own
// tests (native/tests/test_grants.c, test_locality.c); these cover what the channels
// grant and when.
import { test } from "./helpers/skip.ts";
import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import process from "node:process";
import {
  ChannelError,
  createTransferChannel,
  DescList,
  MemoryFormat,
  nativeLibrary,
  NixlAgent,
  type NixlChannel,
  NixlError,
  P2PBackend,
  PdReceiver,
  PdSender,
  type SideMessage,
} from "../mod.ts";
import { spawn } from "node:child_process";
import { fileURLToPath } from "node:url";
import { openRequester, type Requester, serveRequests } from "../src/channel/control.ts";
import { attack, type AttackResult } from "./helpers/grants_stranger.ts";
import { forgeKvpm, parseKvpm } from "./helpers/kvpm_blob.ts";
import { docKeys, storeDoc } from "./helpers/p2p_util.ts";
import { fillPattern } from "../src/pd/pattern.ts";

const skip: string | false = await nativeLibrary().then(
  () => false,
  (e) => `libkvport.so not loadable (build it: make -C native): ${String(e).split("\n")[0]}`,
);

const PAGE = 64 * 1024;
const PAGES = 16;
// One full chunk of [2, 1, 256, 64] bfloat16 (KV_2LTD) is exactly one page.
const SHAPE = [2, 1, 256, 64];
const sha = (b: Uint8Array) => createHash("sha256").update(b).digest("hex");

function receiver(extra: Partial<Parameters<typeof PdReceiver.create>[0]> = {}) {
  return PdReceiver.create({
    host: "127.0.0.1",
    initPort: 0,
    allocPort: 0,
    bufferSize: PAGES * PAGE,
    pageSize: PAGE,
    channelType: "nixl",
    engine: "builtin",
    ...extra,
  });
}

// Page credits off: these tests follow the grants of AllocResponse pages (credit pages
// and their grants are tested in pd_credits_test.ts).
function sender() {
  return PdSender.create({
    bufferSize: PAGES * PAGE,
    pageSize: PAGE,
    channelType: "nixl",
    engine: "builtin",
    creditPages: 0,
  });
}

/** Every page of the receiver filled with its own byte, and their hashes. */
function paint(rx: PdReceiver): string[] {
  return rx.channel.pages.map((p, i) => {
    p.fill(0x30 + i);
    return sha(p);
  });
}

/** A sender's key with a page of its own content. */
async function sendKeys(tx: PdSender, rx: PdReceiver, reqId: string, keys: string[]) {
  const pages = await tx.allocate(keys.length);
  const data = keys.map((k, i) => {
    const v = tx.channel.pages[pages[i]];
    fillPattern(k, v);
    return v.slice();
  });
  await tx.send(
    {
      reqId,
      receiverHost: "127.0.0.1",
      receiverInitPort: rx.initPort,
      receiverAllocPort: rx.allocPort,
      isLastPrefill: true,
    },
    { keys, pages, shape: SHAPE, dtype: "bfloat16", lastChunkToks: 256 },
  );
  await rx.waitFor(keys, 10_000);
  return data;
}

/** The native agent's count of granted ranges, waited for until it is `want`. */
async function waitGrants(ch: NixlChannel, want: number, timeoutMs = 5000): Promise<void> {
  const end = performance.now() + timeoutMs;
  let got = -1;
  while (performance.now() < end) {
    got = Number(ch.agent.info().grants);
    if (got === want) return;
    await new Promise((r) => setTimeout(r, 10));
  }
  assert.fail(`the receiver holds ${got} granted range(s), expected ${want}`);
}

function notAllowed(e: unknown, op: "read" | "write", victim: string, attacker: string) {
  const err = e instanceof ChannelError ? e.cause : e;
  assert.ok(err instanceof NixlError, `expected a NixlError, got ${String(e)}`);
  assert.equal(err.statusName, "NIXL_ERR_NOT_ALLOWED", err.message);
  return notAllowedText(err.message, op, victim, attacker);
}

/** The refusal names the target, the peer, the op, the length and the address: the target
 * refuses (TCP), or the initiator's engine checks the target's published grants (same
 * host). */
function notAllowedText(message: string, op: "read" | "write", victim: string, attacker: string) {
  const piece = `a ${op} of \\d+ bytes at 0x[0-9a-f]+`;
  assert.match(
    message,
    new RegExp(
      `agent ${victim} (refused ${piece} .*from agent ${attacker}|does not grant agent ` +
        `${attacker} ${piece})`,
    ),
  );
  return message;
}

/** The attack in a process of its own, under the runtime running the tests. */
function attackFromAnotherProcess(options: Parameters<typeof attack>[0]): Promise<AttackResult> {
  const script = fileURLToPath(new URL("./helpers/grants_stranger.ts", import.meta.url));
  const isDeno = typeof (globalThis as { Deno?: unknown }).Deno !== "undefined";
  const args = isDeno ? ["run", "-A", script] : [script];
  const child = spawn(process.execPath, [...args, JSON.stringify(options)], {
    stdio: ["ignore", "pipe", "inherit"],
  });
  let out = "";
  child.stdout!.on("data", (d) => (out += String(d)));
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => child.kill(), 30_000);
    child.on("exit", (code) => {
      clearTimeout(timer);
      if (code === 0) resolve(JSON.parse(out.trim().split("\n").pop()!));
      else reject(new Error(`the stranger process exited ${code}: ${out}`));
    });
  });
}

const WHERE = {
  tcp: "TCP",
  "same-process": "same process",
  "same-host": "same host, another process",
} as const;

for (const where of ["tcp", "same-process", "same-host"] as const) {
  test(
    `grants (${
      WHERE[where]
    }): a stranger with the receiver's metadata can neither READ the buffer nor WRITE an unallocated page; a genuine sender transfers meanwhile`,
    {
      skip,
    },
    async () => {
      await using rx = await receiver();
      const ch = rx.channel as NixlChannel;
      assert.equal(ch.pageGrants, "on", "PD receivers enforce page grants by default");
      const before = paint(rx);
      await using tx = await sender();
      const keys = ["vllm@m@1@0@aa01@bfloat16", "vllm@m@1@0@aa02@bfloat16"];
      const options = {
        initUrl: rx.initUrl,
        pages: PAGES,
        pageSize: PAGE,
        transport: where === "tcp" ? "tcp" as const : "auto" as const,
      };
      // The genuine sender's request runs at the same time as the attack.
      const [sent, result] = await Promise.all([
        sendKeys(tx, rx, "r1", keys),
        where === "same-host" ? attackFromAnotherProcess(options) : attack(options),
      ]);
      const { victim } = result;
      assert.equal(victim, ch.agentName);
      // The path taken shows in who refused: the TCP target itself ("refused ... from
      // agent evil"), or the stranger's engine against the grants the receiver publishes
      // (same process, same host: "does not grant agent evil").
      const form = where === "tcp"
        ? /refused a write .* from agent evil/
        : /does not grant agent evil/;
      assert.match(result.write.message, form);
      if (where === "tcp") assert.ok(result.posts.tcp > 0, JSON.stringify(result.posts));
      assert.equal(result.read.status, "NIXL_ERR_NOT_ALLOWED", "the READ of the buffer was served");
      notAllowedText(result.read.message, "read", victim, "evil");
      assert.ok(result.untouched, "bytes of the victim reached the stranger");
      assert.equal(
        result.write.status,
        "NIXL_ERR_NOT_ALLOWED",
        "a WRITE of a page never allocated",
      );
      notAllowedText(result.write.message, "write", victim, "evil");
      const last = BigInt(result.base) + BigInt((PAGES - 1) * PAGE);
      const at = `${PAGE} bytes at 0x${last.toString(16)}`;
      assert.ok(
        result.write.message.includes(at),
        `the refusal names ${at}: ${result.write.message}`,
      );

      const given = new Set<number>();
      keys.forEach((k, i) => {
        given.add(rx.info(k)!.page);
        assert.deepEqual(rx.view(k), sent[i], `the genuine sender's ${k} arrived intact`);
      });
      rx.channel.pages.forEach((p, i) => {
        if (!given.has(i)) assert.equal(sha(p), before[i], `page ${i} of the receiver changed`);
      });
      await waitGrants(ch, 0); // landed: nothing stays granted
    },
  );
}

test(
  "grants: a PD sender reaches only the pages of its AllocResponse, and neither after they landed, nor after a cancel, nor after expiry",
  {
    skip,
  },
  async () => {
    await using rx = await receiver({ pageGrantTtlMs: 1000 });
    const ch = rx.channel as NixlChannel;
    await using tx = await sender();
    const [landedData] = await sendKeys(tx, rx, "r0", ["vllm@m@1@0@bb00@bfloat16"]);
    const p0 = rx.info("vllm@m@1@0@bb00@bfloat16")!.page;
    await waitGrants(ch, 0);
    const [src] = await tx.allocate(1);
    tx.channel.pages[src].fill(0x99);
    const write = (page: number) =>
      tx.channel.write([src], { peerId: rx.id, remoteIndexes: [page], timeoutMs: 5000 });
    const refused = async (page: number, why: string) => {
      const before = sha(rx.channel.pages[page]);
      const e = await write(page).then(() => null, (e) => e);
      assert.ok(e instanceof ChannelError && e.code === "NOT_ALLOWED", `${why}: ${String(e)}`);
      notAllowed(e, "write", ch.agentName, tx.channel.agentName);
      assert.equal(sha(rx.channel.pages[page]), before, `${why}: page ${page} changed`);
    };
    await refused(p0, "a page that landed");
    assert.deepEqual(rx.view("vllm@m@1@0@bb00@bfloat16"), landedData);

    // An AllocRequest of the sender's own (as its PD code sends it), then pages around it.
    const alloc: Requester = await openRequester(rx.allocUrl, { timeoutMs: 5000 });
    try {
      const ask = async (key: string): Promise<number> => {
        const r = await alloc.request({
          type: "AllocRequest",
          keys: [key],
          fmt: MemoryFormat.KV_2LTD,
          shape: SHAPE,
          dtype: "bfloat16",
          last_chunk_toks: 256,
          req_id: key,
          is_last_batch: true,
          total_chunks: 1,
          kvport_agent: tx.channel.agentName,
        }, 5000);
        const [page] = r.remote_indexes as number[];
        assert.ok(page >= 0, JSON.stringify(r));
        return page;
      };
      const q = await ask("vllm@m@1@0@bb01@bfloat16");
      await refused((q + 1) % PAGES === p0 ? (q + 2) % PAGES : (q + 1) % PAGES, "outside");
      assert.equal(await write(q), 1);
      assert.ok(rx.channel.pages[q].every((b) => b === 0x99), "the granted page holds the data");
      const c = await alloc.request(
        {
          type: "CancelNotif",
          req_id: "vllm@m@1@0@bb01@bfloat16",
          keys: ["vllm@m@1@0@bb01@bfloat16"],
        },
        5000,
      );
      assert.equal(c.type, "AllocResponse");
      await refused(q, "a page whose request was cancelled");

      const r = await ask("vllm@m@1@0@bb02@bfloat16");
      await new Promise((res) => setTimeout(res, 1300));
      await refused(r, "a page whose grant expired (pageGrantTtlMs 1000)");

      // Without kvport_agent the receiver cannot know whom to grant: refused, clearly.
      const anon = await alloc.request({
        type: "AllocRequest",
        keys: ["vllm@m@1@0@bb03@bfloat16"],
        fmt: MemoryFormat.KV_2LTD,
        shape: SHAPE,
        dtype: "bfloat16",
        last_chunk_toks: 256,
      }, 5000);
      assert.deepEqual(anon.remote_indexes, [-1]);
      assert.equal(anon.kvport_reason, "bad_request");
      assert.match(String(anon.kvport_detail), /kvport_agent.*kvport_page_grants/);
      assert.equal(rx.contains("vllm@m@1@0@bb03@bfloat16"), false);
      // Naming an agent this receiver never handshook with: refused too, pages freed.
      const free = rx.stats.freePages;
      const stranger = await alloc.request({
        type: "AllocRequest",
        keys: ["vllm@m@1@0@bb04@bfloat16"],
        fmt: MemoryFormat.KV_2LTD,
        shape: SHAPE,
        dtype: "bfloat16",
        last_chunk_toks: 256,
        kvport_agent: "nobody-we-know",
      }, 5000);
      assert.deepEqual(stranger.remote_indexes, [-1]);
      assert.equal(stranger.kvport_reason, "bad_request");
      assert.match(String(stranger.kvport_detail), /nobody-we-know.*not loaded/);
      assert.equal(rx.contains("vllm@m@1@0@bb04@bfloat16"), false);
      assert.equal(rx.stats.freePages, free);
    } finally {
      await alloc.close();
    }
  },
);

test(
  "grants: a page retrieved and handed to another sender is that sender's alone",
  { skip },
  async () => {
    // One page: the second request must get the page the first one landed in.
    await using rx = await receiver({ bufferSize: PAGE });
    await using first = await sender();
    await using second = await sender();
    const [d1] = await sendKeys(first, rx, "r1", ["vllm@m@1@0@ee01@bfloat16"]);
    const page = rx.info("vllm@m@1@0@ee01@bfloat16")!.page;
    assert.deepEqual(rx.retrieve("vllm@m@1@0@ee01@bfloat16")!.data, d1);
    const [d2] = await sendKeys(second, rx, "r2", ["vllm@m@1@0@ee02@bfloat16"]);
    assert.equal(rx.info("vllm@m@1@0@ee02@bfloat16")!.page, page);
    const [src] = await first.allocate(1);
    first.channel.pages[src].fill(0x66);
    const e = await first.channel.write([src], { peerId: rx.id, remoteIndexes: [page] })
      .then(() => null, (e) => e);
    assert.ok(e instanceof ChannelError && e.code === "NOT_ALLOWED", String(e));
    assert.deepEqual(rx.view("vllm@m@1@0@ee02@bfloat16"), d2, "the first sender overwrote it");
  },
);

test(
  "grants: a peer that handshook with a P2P holder can neither READ nor WRITE its chunks",
  { skip },
  async () => {
    await using holder = await P2PBackend.create({
      instanceId: "holder",
      host: "127.0.0.1",
      initPort: 0,
      lookupPort: 0,
      pageSize: PAGE,
      bufferSize: PAGES * PAGE,
      channelType: "nixl",
      engine: "builtin",
      registryPullUrl: null,
      registryReplyUrl: null,
      heartbeatIntervalMs: null,
    });
    const keys = await storeDoc(holder, "doc", 2);
    const before = keys.map((k) => sha(holder.get(k)!));
    await using peer = await createTransferChannel({
      channelType: "nixl",
      role: "both",
      bufferSize: PAGES * PAGE,
      alignBytes: PAGE,
      tpRank: 0,
      peerInitUrl: null,
      backends: ["UCX"],
      engine: "builtin",
    });
    await peer.connect("holder", holder.initUrl, { sideMessage: { type: "P2PInitSideMsg" } });
    peer.pages[0].fill(0x77);
    const all = Array.from({ length: PAGES }, (_, i) => i);
    for (const op of ["read", "write"] as const) {
      const e = await peer[op](op === "read" ? all : [0], {
        peerId: "holder",
        remoteIndexes: op === "read" ? all : [0],
      }).then(() => null, (e) => e);
      assert.ok(e instanceof ChannelError && e.code === "NOT_ALLOWED", `${op}: ${String(e)}`);
    }
    assert.ok(peer.pages.slice(1).every((p) => p.every((b) => b === 0)), "holder bytes were read");
    keys.forEach((k, i) => assert.equal(sha(holder.get(k)!), before[i], `chunk ${i} changed`));
  },
);

test(
  "grants: with extra_config.kvport_page_grants false the channels enforce none (LMCache's model)",
  {
    skip,
  },
  async () => {
    await using rx = await receiver({ pageGrants: false });
    assert.equal((rx.channel as NixlChannel).pageGrants, "off");
    await using tx = await sender();
    const [d] = await sendKeys(tx, rx, "r0", ["vllm@m@1@0@cc00@bfloat16"]);
    assert.deepEqual(rx.view("vllm@m@1@0@cc00@bfloat16"), d);
    const [src] = await tx.allocate(1);
    tx.channel.pages[src].fill(0x42);
    // Any page is reachable: what grants are there to prevent.
    assert.equal(await tx.channel.write([src], { peerId: rx.id, remoteIndexes: [PAGES - 1] }), 1);
    assert.ok(rx.channel.pages[PAGES - 1].every((b) => b === 0x42));
  },
);

test(
  "grants: a P2P holder WRITEs only the pages the requester offered for that lookup, and none after the reply",
  {
    skip,
  },
  async () => {
    await using requester = await P2PBackend.create({
      instanceId: "req",
      host: "127.0.0.1",
      initPort: 0,
      lookupPort: 0,
      pageSize: PAGE,
      bufferSize: PAGES * PAGE,
      channelType: "nixl",
      engine: "builtin",
      registryPullUrl: null,
      registryReplyUrl: null,
      heartbeatIntervalMs: null,
      lookupRecvTimeoutMs: 5000,
      handshakeTimeoutMs: 2000,
    });
    assert.equal((requester.channel as NixlChannel).pageGrants, "on");
    const reqPages = requester.channel.pages;
    // A hostile holder: a channel of our own answering the P2P messages by hand.
    await using holder = await createTransferChannel({
      channelType: "nixl",
      role: "both",
      bufferSize: PAGES * PAGE,
      alignBytes: PAGE,
      tpRank: 0,
      peerInitUrl: "127.0.0.1:0",
      backends: ["UCX"],
      engine: "builtin",
    });
    holder.pages.forEach((p, i) => p.fill(0x60 + i));
    const outcome: {
      offered?: unknown;
      outside?: unknown;
      receiver?: string;
      offeredPage?: number;
    } = {};
    const lookup = await serveRequests("127.0.0.1:0", async (m: SideMessage) => {
      const peerId = String(m.receiver_id);
      const offered = (m.mem_indexes as number[]).map(Number);
      const outside = Array.from({ length: PAGES }, (_, i) => i).find((i) => !offered.includes(i))!;
      outcome.receiver = peerId;
      outcome.offeredPage = offered[0];
      outcome.offered = await holder.write([0], { peerId, remoteIndexes: [offered[0]] }).catch(
        (e) => e,
      );
      outcome.outside = await holder.write([1], { peerId, remoteIndexes: [outside] }).catch(
        (e) => e,
      );
      return { type: "BatchedLookupAndGetRetMsg", num_hit_chunks: 1 };
    });
    try {
      holder.onSideMessage(() => ({ type: "P2PInitSideRetMsg", peer_lookup_url: lookup.url }));
      const got = await requester.fetchFrom(holder.initUrl!, docKeys("doc", 2));
      assert.equal(got.error, undefined, String(got.error));
      assert.equal(outcome.offered, 1, `the offered page was refused: ${String(outcome.offered)}`);
      assert.ok(outcome.outside instanceof ChannelError && outcome.outside.code === "NOT_ALLOWED");
      notAllowed(outcome.outside, "write", requester.channel.agentName, holder.agentName);
      assert.equal(got.hitChunks, 1);
      assert.deepEqual(reqPages[got.pages[0]], holder.pages[0], "the offered page got the chunk");
      reqPages.forEach((p, i) => {
        if (i !== got.pages[0]) {
          assert.ok(p.every((b) => b === 0), `requester page ${i} was written`);
        }
      });
      // After the reply the holder's grant is gone: the same page is refused.
      const late = await holder.write([2], {
        peerId: outcome.receiver!,
        remoteIndexes: [outcome.offeredPage!],
      }).catch((e) => e);
      assert.ok(late instanceof ChannelError && late.code === "NOT_ALLOWED", String(late));
      assert.deepEqual(reqPages[got.pages[0]], holder.pages[0]);
      requester.release(got.pages);
    } finally {
      await lookup.close();
    }
  },
);

for (const variant of ["its own token", "a token of its own making"] as const) {
  test(
    `locality: a blob copying a P2P holder's boot id, pid namespace, pid, start time and agent page (with ${variant}) overwrites none of its chunks`,
    {
      skip,
    },
    async () => {
      await using holder = await P2PBackend.create({
        instanceId: "holder",
        host: "127.0.0.1",
        initPort: 0,
        lookupPort: 0,
        pageSize: PAGE,
        bufferSize: PAGES * PAGE,
        channelType: "nixl",
        engine: "builtin",
        registryPullUrl: null,
        registryReplyUrl: null,
        heartbeatIntervalMs: null,
        lookupRecvTimeoutMs: 3000,
        handshakeTimeoutMs: 2000,
      });
      const keys = await storeDoc(holder, "doc", 4);
      const before = keys.map((k) => sha(holder.get(k)!));
      const pageOf = keys.map((k) =>
        holder.channel.pages.findIndex((p) => sha(p) === sha(holder.get(k)!))
      );
      // Learn the holder's blob the way anyone can: a handshake with a throwaway agent.
      await using probe = await NixlAgent.create({ name: "probe", engine: "builtin" });
      const first = await openRequester(holder.initUrl, { timeoutMs: 5000 });
      const init = await first.request(
        { type: "NixlInitRequest", local_meta_bytes: probe.localMetadata() },
        5000,
      ).finally(() => first.close());
      const genuine = init.remote_meta_bytes as Uint8Array;
      const parsed = parseKvpm(genuine);
      assert.equal(parsed.pid, process.pid); // the forged blob will claim this very process
      const token = variant === "its own token"
        ? undefined
        : crypto.getRandomValues(new Uint8Array(16));
      const ghost = forgeKvpm(genuine, "ghost", token);
      // The ghost's "pages" are the holder's own: page i points at the page of chunk i+1, so
      // a holder that believed the blob would copy chunk 0 over chunk 1.
      const base = parsed.regions[0].addr;
      const addrs = BigUint64Array.from(
        keys.map((_, i) => base + BigInt(pageOf[(i + 1) % keys.length] * PAGE)),
      );
      const lens = new BigUint64Array(keys.length).fill(BigInt(PAGE));
      const ghostList = DescList.fromArrays("DRAM", { addrs, lens }, { agent: probe });
      const req = await openRequester(holder.initUrl, { timeoutMs: 5000 });
      try {
        const r1 = await req.request({ type: "NixlInitRequest", local_meta_bytes: ghost }, 5000)
          .catch((e) => e);
        if (variant === "its own token") {
          // Loading a blob with the holder's own token under another name is refused.
          assert.ok(!(r1 instanceof Error) && r1.type === "ErrorMsg", JSON.stringify(r1));
          assert.match(String(r1.error), /token of this agent/);
        } else {
          assert.equal(r1.type, "NixlInitResponse", "a forged blob is loaded (as a remote peer)");
          const r2 = await req.request({
            type: "NixlMemRegRequest",
            remote_agent_name: r1.remote_agent_name,
            local_id: "ghost",
            local_xfer_dlist_bytes: ghostList.serialize(),
          }, 5000);
          assert.equal(r2.type, "NixlMemRegResponse");
          const r3 = await req.request({ type: "P2PInitSideMsg" }, 5000);
          const lookupUrl = String(r3.peer_lookup_url);
          const lk = await openRequester(lookupUrl, { timeoutMs: 5000 });
          try {
            const reply = await lk.request({
              type: "BatchedLookupAndGetMsg",
              lookup_id: "forged-1",
              receiver_id: "ghost",
              keys,
              mem_indexes: keys.map((_, i) => i),
            }, 10_000);
            // The WRITE went over TCP to the blob's address (the holder's own listener, which
            // does not take the ghost's token) and failed: no same-host or same-process copy.
            assert.equal(reply.type, "P2PErrorMsg", JSON.stringify(reply));
          } finally {
            await lk.close();
          }
          const info = (holder.channel as NixlChannel).agent.info();
          assert.equal(info.posts_mem, "0", "a same-host copy was made for the forged peer");
          assert.equal(info.posts_cma, "0", "a cross-memory attach was made for the forged peer");
        }
      } finally {
        ghostList.release();
        await req.close();
      }
      keys.forEach((k, i) =>
        assert.equal(sha(holder.get(k)!), before[i], `chunk ${i} was overwritten`)
      );
    },
  );
}
