// CURVE (ZMTP RFC 26): between our own sockets, against libzmq through pyzmq both ways,
// refusal of unknown client keys and of a wrong server key, malformed CURVE commands from
// a raw TCP client (typed error, connection dropped, the server goes on), key files.
import { test } from "./helpers/skip.ts";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { createHash } from "node:crypto";
import * as fs from "node:fs";
import * as net from "node:net";
import * as os from "node:os";
import * as path from "node:path";
import process from "node:process";
import {
  curveKeyPair,
  curvePublicKey,
  encodeCommand,
  encodeGreeting,
  readCurveAllowList,
  readCurveKeyFile,
  RepSocket,
  ReqSocket,
  type WireError,
  WireSecurityError,
  z85Decode,
  z85Encode,
  ZmtpDecoder,
  type ZmtpEvent,
} from "../src/channel/wire/mod.ts";
import { CurveMechanism, resolveCurve } from "../src/channel/wire/curve.ts";
import { PYTHON, pythonSkipReason } from "./helpers/py_peer.ts";

const pySkip = pythonSkipReason();
const FAST = { timeoutMs: 5000, reconnectIntervalMs: 20 };
const enc = new TextEncoder();

function pattern(seed: number, n: number): Uint8Array {
  const b = new Uint8Array(n);
  for (let k = 0; k < n; k++) b[k] = (seed * 31 + k * 7) & 255;
  return b;
}

function sha256(b: Uint8Array): Uint8Array {
  return new Uint8Array(createHash("sha256").update(b).digest());
}

function tmpDir(): string {
  return fs.mkdtempSync(path.join(os.tmpdir(), "kvport-curve-"));
}

function writeKey(dir: string, name: string, key: Uint8Array, mode = 0o600): string {
  const p = path.join(dir, name);
  fs.writeFileSync(p, z85Encode(key) + "\n", { mode });
  fs.chmodSync(p, mode);
  return p;
}

test("z85: the RFC 32 vector, keys round-trip, garbage is named", () => {
  const hello = new Uint8Array([0x86, 0x4f, 0xd2, 0x6f, 0xb5, 0x59, 0xf7, 0x5b]);
  assert.equal(z85Encode(hello), "HelloWorld");
  assert.deepEqual(z85Decode("HelloWorld"), hello);
  const k = curveKeyPair().publicKey;
  assert.deepEqual(z85Decode(z85Encode(k)), k);
  assert.throws(() => z85Decode("Hello Worl"), /character " " at offset 5/);
  assert.throws(() => z85Decode("abcd"), /multiple of 5/);
  assert.throws(() => z85Encode(new Uint8Array(3)), /multiple of 4/);
});

test("curve: our REQ client and REP server, multipart and large frames, bytes checked", async () => {
  const server = curveKeyPair();
  const client = curveKeyPair();
  const errors: WireError[] = [];
  await using rep = await RepSocket.bind("tcp://127.0.0.1:0", {
    ...FAST,
    curve: { server: true, secretKey: server.secretKey, allowedClients: [client.publicKey] },
    onError: (e) => errors.push(e),
  });
  rep.serve((frames) => [enc.encode("echo"), sha256(frames[1]), frames[1].slice().reverse()])
    .catch(() => {});
  await using req = ReqSocket.connect(rep.endpoints[0], {
    ...FAST,
    curve: { secretKey: client.secretKey, serverKey: server.publicKey },
  });
  for (const size of [0, 1, 200, 70_000, 3 << 20]) {
    const body = pattern(size, size);
    const reply = await req.request([enc.encode("ping"), body]);
    assert.equal(reply.length, 3);
    assert.equal(new TextDecoder().decode(reply[0]), "echo");
    assert.deepEqual(reply[1], sha256(body));
    assert.deepEqual(reply[2], body.slice().reverse());
  }
  assert.deepEqual(errors, []);
});

test("curve: the bytes on the wire are not the plaintext", async () => {
  const server = curveKeyPair();
  const client = curveKeyPair();
  const seen: Uint8Array[] = [];
  // A TCP relay in the middle records what travels from the client to the server.
  await using rep = await RepSocket.bind("tcp://127.0.0.1:0", {
    ...FAST,
    curve: { server: true, secretKey: server.secretKey, allowedClients: [client.publicKey] },
  });
  rep.serve((frames) => frames).catch(() => {});
  const relay = net.createServer((inbound) => {
    const out = net.createConnection({ host: "127.0.0.1", port: rep.port });
    inbound.on("data", (d: Uint8Array) => {
      seen.push(new Uint8Array(d));
      out.write(d);
    });
    out.on("data", (d: Uint8Array) => inbound.write(d));
    inbound.on("close", () => out.destroy());
    out.on("close", () => inbound.destroy());
  });
  await new Promise<void>((r) => relay.listen(0, "127.0.0.1", () => r()));
  try {
    const port = (relay.address() as net.AddressInfo).port;
    await using req = ReqSocket.connect(`127.0.0.1:${port}`, {
      ...FAST,
      curve: { secretKey: client.secretKey, serverKey: server.publicKey },
    });
    const secret = enc.encode("data-plane token 0123456789abcdef");
    const reply = await req.request([secret]);
    assert.deepEqual(reply[0], secret);
    const all = Buffer.concat(seen);
    assert.ok(all.length > secret.length);
    assert.equal(all.indexOf(Buffer.from(secret)), -1, "the plaintext crossed the wire");
  } finally {
    await new Promise<void>((r) => relay.close(() => r()));
  }
});

test("curve: a client whose key is not allowed is refused with ERROR, typed on both ends", async () => {
  const server = curveKeyPair();
  const allowed = curveKeyPair();
  const stranger = curveKeyPair();
  const serverErrors: WireError[] = [];
  const clientErrors: WireError[] = [];
  let served = 0;
  await using rep = await RepSocket.bind("tcp://127.0.0.1:0", {
    ...FAST,
    curve: { server: true, secretKey: server.secretKey, allowedClients: [allowed.publicKey] },
    onError: (e) => serverErrors.push(e),
  });
  rep.serve((frames) => {
    served++;
    return frames;
  }).catch(() => {});
  {
    await using req = ReqSocket.connect(rep.endpoints[0], {
      ...FAST,
      timeoutMs: 600,
      curve: { secretKey: stranger.secretKey, serverKey: server.publicKey },
      onError: (e) => clientErrors.push(e),
    });
    await assert.rejects(req.request([enc.encode("let me in")]), /timed out/);
  }
  assert.equal(served, 0);
  assert.ok(serverErrors.length > 0);
  assert.ok(serverErrors.every((e) => e instanceof WireSecurityError), String(serverErrors));
  assert.match(
    serverErrors[0].message,
    new RegExp(
      `refused client ${z85Encode(stranger.publicKey).replace(/[.*+?^${}()|[\]\\]/g, "\\$&")}`,
    ),
  );
  assert.ok(
    clientErrors.some((e) =>
      e instanceof WireSecurityError && /ERROR "client key not allowed"/.test(e.message)
    ),
    String(clientErrors),
  );
  // The allowed client still gets in.
  await using ok = ReqSocket.connect(rep.endpoints[0], {
    ...FAST,
    curve: { secretKey: allowed.secretKey, serverKey: server.publicKey },
  });
  assert.deepEqual((await ok.request([enc.encode("hi")]))[0], enc.encode("hi"));
  assert.equal(served, 1);
});

test("curve: a client with the wrong server key, and a NULL client, are refused", async () => {
  const server = curveKeyPair();
  const client = curveKeyPair();
  const serverErrors: WireError[] = [];
  await using rep = await RepSocket.bind("tcp://127.0.0.1:0", {
    ...FAST,
    curve: { server: true, secretKey: server.secretKey, allowedClients: [client.publicKey] },
    onError: (e) => serverErrors.push(e),
  });
  rep.serve((frames) => frames).catch(() => {});
  {
    await using req = ReqSocket.connect(rep.endpoints[0], {
      ...FAST,
      timeoutMs: 400,
      curve: { secretKey: client.secretKey, serverKey: curveKeyPair().publicKey },
    });
    await assert.rejects(req.request([enc.encode("x")]), /timed out/);
  }
  assert.ok(
    serverErrors.some((e) =>
      e instanceof WireSecurityError && /HELLO box does not open/.test(e.message)
    ),
  );
  serverErrors.length = 0;
  {
    await using req = ReqSocket.connect(rep.endpoints[0], { ...FAST, timeoutMs: 400 });
    await assert.rejects(req.request([enc.encode("x")]), /timed out/);
  }
  assert.ok(
    serverErrors.some((e) =>
      e instanceof WireSecurityError &&
      /peer speaks the NULL security mechanism, this socket CURVE/.test(e.message)
    ),
    String(serverErrors),
  );
});

/** A raw TCP client that greets as a CURVE client, then runs `script` on the stream. */
async function rawCurveClient(
  port: number,
  script: (
    write: (b: Uint8Array) => void,
    events: AsyncIterator<ZmtpEvent>,
  ) => void | Promise<void>,
): Promise<{ closed: boolean }> {
  const tcp = net.createConnection({ host: "127.0.0.1", port });
  await new Promise<void>((r, j) => tcp.once("connect", () => r()).once("error", j));
  const queue: ZmtpEvent[] = [];
  let wake: (() => void) | undefined;
  let closed = false;
  const decoder = new ZmtpDecoder();
  tcp.on("data", (d: Uint8Array) => {
    decoder.push(new Uint8Array(d), (e) => queue.push(e));
    wake?.();
  });
  const closedP = new Promise<void>((r) =>
    tcp.once("close", () => {
      closed = true;
      wake?.();
      r();
    })
  );
  tcp.on("error", () => {});
  const events: AsyncIterator<ZmtpEvent> = {
    next: async () => {
      while (queue.length === 0 && !closed) await new Promise<void>((r) => (wake = r));
      const e = queue.shift();
      return e ? { value: e, done: false } : { value: undefined, done: true };
    },
  };
  tcp.write(encodeGreeting({ mechanism: "CURVE", asServer: false }));
  try {
    await script((b) => tcp.write(b), events);
    await Promise.race([closedP, new Promise((r) => setTimeout(r, 3000))]);
    return { closed };
  } finally {
    tcp.destroy();
  }
}

test("curve: malformed CURVE commands are refused with a typed error and the connection dropped", async () => {
  const server = curveKeyPair();
  const client = curveKeyPair();
  const errors: WireError[] = [];
  await using rep = await RepSocket.bind("tcp://127.0.0.1:0", {
    ...FAST,
    curve: { server: true, secretKey: server.secretKey, allowedClients: [client.publicKey] },
    onError: (e) => errors.push(e),
  });
  rep.serve((frames) => frames).catch(() => {});
  const settings = resolveCurve({ secretKey: client.secretKey, serverKey: server.publicKey });
  const helloOf = () => {
    const m = new CurveMechanism(settings, "test");
    m.setMetadata(
      new Uint8Array([11, ...enc.encode("Socket-Type"), 0, 0, 0, 3, ...enc.encode("REQ")]),
    );
    return { m, hello: m.start()[0] };
  };
  /** Runs to the server's WELCOME; returns the INITIATE our mechanism would send. */
  const toInitiate = async (
    m: CurveMechanism,
    write: (b: Uint8Array) => void,
    events: AsyncIterator<ZmtpEvent>,
    hello: Uint8Array,
  ) => {
    const g = await events.next();
    assert.equal(g.value?.kind, "greeting");
    write(hello);
    const w = await events.next();
    assert.ok(w.value?.kind === "command" && w.value.name === "WELCOME", JSON.stringify(w.value));
    return m.handshake("WELCOME", w.value.data).write[0];
  };
  const cases: Array<
    [
      string,
      RegExp,
      (write: (b: Uint8Array) => void, ev: AsyncIterator<ZmtpEvent>) => void | Promise<void>,
    ]
  > = [
    [
      "short HELLO",
      /HELLO must carry 194 bytes, got 10/,
      (w) => w(encodeCommand("HELLO", new Uint8Array(10))),
    ],
    ["HELLO of version 2", /version 2\.0/, (w) => {
      const h = helloOf().hello.slice();
      h[2 + 6] = 2;
      w(h);
    }],
    ["HELLO with a forged box", /HELLO box does not open/, (w) => {
      const h = helloOf().hello.slice();
      h[h.length - 1] ^= 1;
      w(h);
    }],
    [
      "INITIATE before HELLO",
      /expected the HELLO command, got "INITIATE"/,
      (w) => w(encodeCommand("INITIATE", new Uint8Array(300))),
    ],
    [
      "a message before the handshake",
      /message frame received before/,
      (w) => w(new Uint8Array([0, 3, 1, 2, 3])),
    ],
    ["INITIATE with a forged box", /INITIATE box does not open/, async (w, ev) => {
      const { m, hello } = helloOf();
      const init = (await toInitiate(m, w, ev, hello)).slice();
      init[init.length - 1] ^= 0x80;
      w(init);
    }],
    ["INITIATE with another cookie", /cookie does not open/, async (w, ev) => {
      const { m, hello } = helloOf();
      const init = (await toInitiate(m, w, ev, hello)).slice();
      init[9 + 20] ^= 1; // inside the cookie (after the 9-byte long header and name)
      w(init);
    }],
    ["truncated INITIATE", /INITIATE must carry at least/, async (w, ev) => {
      const { m, hello } = helloOf();
      const init = await toInitiate(m, w, ev, hello);
      w(encodeCommand("INITIATE", init.subarray(12, 100)));
    }],
    ["a replayed and a forged MESSAGE", /MESSAGE (box does not open|nonce)/, async (w, ev) => {
      const { m, hello } = helloOf();
      w(await toInitiate(m, w, ev, hello));
      const r = await ev.next();
      assert.ok(r.value?.kind === "command" && r.value.name === "READY");
      m.handshake("READY", r.value.data);
      const sealed = m.seal(enc.encode("x"), false);
      const forged = sealed.slice();
      forged[forged.length - 1] ^= 1;
      w(forged);
    }],
    [
      "a plaintext command after the handshake",
      /plaintext command "PING" after the CURVE handshake/,
      async (w, ev) => {
        const { m, hello } = helloOf();
        w(await toInitiate(m, w, ev, hello));
        const r = await ev.next();
        assert.ok(r.value?.kind === "command" && r.value.name === "READY");
        w(encodeCommand("PING", new Uint8Array(2)));
      },
    ],
  ];
  for (const [name, re, script] of cases) {
    errors.length = 0;
    const r = await rawCurveClient(rep.port, script);
    assert.ok(r.closed, `${name}: the connection was not dropped`);
    assert.ok(
      errors.length === 1 && errors[0] instanceof WireSecurityError ||
        errors[0]?.name === "WireProtocolError",
      `${name}: ${String(errors)}`,
    );
    assert.match(errors[0].message, re, name);
  }
  // The server is still serving.
  await using req = ReqSocket.connect(rep.endpoints[0], {
    ...FAST,
    curve: { secretKey: client.secretKey, serverKey: server.publicKey },
  });
  assert.deepEqual((await req.request([enc.encode("still here")]))[0], enc.encode("still here"));
});

test("curve: a PING between the frames of a message is answered; the message arrives whole", async () => {
  const server = curveKeyPair();
  const client = curveKeyPair();
  const errors: WireError[] = [];
  await using rep = await RepSocket.bind("tcp://127.0.0.1:0", {
    ...FAST,
    curve: { server: true, secretKey: server.secretKey, allowedClients: [client.publicKey] },
    onError: (e) => errors.push(e),
  });
  rep.serve((frames) => [enc.encode(`got ${frames.length}`), ...frames]).catch(() => {});
  const m = new CurveMechanism(
    resolveCurve({ secretKey: client.secretKey, serverKey: server.publicKey }),
    "test",
  );
  m.setMetadata(
    new Uint8Array([11, ...enc.encode("Socket-Type"), 0, 0, 0, 3, ...enc.encode("REQ")]),
  );
  const opened: Array<{ data: string; command: boolean; more: boolean }> = [];
  await rawCurveClient(rep.port, async (w, ev) => {
    assert.equal((await ev.next()).value?.kind, "greeting");
    w(m.start()[0]);
    const welcome = (await ev.next()).value!;
    assert.ok(welcome.kind === "command");
    w(m.handshake(welcome.name, welcome.data).write[0]);
    const ready = (await ev.next()).value!;
    assert.ok(ready.kind === "command");
    m.handshake(ready.name, ready.data);
    // REQ's envelope (an empty delimiter), a PING in the middle, then the body.
    w(m.seal(new Uint8Array(0), true));
    w(m.seal(new Uint8Array([4, ...enc.encode("PING"), 0, 10, ...enc.encode("ctx")]), false, true));
    w(m.seal(enc.encode("body"), false));
    while (opened.filter((f) => !f.command && !f.more).length === 0) {
      const e = (await ev.next()).value;
      assert.ok(e && e.kind === "message", JSON.stringify(e));
      for (const f of e.frames) {
        const o = m.open(f);
        opened.push({ data: new TextDecoder().decode(o.data), command: o.command, more: o.more });
      }
    }
  });
  assert.deepEqual(errors, []);
  assert.deepEqual(opened, [
    { data: "\x04PONGctx", command: true, more: false },
    { data: "", command: false, more: true },
    { data: "got 1", command: false, more: true },
    { data: "body", command: false, more: false },
  ]);
});

test("curve: key files (Z85, raw, certificate), secret key permissions, allow-lists", () => {
  const dir = tmpDir();
  try {
    const kp = curveKeyPair();
    const z = writeKey(dir, "a.key_secret", kp.secretKey);
    assert.deepEqual(readCurveKeyFile(z, "secret"), kp.secretKey);
    const raw = path.join(dir, "raw");
    fs.writeFileSync(raw, kp.secretKey, { mode: 0o600 });
    assert.deepEqual(readCurveKeyFile(raw, "secret"), kp.secretKey);
    const cert = path.join(dir, "peer.key_secret");
    fs.writeFileSync(
      cert,
      `#   ****  Generated by pyzmq  ****\nmetadata\ncurve\n    public-key = "${
        z85Encode(kp.publicKey)
      }"\n    secret-key = "${z85Encode(kp.secretKey)}"\n`,
      { mode: 0o600 },
    );
    assert.deepEqual(readCurveKeyFile(cert, "secret"), kp.secretKey);
    assert.deepEqual(readCurveKeyFile(cert, "public"), kp.publicKey);
    assert.deepEqual(curvePublicKey(kp.secretKey), kp.publicKey);
    const open = writeKey(dir, "open.key_secret", kp.secretKey, 0o644);
    assert.throws(
      () => readCurveKeyFile(open, "secret"),
      /readable by others \(mode 644\): chmod 600/,
    );
    const bad = path.join(dir, "bad");
    fs.writeFileSync(bad, "not a key\n");
    assert.throws(() => readCurveKeyFile(bad, "public"), /expected a 40-character Z85 key, got 9/);
    assert.throws(
      () => readCurveKeyFile(path.join(dir, "none"), "public"),
      /cannot read the CURVE public key file/,
    );
    // Allow-lists: a file of keys (comments, blank lines), a directory of certificates.
    const a = curveKeyPair().publicKey;
    const b = curveKeyPair().publicKey;
    const list = path.join(dir, "allowed");
    fs.writeFileSync(list, `# clients\n${z85Encode(a)}\n\n${z85Encode(b)}  # decode-1\n`);
    assert.deepEqual(readCurveAllowList(list), [a, b]);
    const certs = path.join(dir, "certs");
    fs.mkdirSync(certs);
    fs.writeFileSync(path.join(certs, "x.key"), `curve\n    public-key = "${z85Encode(a)}"\n`);
    fs.writeFileSync(path.join(certs, "ignored.txt"), "nothing");
    assert.deepEqual(readCurveAllowList(certs), [a]);
    fs.writeFileSync(list, "# nobody\n");
    assert.throws(() => readCurveAllowList(list), /holds no key/);
    fs.writeFileSync(list, `${z85Encode(a)}\nshort\n`);
    assert.throws(() => readCurveAllowList(list), /line 2: expected a 40-character/);
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

test("curve: bad options are refused by name", async () => {
  await assert.rejects(
    () =>
      RepSocket.bind("tcp://127.0.0.1:0", {
        curve: { server: true, secretKey: new Uint8Array(5), allowedClients: [] },
      }),
    /CURVE secretKey must be 32 bytes, got 5 bytes/,
  );
  assert.throws(
    () =>
      ReqSocket.connect("tcp://127.0.0.1:1", {
        curve: { server: true, secretKey: curveKeyPair().secretKey, allowedClients: [] },
      }),
    /at least one key in allowedClients/,
  );
  assert.throws(
    () =>
      ReqSocket.connect("tcp://127.0.0.1:1", {
        curve: { secretKey: curveKeyPair().secretKey } as never,
      }),
    /CURVE serverKey must be 32 bytes, got undefined/,
  );
});

/** Runs tests/helpers/py_curve_peer.py; resolves its port (server mode) and exit. */
function startPyCurve(args: string[], env: Record<string, string> = {}): {
  port: Promise<number>;
  done: Promise<{ code: number | null; out: string }>;
  kill: () => void;
} {
  const script = new URL("./helpers/py_curve_peer.py", import.meta.url).pathname;
  const child = spawn(PYTHON, [script, ...args], {
    stdio: ["ignore", "pipe", "pipe"],
    env: { ...process.env, ...env },
  });
  let out = "";
  let gotPort: (p: number) => void = () => {};
  const port = new Promise<number>((r) => (gotPort = r));
  child.stdout!.setEncoding("utf8");
  child.stderr!.setEncoding("utf8");
  child.stdout!.on("data", (d: string) => {
    out += d;
    const m = /^PORT (\d+)\r?\n/m.exec(out);
    if (m) gotPort(Number(m[1]));
  });
  child.stderr!.on("data", (d: string) => (out += d));
  const done = new Promise<{ code: number | null; out: string }>((r) =>
    child.on("close", (code) => {
      gotPort(0);
      r({ code, out });
    })
  );
  const kill = () => {
    if (child.exitCode === null && child.signalCode === null) child.kill("SIGKILL");
  };
  return { port, done, kill };
}

test(
  "curve interop: our REQ client -> pyzmq CURVE REP server, with heartbeats",
  { skip: pySkip ?? false },
  async () => {
    const dir = tmpDir();
    const server = curveKeyPair();
    const client = curveKeyPair();
    // libzmq sends heartbeats (PING in MESSAGE boxes) every 50 ms and drops a peer that does
    // not answer within 1 s: the pauses between requests below (1.5 s) outlast that.
    const py = startPyCurve(
      ["rep-server", writeKey(dir, "server.key_secret", server.secretKey)],
      { HEARTBEAT_MS: "50" },
    );
    try {
      const port = await py.port;
      if (port === 0) assert.fail(`python peer did not start: ${(await py.done).out}`);
      await using req = ReqSocket.connect(`127.0.0.1:${port}`, {
        ...FAST,
        curve: { secretKey: client.secretKey, serverKey: server.publicKey },
      });
      for (let i = 0; i < 3; i++) {
        const body = pattern(i, 100_000);
        if (i > 0) await new Promise((r) => setTimeout(r, 1500));
        const reply = await req.request([enc.encode(`req-${i}`), body]);
        assert.equal(reply.length, 3);
        assert.equal(new TextDecoder().decode(reply[0]), `rep-${i}`);
        assert.deepEqual(reply[1], sha256(body));
        assert.deepEqual(reply[2], pattern(i + 100, 300_000));
      }
      const r = await py.done;
      assert.equal(r.code, 0, r.out);
      assert.match(r.out, /OK 3/);
      // One connection throughout: every PING was answered (libzmq drops a silent peer).
      assert.match(r.out, /HANDSHAKES 1\n/);
    } finally {
      py.kill();
      await py.done;
      fs.rmSync(dir, { recursive: true, force: true });
    }
  },
);

test("curve interop: pyzmq CURVE REQ client -> our REP server (allow-listed)", {
  skip: pySkip ?? false,
}, async () => {
  const dir = tmpDir();
  const server = curveKeyPair();
  const client = curveKeyPair();
  const errors: WireError[] = [];
  await using rep = await RepSocket.bind("tcp://127.0.0.1:0", {
    ...FAST,
    curve: { server: true, secretKey: server.secretKey, allowedClients: [client.publicKey] },
    onError: (e) => errors.push(e),
  });
  const py = startPyCurve([
    "req-client",
    writeKey(dir, "client.key_secret", client.secretKey),
    writeKey(dir, "server.key", server.publicKey),
    `tcp://127.0.0.1:${rep.port}`,
  ]);
  try {
    for (let i = 0; i < 3; i++) {
      const r = await rep.receive();
      assert.equal(r.frames.length, 2);
      assert.equal(new TextDecoder().decode(r.frames[0]), `req-${i}`);
      assert.deepEqual(r.frames[1], pattern(i, 100_000));
      await r.reply([enc.encode(`rep-${i}`), sha256(r.frames[1]), pattern(i + 100, 300_000)]);
    }
    const done = await py.done;
    assert.equal(done.code, 0, done.out);
    assert.match(done.out, /OK 3/);
    assert.deepEqual(errors, []);
  } finally {
    py.kill();
    await py.done;
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

test("curve interop: a pyzmq client whose key is not allowed gets nothing through", {
  skip: pySkip ?? false,
}, async () => {
  const dir = tmpDir();
  const server = curveKeyPair();
  const stranger = curveKeyPair();
  const errors: WireError[] = [];
  let served = 0;
  await using rep = await RepSocket.bind("tcp://127.0.0.1:0", {
    ...FAST,
    curve: {
      server: true,
      secretKey: server.secretKey,
      allowedClients: [curveKeyPair().publicKey],
    },
    onError: (e) => errors.push(e),
  });
  rep.serve((f) => {
    served++;
    return f;
  }).catch(() => {});
  const py = startPyCurve([
    "req-client",
    writeKey(dir, "client.key_secret", stranger.secretKey),
    writeKey(dir, "server.key", server.publicKey),
    `tcp://127.0.0.1:${rep.port}`,
  ]);
  try {
    const done = await py.done;
    assert.notEqual(done.code, 0);
    assert.match(done.out, /FAIL (reply 0 not received|request 0 not sent)/);
    assert.equal(served, 0);
    assert.ok(
      errors.some((e) => e instanceof WireSecurityError && /not in the allow-list/.test(e.message)),
    );
  } finally {
    py.kill();
    await py.done;
    fs.rmSync(dir, { recursive: true, force: true });
  }
});
