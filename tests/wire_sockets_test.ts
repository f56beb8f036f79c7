// TypeScript <-> TypeScript tests of every socket pair over real TCP on 127.0.0.1.
import { test } from "node:test";
import assert from "node:assert/strict";
import {
  DealerSocket,
  parseEndpoint,
  PullSocket,
  PushSocket,
  RepSocket,
  ReqSocket,
  RouterSocket,
  WireClosedError,
  WireError,
  WireProtocolError,
  WireTimeoutError,
} from "../src/channel/wire/mod.ts";
import { b, frames, handshake, rawConnect, s, sleep, until } from "./wire/util.ts";

const FAST = { timeoutMs: 2000, reconnectIntervalMs: 20 };
const E = new Uint8Array(0);

test("REQ/REP: multipart request and reply, several requests, port 0", async () => {
  const rep = await RepSocket.bind("tcp://127.0.0.1:0", FAST);
  assert.ok(rep.port > 0);
  assert.equal(rep.endpoints[0], `tcp://127.0.0.1:${rep.port}`);
  const serving = rep.serve((frames, peer) => {
    assert.equal(peer.socketType, "REQ");
    return [b("re:"), ...frames];
  });
  const req = ReqSocket.connect(`tcp://127.0.0.1:${rep.port}`, FAST);
  try {
    for (let i = 0; i < 5; i++) {
      const reply = await req.request([b(`a${i}`), E, b("c")]);
      assert.deepEqual(reply.map(s), ["re:", `a${i}`, "", "c"]);
    }
    assert.equal((await req.waitForPeer()).socketType, "REP");
  } finally {
    await req.close();
    await rep.close();
  }
  await serving;
});

test("REQ/REP: receive()/reply() API, concurrent clients, queued requests", async () => {
  await using rep = await RepSocket.bind("127.0.0.1:0", FAST);
  const loop = (async () => {
    for await (const r of rep) {
      await sleep(5);
      await r.reply(b(s(r.frames[0]).toUpperCase()));
      await assert.rejects(r.reply(b("twice")), WireError);
    }
  })();
  await using a = ReqSocket.connect(`127.0.0.1:${rep.port}`, FAST);
  await using c = ReqSocket.connect(`127.0.0.1:${rep.port}`, FAST);
  // Requests on one REQ socket are queued; two sockets run concurrently.
  const results = await Promise.all([
    a.request(b("x1")),
    a.request(b("x2")),
    c.request(b("y1")),
    a.request(b("x3")),
  ]);
  assert.deepEqual(results.map((r) => s(r[0])), ["X1", "X2", "Y1", "X3"]);
  await rep.close();
  await loop;
});

test("PUSH/PULL: fair queueing from two pushers, multipart, a 5 MiB message", async () => {
  await using pull = await PullSocket.bind("tcp://127.0.0.1:0", FAST);
  await using p1 = PushSocket.connect(`tcp://127.0.0.1:${pull.port}`, FAST);
  await using p2 = PushSocket.connect(`tcp://127.0.0.1:${pull.port}`, FAST);
  const big = new Uint8Array(5 * 1024 * 1024).map((_, i) => i & 0xff);
  await p1.send([b("one"), E, b("two")]);
  await p2.send(b("from-2"));
  await p1.send(big);
  const got: Uint8Array[][] = [];
  for (let i = 0; i < 3; i++) got.push(await pull.receive());
  const texts = got.filter((m) => m[0].length < 100).map((m) => m.map(s).join("|"));
  assert.deepEqual(texts.sort(), ["from-2", "one||two"]);
  const large = got.find((m) => m[0].length > 100);
  assert.deepEqual(large?.[0], big);
  assert.equal(pull.peers.length, 2);
});

test("PUSH/PULL: round-robin over two pullers", async () => {
  await using a = await PullSocket.bind("tcp://127.0.0.1:0", FAST);
  await using c = await PullSocket.bind("tcp://127.0.0.1:0", FAST);
  await using push = new PushSocket(FAST).connect(`127.0.0.1:${a.port}`).connect(
    `127.0.0.1:${c.port}`,
  );
  await until(() => push.peers.length === 2, 2000, "two peers");
  for (let i = 0; i < 4; i++) await push.send(b(String(i)));
  const fromA = [s((await a.receive())[0]), s((await a.receive())[0])];
  const fromC = [s((await c.receive())[0]), s((await c.receive())[0])];
  assert.deepEqual([...fromA, ...fromC].sort(), ["0", "1", "2", "3"]);
});

test("PULL: the high-water mark pauses reading and loses nothing", async () => {
  await using pull = await PullSocket.bind("tcp://127.0.0.1:0", { ...FAST, highWaterMark: 4 });
  await using push = PushSocket.connect(`tcp://127.0.0.1:${pull.port}`, FAST);
  // 100 x 64 KiB is more than the kernel buffers hold: the sender must wait for the
  // receiver to resume reading.
  const sending = (async () => {
    for (let i = 0; i < 100; i++) await push.send(new Uint8Array(65536).fill(i & 0xff));
  })();
  await sleep(30);
  for (let i = 0; i < 100; i++) {
    const [m] = await pull.receive();
    assert.equal(m[0], i & 0xff, `message ${i} in order`);
    assert.equal(m.length, 65536);
  }
  await sending;
});

test("DEALER/ROUTER: identities, routing of replies, generated ids", async () => {
  await using router = await RouterSocket.bind("tcp://127.0.0.1:0", FAST);
  const url = `tcp://127.0.0.1:${router.port}`;
  await using named = DealerSocket.connect(url, { ...FAST, identity: "sender-1" });
  await using anon = DealerSocket.connect(url, FAST);
  await named.send([E, b("from named")]);
  await anon.send([E, b("from anon")]);
  const m1 = await router.receive();
  const m2 = await router.receive();
  const byBody = new Map([m1, m2].map((m) => [s(m[2]), m]));
  const nm = byBody.get("from named")!;
  const am = byBody.get("from anon")!;
  assert.equal(s(nm[0]), "sender-1");
  assert.equal(nm[1].length, 0);
  assert.equal(am[0].length, 5, "libzmq-style generated identity");
  assert.equal(am[0][0], 0, "generated identities start with a zero byte");
  assert.equal(router.peer(nm[0])?.socketType, "DEALER");
  await router.send([am[0], E, b("to anon")]);
  await router.send([nm[0], E, b("to named")]);
  assert.deepEqual((await named.receive()).map(s), ["", "to named"]);
  assert.deepEqual((await anon.receive()).map(s), ["", "to anon"]);
  await assert.rejects(router.send([b("nobody"), E, b("x")]), WireClosedError);
  await assert.rejects(router.send([b("only-id")]), WireError);
});

test("REQ -> ROUTER and DEALER -> REP envelopes", async () => {
  await using router = await RouterSocket.bind("tcp://127.0.0.1:0", FAST);
  await using req = ReqSocket.connect(`tcp://127.0.0.1:${router.port}`, {
    ...FAST,
    identity: "req-7",
  });
  const replyP = req.request(b("hello"));
  const [id, delim, body] = await router.receive();
  assert.deepEqual([s(id), delim.length, s(body)], ["req-7", 0, "hello"]);
  await router.send([id, E, b("world")]);
  assert.deepEqual((await replyP).map(s), ["world"]);

  await using rep = await RepSocket.bind("tcp://127.0.0.1:0", FAST);
  const serving = rep.serve((f) => [b("ok"), ...f]);
  await using dealer = DealerSocket.connect(`tcp://127.0.0.1:${rep.port}`, FAST);
  // A DEALER may pipeline several requests to a REP; replies come back in order.
  await dealer.send([E, b("q1")]);
  await dealer.send([b("hop"), E, b("q2")]);
  assert.deepEqual((await dealer.receive()).map(s), ["", "ok", "q1"]);
  assert.deepEqual((await dealer.receive()).map(s), ["hop", "", "ok", "q2"]);
  await rep.close();
  await serving;
});

test("REQ: a reply without the empty delimiter is refused and the socket recreated", async () => {
  await using router = await RouterSocket.bind("tcp://127.0.0.1:0", FAST);
  await using req = ReqSocket.connect(`tcp://127.0.0.1:${router.port}`, FAST);
  const p = req.request(b("q"));
  const [id] = await router.receive();
  await router.send([id, b("no delimiter")]);
  await assert.rejects(
    p,
    (e) => e instanceof WireProtocolError && /empty delimiter/.test(e.message),
  );
  const next = req.request(b("again"));
  const [id2, , body] = await router.receive();
  assert.notDeepEqual(id2, id, "a new connection");
  assert.equal(s(body), "again");
  await router.send([id2, E, b("fine")]);
  assert.deepEqual((await next).map(s), ["fine"]);
});

test("ROUTER: a second peer claiming a connected identity is refused (libzmq's default)", async () => {
  const errors: WireError[] = [];
  await using router = await RouterSocket.bind("tcp://127.0.0.1:0", {
    ...FAST,
    onError: (e) => errors.push(e),
  });
  const url = `tcp://127.0.0.1:${router.port}`;
  await using first = DealerSocket.connect(url, { ...FAST, identity: "worker" });
  await first.send(b("1"));
  const [id1, body1] = await router.receive();
  assert.deepEqual([s(id1), s(body1)], ["worker", "1"]);
  // A crafted peer: a raw ZMTP DEALER handshake claiming the same identity, then a
  // message. The router closes it without reading the message.
  const thief = await rawConnect(router.port);
  thief.write(handshake("DEALER", new TextEncoder().encode("worker")));
  thief.write(frames(b("stolen")));
  await Promise.race([
    thief.closed,
    sleep(2000).then(() => assert.fail("the router kept the connection of the second peer")),
  ]);
  await until(() => errors.length > 0, 2000, "the refusal to be reported");
  assert.ok(errors[0] instanceof WireProtocolError);
  assert.match(errors[0].message, /identity 0x776f726b6572 is held by a connected peer/);
  assert.equal(router.peers.length, 1, "only the first peer is attached");
  // The first peer keeps its route: replies go to it, its messages arrive, and the
  // crafted peer's message never did.
  await router.send([b("worker"), b("still yours")]);
  assert.deepEqual((await first.receive()).map(s), ["still yours"]);
  await first.send(b("2"));
  const [id2, body2] = await router.receive();
  assert.deepEqual([s(id2), s(body2)], ["worker", "2"]);
  // A real DEALER claiming it is refused too (it keeps retrying, never attached).
  await using second = DealerSocket.connect(url, { ...FAST, identity: "worker" });
  await until(() => errors.length >= 2, 2000, "the second refusal");
  await router.send([b("worker"), b("3")]);
  assert.deepEqual((await first.receive()).map(s), ["3"]);
  await assert.rejects(second.receive({ timeoutMs: 100 }), WireTimeoutError);
});

test("ROUTER: with routerHandover a peer reconnecting with its identity takes it over", async () => {
  await using router = await RouterSocket.bind("tcp://127.0.0.1:0", {
    ...FAST,
    routerHandover: true,
  });
  const url = `tcp://127.0.0.1:${router.port}`;
  const first = DealerSocket.connect(url, { ...FAST, identity: "worker" });
  await first.send(b("1"));
  await router.receive();
  await using second = DealerSocket.connect(url, { ...FAST, identity: "worker" });
  await second.send(b("2"));
  const [id, body] = await router.receive();
  assert.equal(s(body), "2");
  await router.send([id, b("to the new one")]);
  assert.deepEqual((await second.receive()).map(s), ["to the new one"]);
  await first.close();
});

test("maxMessageBytes: an oversize message drops that connection only", async () => {
  const errors: WireError[] = [];
  await using pull = await PullSocket.bind("tcp://127.0.0.1:0", {
    ...FAST,
    maxMessageBytes: 1024,
    onError: (e) => errors.push(e),
  });
  await using push = PushSocket.connect(`tcp://127.0.0.1:${pull.port}`, FAST);
  await using good = PushSocket.connect(`tcp://127.0.0.1:${pull.port}`, FAST);
  await until(() => pull.peers.length === 2, 2000, "two pushers");
  await push.send(new Uint8Array(2048));
  await until(() => errors.length > 0, 2000, "the protocol error");
  assert.ok(errors[0] instanceof WireProtocolError);
  assert.match(errors[0].message, /exceeds the limit of 1024 bytes/);
  await good.send(b("still served"));
  assert.equal(s((await pull.receive())[0]), "still served");
  // The offender reconnects and may send messages within the limit.
  await push.send(new Uint8Array(1024).fill(7));
  assert.equal((await pull.receive())[0].length, 1024);
});

test("incompatible socket types are refused at the handshake", async () => {
  const errors: WireError[] = [];
  await using rep = await RepSocket.bind("tcp://127.0.0.1:0", {
    ...FAST,
    onError: (e) => errors.push(e),
  });
  await using push = PushSocket.connect(`tcp://127.0.0.1:${rep.port}`, FAST);
  await until(() => errors.length > 0, 2000, "the refusal");
  assert.match(errors[0].message, /peer socket type "PUSH" cannot talk to our REP socket/);
  await assert.rejects(push.send(b("x"), { timeoutMs: 100 }), WireTimeoutError);
});

test("close: idempotent, fails pending operations, ends iterators, await using", async () => {
  const pull = await PullSocket.bind("tcp://127.0.0.1:0", FAST);
  const pending = assert.rejects(pull.receive({ timeoutMs: 10_000 }), WireClosedError);
  const iterated = (async () => {
    let n = 0;
    for await (const _ of pull) n++;
    return n;
  })();
  const c1 = pull.close();
  const c2 = pull.close();
  assert.equal(c1, c2);
  await c1;
  await pending;
  assert.equal(await iterated, 0);
  assert.ok(pull.isClosed);
  await assert.rejects(pull.receive(), WireClosedError);
  assert.throws(() => pull.connect("tcp://127.0.0.1:1"), WireClosedError);
  await assert.rejects(pull.bind("tcp://127.0.0.1:0"), WireClosedError);

  let port = 0;
  {
    await using rep = await RepSocket.bind("tcp://127.0.0.1:0", FAST);
    port = rep.port;
  }
  // The port is free again once disposed.
  await using again = await RepSocket.bind(`tcp://127.0.0.1:${port}`, FAST);
  assert.equal(again.port, port);

  const req = ReqSocket.connect(`tcp://127.0.0.1:${port}`, FAST);
  const inFlight = assert.rejects(
    req.request(b("never answered"), { timeoutMs: 5000 }),
    WireClosedError,
  );
  await until(() => req.peers.length === 1, 2000, "connection");
  await req.close();
  await inFlight;
  await assert.rejects(req.request(b("after close")), WireClosedError);
});

test("endpoints: parsing, bind errors", async () => {
  assert.deepEqual(parseEndpoint("tcp://*:0", "bind"), { host: "0.0.0.0", port: 0 });
  assert.deepEqual(parseEndpoint("[::1]:7300", "connect"), { host: "::1", port: 7300 });
  assert.throws(() => parseEndpoint("ipc:///tmp/x", "connect"), /unsupported transport "ipc"/);
  assert.throws(() => parseEndpoint("localhost", "connect"), /expected an endpoint/);
  assert.throws(() => parseEndpoint("*:7300", "connect"), /a concrete host/);
  assert.throws(() => parseEndpoint("h:0", "connect"), /port 0/);
  assert.throws(() => parseEndpoint("h:70000", "bind"), /out of range/);
  await using taken = await PullSocket.bind("tcp://127.0.0.1:0", FAST);
  await assert.rejects(PullSocket.bind(`tcp://127.0.0.1:${taken.port}`, FAST), /cannot bind/);
  assert.throws(() => new DealerSocket({ identity: new Uint8Array([0, 1]) }), /zero byte/);
  assert.throws(() => new DealerSocket({ timeoutMs: -1 }), /timeoutMs/);
  assert.throws(() => new PushSocket().port, /not bound/);
});
