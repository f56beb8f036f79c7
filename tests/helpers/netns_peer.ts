/**
 * One side of tests/two_hosts_test.ts, run inside a network namespace
 * (`ip netns exec NS <runtime> netns_peer.ts MODE ...`). Talks JSON lines: commands on
 * stdin, one answer per command on stdout.
 *
 * - `receiver HOST PAGE PAGES`: a PD receiver on HOST (builtin engine, TCP data plane);
 *   prints `{"ready":{init,alloc,data}}`. Each landed chunk is checked against
 *   `fillFor(key)` and freed; command `{"op":"count"}` answers
 *   `{"landed":n,"bad":m}`.
 * - `sender PAGE PAGES TIMEOUT_MS`: a PD sender (builtin engine) with every deadline
 *   TIMEOUT_MS; prints `{"ready":true}`. Command
 *   `{"op":"send","host":H,"init":P,"alloc":P,"reqId":R,"chunks":N}` sends N chunks
 *   filled by `fillFor` and answers `{"ok":true,"sent":n,"ms":t}` or
 *   `{"ok":false,"name":E,"code":C,"message":M,"ms":t}`.
 *
 * @module
 */
import * as readline from "node:readline";
import process from "node:process";
import { PdReceiver, PdSender } from "../../mod.ts";
import { NixlChannel } from "../../src/channel/nixl.ts";
import { checkFor, fillFor, testKey } from "./pd_util.ts";

const SHAPE_TOKENS = 16;

function say(o: unknown): void {
  process.stdout.write(JSON.stringify(o) + "\n");
}

async function receiver(host: string, page: number, pages: number): Promise<void> {
  const rx = await PdReceiver.create({
    host,
    initPort: 0,
    allocPort: 0,
    bufferSize: pages * page,
    pageSize: page,
    chunkSize: SHAPE_TOKENS,
    engine: "builtin",
    // Pages of a WRITE cut with the link come back after the sender's declared deadline
    // (kvport_ttl_ms) and this quarantine (default 30 s; short to keep the test short).
    cancelQuarantineMs: 1000,
  });
  let landed = 0;
  let bad = 0;
  rx.onLanded((keys) => {
    for (const k of keys) {
      landed++;
      if (!checkFor(k, rx.view(k)!)) bad++;
      rx.remove(k);
    }
  });
  say({
    ready: {
      init: rx.initUrl,
      alloc: rx.allocUrl,
      data: rx.channel instanceof NixlChannel ? rx.channel.agent.listen : null,
    },
  });
  for await (const line of readline.createInterface({ input: process.stdin })) {
    const cmd = JSON.parse(line);
    if (cmd.op === "count") say({ landed, bad, stats: rx.stats });
  }
  await rx.close();
}

/** The engine's posts per data path (`posts_tcp`, `posts_mem`, ...): which path moved data. */
function paths(tx: PdSender): Record<string, number> {
  if (!(tx.channel instanceof NixlChannel)) return {};
  const info = tx.channel.agent.info();
  return { postsTcp: Number(info.posts_tcp ?? -1), postsMem: Number(info.posts_mem ?? -1) };
}

async function sender(page: number, pages: number, timeoutMs: number): Promise<void> {
  const tx = await PdSender.create({
    bufferSize: pages * page,
    pageSize: page,
    engine: "builtin",
    proxyHost: null,
    proxyPort: null,
    handshakeTimeoutMs: timeoutMs,
    transferTimeoutMs: timeoutMs,
    allocTimeoutMs: timeoutMs,
  });
  say({ ready: true });
  for await (const line of readline.createInterface({ input: process.stdin })) {
    const cmd = JSON.parse(line);
    if (cmd.op !== "send") continue;
    const t0 = performance.now();
    let pagesHeld: number[] = [];
    try {
      pagesHeld = await tx.allocate(cmd.chunks, timeoutMs);
      const keys = pagesHeld.map((_, i) => testKey(cmd.reqId, i));
      keys.forEach((k, i) => fillFor(k, tx.channel.pages[pagesHeld[i]]));
      const r = await tx.send(
        {
          reqId: cmd.reqId,
          receiverHost: cmd.host,
          receiverInitPort: [cmd.init],
          receiverAllocPort: [cmd.alloc],
          isLastPrefill: true,
        },
        {
          keys,
          pages: pagesHeld,
          shape: [2, 4, SHAPE_TOKENS, page / (2 * 4 * SHAPE_TOKENS * 2)],
          dtype: "bfloat16",
          lastChunkToks: SHAPE_TOKENS,
        },
      );
      say({ ok: true, sent: r.sent, ms: performance.now() - t0, ...paths(tx) });
    } catch (e) {
      const err = e as Error & { code?: string };
      say({
        ok: false,
        name: err.name,
        code: err.code ?? null,
        message: err.message,
        ms: performance.now() - t0,
      });
    }
  }
  await tx.close();
}

const [mode, ...args] = process.argv.slice(2);
if (mode === "receiver") await receiver(args[0], Number(args[1]), Number(args[2]));
else if (mode === "sender") await sender(Number(args[0]), Number(args[1]), Number(args[2]));
else throw new Error(`netns_peer: unknown mode ${mode}`);
