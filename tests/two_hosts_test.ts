// Two hosts for real (issue 13.6): a PD sender and receiver in two network namespaces
// joined by a veth pair, so the TCP path is used as between hosts (no loopback, no
// same-host shortcut: the namespaces see different addresses and the engine's locality
// proof fails over TCP). A transfer lands with its bytes checked; the link cut in the
// middle of a transfer fails it with a typed error within the deadline; after the link
// returns a new transfer lands.
import { test } from "./helpers/skip.ts";
import assert from "node:assert/strict";
import { type ChildProcess, spawn, spawnSync } from "node:child_process";
import * as readline from "node:readline";
import process from "node:process";
import { nativeLibrary } from "../mod.ts";

const IS_BUN = "Bun" in globalThis;
const HELPER = new URL("./helpers/netns_peer.ts", import.meta.url).pathname;

function sh(args: string[]): { ok: boolean; out: string } {
  const r = spawnSync(args[0], args.slice(1), { encoding: "utf8", timeout: 10_000 });
  return { ok: r.status === 0, out: `${r.stdout ?? ""}${r.stderr ?? ""}${r.error?.message ?? ""}` };
}

/** Why namespaces cannot be made here, or `false`. */
async function skipReason(): Promise<string | false> {
  const native = await nativeLibrary().then(() => "", (e) => String(e).split("\n")[0]);
  if (native) return `libkvport.so not loadable (build it: make -C native): ${native}`;
  if (process.getuid?.() !== 0) return "network namespaces need root (CI runs as root)";
  if (!sh(["ip", "-V"]).ok) return "no ip command (install iproute2)";
  if (!sh(["unshare", "--version"]).ok) return "no unshare command (install util-linux)";
  const probe = `kvp-probe-${process.pid}`;
  const made = sh(["ip", "netns", "add", probe]);
  sh(["ip", "netns", "del", probe]);
  if (!made.ok) return `ip netns add failed: ${made.out.trim()}`;
  return false;
}

const skip = await skipReason();

/** Two namespaces joined by veth, with addresses; `close` removes all (idempotent). */
function makeHosts() {
  const tag = `${process.pid.toString(36)}${Math.floor(Math.random() * 36 ** 3).toString(36)}`;
  const nsA = `kvp-a-${tag}`;
  const nsB = `kvp-b-${tag}`;
  const vethA = `kva${tag}`.slice(0, 15);
  const vethB = `kvb${tag}`.slice(0, 15);
  const net = 1 + Math.floor(Math.random() * 250);
  const ipA = `10.213.${net}.1`;
  const ipB = `10.213.${net}.2`;
  const run = (args: string[]) => {
    const r = sh(args);
    if (!r.ok) throw new Error(`${args.join(" ")} failed: ${r.out}`);
  };
  const close = () => {
    sh(["ip", "netns", "del", nsA]);
    sh(["ip", "netns", "del", nsB]);
    sh(["ip", "link", "del", vethA]);
  };
  try {
    run(["ip", "netns", "add", nsA]);
    run(["ip", "netns", "add", nsB]);
    run(["ip", "link", "add", vethA, "type", "veth", "peer", "name", vethB]);
    run(["ip", "link", "set", vethA, "netns", nsA]);
    run(["ip", "link", "set", vethB, "netns", nsB]);
    for (const [ns, dev, ip] of [[nsA, vethA, ipA], [nsB, vethB, ipB]]) {
      run(["ip", "-n", ns, "link", "set", "lo", "up"]);
      run(["ip", "-n", ns, "addr", "add", `${ip}/24`, "dev", dev]);
      run(["ip", "-n", ns, "link", "set", dev, "up"]);
    }
  } catch (e) {
    close();
    throw e;
  }
  // A slower link (best effort) so that a transfer lasts long enough to be cut in its
  // middle; without tc's tbf the transfers are made larger instead.
  const shaped = sh([
    "ip",
    "netns",
    "exec",
    nsA,
    "tc",
    "qdisc",
    "add",
    "dev",
    vethA,
    "root",
    "tbf",
    "rate",
    "400mbit",
    "burst",
    "256kbit",
    "latency",
    "200ms",
  ]).ok;
  return {
    nsA,
    nsB,
    vethA,
    ipA,
    ipB,
    shaped,
    link: (up: boolean) => run(["ip", "-n", nsA, "link", "set", vethA, up ? "up" : "down"]),
    close,
  };
}

/** A helper process in a namespace, spoken to in JSON lines. */
function peer(ns: string, args: string[]) {
  const runtime = IS_BUN ? [process.execPath, HELPER] : [process.execPath, "run", "-A", HELPER];
  // Its own pid namespace too, as on another host: the engine's same-host proof cannot
  // find the peer's process, so the data goes over TCP (over the veth).
  const isolate = ["unshare", "--pid", "--fork", "--mount-proc"];
  const child: ChildProcess = spawn("ip", ["netns", "exec", ns, ...isolate, ...runtime, ...args], {
    stdio: ["pipe", "pipe", "pipe"],
  });
  let stderr = "";
  child.stderr!.setEncoding("utf8");
  child.stderr!.on("data", (d: string) => (stderr += d));
  const lines: unknown[] = [];
  const waiters: ((v: unknown) => void)[] = [];
  readline.createInterface({ input: child.stdout! }).on("line", (l) => {
    let v: unknown;
    try {
      v = JSON.parse(l);
    } catch {
      return;
    }
    const w = waiters.shift();
    if (w) w(v);
    else lines.push(v);
  });
  const exited = new Promise<void>((r) => child.on("close", () => r()));
  // deno-lint-ignore no-explicit-any
  const next = (timeoutMs: number): Promise<any> => {
    if (lines.length > 0) return Promise.resolve(lines.shift());
    return new Promise((resolve, reject) => {
      const t = setTimeout(() => {
        const i = waiters.indexOf(done);
        if (i >= 0) waiters.splice(i, 1);
        reject(new Error(`no answer from ${args[0]} within ${timeoutMs} ms: ${stderr}`));
      }, timeoutMs);
      const done = (v: unknown) => {
        clearTimeout(t);
        resolve(v);
      };
      waiters.push(done);
      void exited.then(() => {
        clearTimeout(t);
        reject(new Error(`${args[0]} exited: ${stderr}`));
      });
    });
  };
  return {
    // deno-lint-ignore no-explicit-any
    ask: (cmd: unknown, timeoutMs: number): Promise<any> => {
      child.stdin!.write(JSON.stringify(cmd) + "\n");
      return next(timeoutMs);
    },
    next,
    kill: async () => {
      if (child.exitCode === null && child.signalCode === null) child.kill("SIGKILL");
      await exited;
    },
  };
}

test("two hosts: a PD transfer over veth, a link cut mid-transfer, recovery", {
  skip,
  timeout: 120_000,
}, async () => {
  const hosts = makeHosts();
  const PAGE = 2 * 4 * 16 * 2048 * 2; // 512 KiB
  const PAGES = 128; // 64 MiB
  const TIMEOUT_MS = 3000;
  const rx = peer(hosts.nsB, ["receiver", hosts.ipB, String(PAGE), String(PAGES)]);
  const tx = peer(hosts.nsA, ["sender", String(PAGE), String(PAGES), String(TIMEOUT_MS)]);
  try {
    const ready = (await rx.next(30_000)).ready;
    assert.match(ready.init, new RegExp(`^${hosts.ipB.replaceAll(".", "\\.")}:\\d+$`));
    assert.match(ready.data, new RegExp(`^${hosts.ipB.replaceAll(".", "\\.")}:\\d+$`));
    assert.deepEqual(await tx.next(30_000), { ready: true });
    const port = (u: string) => Number(u.slice(u.lastIndexOf(":") + 1));
    const send = (reqId: string, chunks: number, timeoutMs: number) =>
      tx.ask({
        op: "send",
        host: hosts.ipB,
        init: port(ready.init),
        alloc: port(ready.alloc),
        reqId,
        chunks,
      }, timeoutMs);

    /** The receiver's counts once `landed` reaches `atLeast` (its notification may trail). */
    let lastStats: unknown;
    const landedCount = async (atLeast: number) => {
      const until = performance.now() + 5000;
      while (true) {
        const c = await rx.ask({ op: "count" }, 5000) as {
          landed: number;
          bad: number;
          stats?: unknown;
        };
        lastStats = c.stats;
        if (c.landed >= atLeast || performance.now() > until) {
          return { landed: c.landed, bad: c.bad };
        }
        await new Promise((r) => setTimeout(r, 50));
      }
    };

    // 1. A transfer between the namespaces: every byte checked by the receiver.
    const first = await send("first", 16, 30_000);
    assert.equal(first.ok, true, JSON.stringify(first));
    assert.equal(first.sent, 16);
    assert.ok(first.postsTcp > 0 && first.postsMem === 0, `not over TCP: ${JSON.stringify(first)}`);
    assert.deepEqual(await landedCount(16), { landed: 16, bad: 0 });

    // 2. The link goes down in the middle of a large transfer: it fails with a typed
    // error within the deadline (plus the time of the part before the cut).
    const big = send("cut", PAGES, 60_000);
    await new Promise((r) => setTimeout(r, hosts.shaped ? 300 : 20));
    const cutAt = performance.now();
    hosts.link(false);
    const cut = await big;
    const afterCut = performance.now() - cutAt;
    assert.equal(cut.ok, false, `the transfer finished before the cut: ${JSON.stringify(cut)}`);
    assert.match(cut.name, /^(ChannelTimeoutError|ChannelError|PdSendError|PdAllocRefusedError)$/);
    assert.match(cut.message, /timed out|timeout|deadline/i, cut.message);
    assert.ok(afterCut < 3 * TIMEOUT_MS + 2000, `failed ${afterCut} ms after the cut`);
    const landedBefore = await landedCount(16);
    assert.equal(landedBefore.bad, 0);
    assert.ok(landedBefore.landed < 16 + PAGES, "every chunk of the cut transfer landed");

    // 3. The link returns. The receiver gets back every page reserved for the cut
    // request (the sender's declared deadline passes, then the quarantine), without a
    // CancelNotif, which could not cross the cut link; then a new transfer lands.
    hosts.link(true);
    const until = performance.now() + 30_000;
    let free = -1;
    while (performance.now() < until) {
      const c = await rx.ask({ op: "count" }, 5000) as { stats: { freePages: number } };
      free = c.stats.freePages;
      if (free === PAGES) break;
      await new Promise((r) => setTimeout(r, 200));
    }
    assert.equal(free, PAGES, `pages still reserved for the cut request: ${free} of ${PAGES} free`);
    const again = await send("again", 16, 60_000);
    assert.equal(again.ok, true, JSON.stringify({ again, receiver: lastStats }));
    assert.ok(again.postsTcp > first.postsTcp, JSON.stringify(again));
    const after = await landedCount(landedBefore.landed + 16);
    assert.equal(after.bad, 0);
    assert.ok(after.landed >= landedBefore.landed + 16, JSON.stringify(after));
  } finally {
    await tx.kill();
    await rx.kill();
    hosts.close();
  }
});
