// The TCP streams under the wire (src/channel/wire/tcp.ts): node:net and, under Deno,
// Deno's own sockets must behave alike for what the ZMTP layer relies on: every byte in
// order, write callbacks once each and in order, pause/resume, end, destroy (also while
// connecting), bind errors. Each test runs on every kind this runtime has.
import assert from "node:assert/strict";
import process from "node:process";
import { onlyUnder, test } from "./helpers/skip.ts";
import {
  BunTcpStream,
  DenoTcpStream,
  tcpConnect,
  tcpListen,
  type TcpListener,
  type TcpStream,
  type WireTcpKind,
  wireTcpKind,
} from "../src/channel/wire/tcp.ts";
import { RepSocket, ReqSocket, WireError } from "../src/channel/wire/mod.ts";

const isDeno = typeof (globalThis as { Deno?: unknown }).Deno !== "undefined";
const isBun = typeof (globalThis as { Bun?: unknown }).Bun !== "undefined";
const own: WireTcpKind = isDeno ? "deno" : isBun ? "bun" : "node";
const KINDS: WireTcpKind[] = own === "node" ? ["node"] : ["node", own];

/** Runs `fn` with `KVPORT_WIRE_TCP=kind`, and puts the variable back after. */
async function withKind<T>(kind: WireTcpKind, fn: () => Promise<T>): Promise<T> {
  const before = process.env.KVPORT_WIRE_TCP;
  process.env.KVPORT_WIRE_TCP = kind;
  try {
    return await fn();
  } finally {
    if (before === undefined) delete process.env.KVPORT_WIRE_TCP;
    else process.env.KVPORT_WIRE_TCP = before;
  }
}

/** Bytes whose value depends on their position (a shifted or lost byte shows). */
function pattern(n: number, seed: number): Uint8Array {
  const out = new Uint8Array(n);
  for (let i = 0; i < n; i++) out[i] = (i * 31 + (i >>> 8) * 7 + seed) & 0xff;
  return out;
}

function firstDifference(a: Uint8Array, b: Uint8Array): number {
  const n = Math.min(a.length, b.length);
  for (let i = 0; i < n; i++) if (a[i] !== b[i]) return i;
  return a.length === b.length ? -1 : n;
}

function concat(chunks: Uint8Array[]): Uint8Array {
  const out = new Uint8Array(chunks.reduce((a, c) => a + c.length, 0));
  let off = 0;
  for (const c of chunks) {
    out.set(c, off);
    off += c.length;
  }
  return out;
}

function connected(s: TcpStream): Promise<void> {
  return new Promise((resolve, reject) => {
    s.once("connect", () => resolve());
    s.on("error", reject);
  });
}

function closed(s: TcpStream): Promise<void> {
  return new Promise((resolve) => s.once("close", () => resolve()));
}

for (const kind of KINDS) {
  test(`tcp ${kind}: 8 MiB both ways, every byte in order, write callbacks once each in order`, () =>
    withKind(kind, async () => {
      assert.equal(wireTcpKind(), kind);
      // The server echoes what it gets; the client sends pieces of many sizes (small ones
      // are joined, large ones may be written partially by the kernel).
      const server = await tcpListen("127.0.0.1", 0, (s) => {
        s.setNoDelay?.(true);
        s.on("data", (c) => s.write(c));
        s.on("error", () => {});
      });
      try {
        const c = tcpConnect("127.0.0.1", server.port);
        c.setNoDelay?.(true);
        await connected(c);
        if (kind === "deno") assert.ok(c instanceof DenoTcpStream);
        if (kind === "bun") assert.ok(c instanceof BunTcpStream);
        const sizes = [1, 7, 64, 3000, 4096, 4097, 65_536, 1 << 20, 10, 3 << 20, 5, 4 << 20];
        const pieces = sizes.map((n, i) => pattern(n, i));
        const total = sizes.reduce((a, n) => a + n, 0);
        const got: Uint8Array[] = [];
        let gotBytes = 0;
        const all = new Promise<void>((resolve) => {
          c.on("data", (chunk) => {
            got.push(chunk);
            gotBytes += chunk.length;
            if (gotBytes >= total) resolve();
          });
        });
        const order: number[] = [];
        const writes = pieces.map((p, i) =>
          new Promise<void>((resolve, reject) =>
            c.write(p, (e) => {
              order.push(i);
              if (e) reject(e);
              else resolve();
            })
          )
        );
        await Promise.all(writes);
        await all;
        assert.deepEqual(order, pieces.map((_, i) => i));
        const back = concat(got);
        assert.equal(back.length, total);
        assert.equal(firstDifference(back, concat(pieces)), -1);
        const done = closed(c);
        c.destroy();
        await done;
        assert.equal(c.destroyed, true);
      } finally {
        await server.close();
      }
    }));

  test(`tcp ${kind}: pause holds data back, resume delivers all of it; end closes after the bytes`, () =>
    withKind(kind, async () => {
      let accepted!: (s: TcpStream) => void;
      const acceptedP = new Promise<TcpStream>((r) => (accepted = r));
      const server = await tcpListen("127.0.0.1", 0, (s) => {
        s.pause();
        accepted(s);
      });
      try {
        const c = tcpConnect("127.0.0.1", server.port);
        await connected(c);
        const s = await acceptedP;
        const chunks: Uint8Array[] = [];
        s.on("data", (chunk) => chunks.push(chunk));
        const sClosed = closed(s);
        const body = pattern(200_000, 9);
        await new Promise<void>((resolve, reject) =>
          c.write(body, (e) => e ? reject(e) : resolve())
        );
        // Written to the kernel, but the paused reader has delivered nothing.
        assert.equal(chunks.length, 0);
        c.end(); // after the queued bytes: the server sees all of them, then the end
        s.resume();
        await sClosed;
        assert.equal(firstDifference(concat(chunks), body), -1);
        c.destroy();
      } finally {
        await server.close();
      }
    }));

  test(`tcp ${kind}: a refused connect emits error then close once; destroy while connecting closes once, no connect`, () =>
    withKind(kind, async () => {
      // A port that was just free: nothing listens there.
      const probe = await tcpListen("127.0.0.1", 0, () => {});
      const port = probe.port;
      await probe.close();
      const refused = tcpConnect("127.0.0.1", port);
      const errors: Error[] = [];
      let closes = 0;
      refused.on("error", (e) => errors.push(e));
      refused.on("close", () => closes++);
      await closed(refused);
      assert.equal(errors.length, 1);
      assert.match(errors[0].message, /refused|ECONNREFUSED/i);
      assert.equal(refused.destroyed, true);

      const server = await tcpListen("127.0.0.1", 0, (s) => s.on("error", () => {}));
      try {
        const c = tcpConnect("127.0.0.1", server.port);
        let connects = 0;
        let cCloses = 0;
        c.on("connect", () => connects++);
        c.on("close", () => cCloses++);
        c.on("error", () => {});
        const done = closed(c);
        c.destroy();
        await done;
        // A late connect (Deno.connect cannot be aborted) is closed, never reported.
        const late = tcpConnect("127.0.0.1", server.port); // a round trip to let it settle
        await connected(late);
        late.destroy();
        await closed(late);
        assert.equal(connects, 0);
        assert.equal(cCloses, 1);
        assert.equal(closes, 1);
      } finally {
        await server.close();
      }
    }));

  test(`tcp ${kind}: bytes whose write callback ran reach the peer when we destroy right after`, () =>
    withKind(kind, async () => {
      // PUSH sends, then closes: the peer must still get every message (a reset would make
      // its kernel drop what it had not read yet).
      let arrived!: (bytes: Uint8Array) => void;
      const got = new Promise<Uint8Array>((r) => (arrived = r));
      const listener = await tcpListen("127.0.0.1", 0, (s) => {
        const chunks: Uint8Array[] = [];
        s.on("data", (c) => chunks.push(c));
        s.on("error", () => {});
        closed(s).then(() => arrived(concat(chunks)));
      });
      try {
        const c = tcpConnect("127.0.0.1", listener.port);
        await connected(c);
        const body = pattern(3_000_000, 3);
        await new Promise<void>((resolve, reject) =>
          c.write(body, (e) => e ? reject(e) : resolve())
        );
        c.destroy();
        const back = await got;
        assert.equal(back.length, body.length);
        assert.equal(firstDifference(back, body), -1);
      } finally {
        await listener.close();
      }
    }));

  test(`tcp ${kind}: binding a port in use rejects; the listener reports its real address`, () =>
    withKind(kind, async () => {
      const a: TcpListener = await tcpListen("127.0.0.1", 0, () => {});
      try {
        assert.equal(a.address, "127.0.0.1");
        assert.ok(a.port > 0);
        await assert.rejects(tcpListen("127.0.0.1", a.port, () => {}), /in use|EADDRINUSE/i);
        // The wire's bind names the URL on the same failure.
        await assert.rejects(RepSocket.bind(`tcp://127.0.0.1:${a.port}`), (e: unknown) => {
          assert.ok(e instanceof WireError);
          assert.match(
            e.message,
            new RegExp(`cannot bind tcp://127.0.0.1:${a.port}: .*(in use|EADDRINUSE)`, "i"),
          );
          return true;
        });
      } finally {
        await a.close();
      }
    }));

  test(`tcp ${kind}: REQ/REP over it, 1 MiB requests and replies checked byte for byte`, () =>
    withKind(kind, async () => {
      const rep = await RepSocket.bind("tcp://127.0.0.1:0", { timeoutMs: 5000 });
      rep.serve((frames) => frames.map((f) => f.map((x) => x ^ 0x5a))).catch(() => {});
      const req = ReqSocket.connect(rep.endpoints[0], { timeoutMs: 5000 });
      try {
        for (let i = 0; i < 4; i++) {
          const body = pattern(1 << 20, i);
          const small = pattern(100 + i, 50 + i);
          const [a, b2] = await req.request([body, small]);
          assert.equal(firstDifference(a, body.map((x) => x ^ 0x5a)), -1, `request ${i}`);
          assert.equal(firstDifference(b2, small.map((x) => x ^ 0x5a)), -1, `request ${i}`);
        }
      } finally {
        await req.close();
        await rep.close();
      }
    }));
}

test("tcp: KVPORT_WIRE_TCP names node or deno; anything else is refused by name", async () => {
  await withKind("node", () => Promise.resolve(assert.equal(wireTcpKind(), "node")));
  const before = process.env.KVPORT_WIRE_TCP;
  try {
    process.env.KVPORT_WIRE_TCP = "uv";
    assert.throws(
      () => wireTcpKind(),
      /KVPORT_WIRE_TCP must be "node", "deno" or "bun".*got "uv"/,
    );
    delete process.env.KVPORT_WIRE_TCP;
    assert.equal(wireTcpKind(), own);
    for (const k of ["deno", "bun"] as const) {
      process.env.KVPORT_WIRE_TCP = k;
      if (own === k) assert.equal(wireTcpKind(), k);
      else assert.throws(() => wireTcpKind(), new RegExp(`KVPORT_WIRE_TCP=${k} needs`));
    }
  } finally {
    if (before === undefined) delete process.env.KVPORT_WIRE_TCP;
    else process.env.KVPORT_WIRE_TCP = before;
  }
});

for (const runtime of ["deno", "bun"] as const) {
  test(`tcp: ${runtime}'s own streams are the default under ${runtime}`, {
    skip: onlyUnder(runtime, `${runtime}'s socket API exists only there`),
  }, () => {
    const before = process.env.KVPORT_WIRE_TCP;
    delete process.env.KVPORT_WIRE_TCP;
    try {
      assert.equal(wireTcpKind(), runtime);
    } finally {
      if (before !== undefined) process.env.KVPORT_WIRE_TCP = before;
    }
  });
}
