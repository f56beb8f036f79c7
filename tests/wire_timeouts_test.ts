// Deadlines everywhere, the recreated REQ socket (LMCache #2088/#1929/#2110), reconnects.
import { test } from "node:test";
import assert from "node:assert/strict";
import {
  PullSocket,
  PushSocket,
  RepSocket,
  ReqSocket,
  RouterSocket,
  toHex,
  WireClosedError,
  type WireError,
  WireTimeoutError,
} from "../src/channel/wire/mod.ts";
import { b, rawConnect, s, sleep, until } from "./wire/util.ts";

const FAST = { timeoutMs: 2000, reconnectIntervalMs: 20 };
const E = new Uint8Array(0);

test("REQ: a timed-out request fails typed, and the socket is recreated, not wedged", async () => {
  await using router = await RouterSocket.bind("tcp://127.0.0.1:0", FAST);
  await using req = ReqSocket.connect(`tcp://127.0.0.1:${router.port}`, FAST);
  const t0 = performance.now();
  const first = req.request(b("first"), { timeoutMs: 150 });
  const [oldId, , body] = await router.receive();
  assert.equal(s(body), "first");
  const err = await first.then(() => undefined, (e) => e);
  const elapsed = performance.now() - t0;
  assert.ok(err instanceof WireTimeoutError, `got ${err}`);
  assert.equal(err.expected, "reply to request");
  assert.equal(err.timeoutMs, 150);
  assert.equal(err.peer, `tcp://127.0.0.1:${router.port}`);
  assert.match(err.message, /re-established/);
  assert.ok(elapsed >= 140 && elapsed < 1000, `timed out after ${elapsed} ms`);

  // The old connection is gone: a late reply cannot reach the new request.
  await until(() => router.peer(oldId) === undefined, 2000, "old connection closed");
  await assert.rejects(router.send([oldId, E, b("late")]), WireClosedError);

  // The next request runs on a fresh connection and gets its own reply.
  const second = req.request(b("second"));
  const [newId, , body2] = await router.receive();
  assert.notEqual(toHex(newId), toHex(oldId));
  assert.equal(s(body2), "second");
  await router.send([newId, E, b("answer to second")]);
  assert.deepEqual((await second).map(s), ["answer to second"]);
});

test("REQ: after a slow REP reply times out, the next request gets the right answer", async () => {
  const errors: WireError[] = [];
  let calls = 0;
  await using rep = await RepSocket.bind("tcp://127.0.0.1:0", {
    ...FAST,
    onError: (e) => errors.push(e),
  });
  const serving = rep.serve(async ([frame]) => {
    if (calls++ === 0) await sleep(300);
    return b(`reply to ${s(frame)}`);
  });
  await using req = ReqSocket.connect(`tcp://127.0.0.1:${rep.port}`, FAST);
  await assert.rejects(req.request(b("slow"), { timeoutMs: 100 }), WireTimeoutError);
  assert.deepEqual((await req.request(b("next"))).map(s), ["reply to next"]);
  assert.deepEqual((await req.request(b("third"))).map(s), ["reply to third"]);
  // The REP's late reply to the dropped connection is reported, not thrown.
  await until(() => errors.length > 0, 2000, "late reply report");
  assert.ok(errors[0] instanceof WireClosedError);
  await rep.close();
  await serving;
});

test("connect: no listener -> typed timeout naming the endpoint and the connect error", async () => {
  // Find a free port, then leave it closed.
  const probe = await PullSocket.bind("tcp://127.0.0.1:0");
  const port = probe.port;
  await probe.close();
  await using req = ReqSocket.connect(`tcp://127.0.0.1:${port}`, FAST);
  const err = await req.request(b("x"), { timeoutMs: 150 }).then(() => undefined, (e) => e);
  assert.ok(err instanceof WireTimeoutError);
  assert.equal(err.expected, "connect");
  assert.match(err.message, /the REQ socket has no peer; last connect error/);
  assert.equal(err.peer, `tcp://127.0.0.1:${port}`);
  assert.match(err.message, /ECONNREFUSED|refused/i);
  // A server that appears later is found by the reconnect loop.
  await using rep = await RepSocket.bind(`tcp://127.0.0.1:${port}`, FAST);
  const serving = rep.serve((f) => f);
  assert.deepEqual((await req.request(b("now"))).map(s), ["now"]);
  await rep.close();
  await serving;
});

test("reconnect: the server restarts on the same port", async () => {
  let rep = await RepSocket.bind("tcp://127.0.0.1:0", FAST);
  const port = rep.port;
  let serving = rep.serve(() => b("v1"));
  await using req = ReqSocket.connect(`tcp://127.0.0.1:${port}`, FAST);
  assert.deepEqual((await req.request(b("a"))).map(s), ["v1"]);
  await rep.close();
  await serving;
  await until(() => req.peers.length === 0, 2000, "the REQ to see the server gone");
  await assert.rejects(req.request(b("down"), { timeoutMs: 100 }), WireTimeoutError);
  rep = await RepSocket.bind(`tcp://127.0.0.1:${port}`, FAST);
  serving = rep.serve(() => b("v2"));
  assert.deepEqual((await req.request(b("b"))).map(s), ["v2"]);
  await rep.close();
  await serving;
});

test("receive: deadline, and a message after a timed-out receive is not lost", async () => {
  await using pull = await PullSocket.bind("tcp://127.0.0.1:0", FAST);
  const err = await pull.receive({ timeoutMs: 50 }).then(() => undefined, (e) => e);
  assert.ok(err instanceof WireTimeoutError);
  assert.equal(err.expected, "message");
  assert.match(err.message, /0 peer\(s\) connected/);
  await using push = PushSocket.connect(`tcp://127.0.0.1:${pull.port}`, FAST);
  await push.send(b("kept"));
  assert.equal(s((await pull.receive({ timeoutMs: 1000 }))[0]), "kept");
});

test("send: no peer within the deadline", async () => {
  await using push = new PushSocket(FAST);
  const err = await push.send(b("x"), { timeoutMs: 30 }).then(() => undefined, (e) => e);
  assert.ok(err instanceof WireTimeoutError);
  assert.match(err.message, /none: call connect\(\) or bind\(\) first/);
});

test("handshake: a silent client is dropped after handshakeTimeoutMs", async () => {
  const errors: WireError[] = [];
  await using rep = await RepSocket.bind("tcp://127.0.0.1:0", {
    ...FAST,
    handshakeTimeoutMs: 100,
    onError: (e) => errors.push(e),
  });
  const raw = await rawConnect(rep.port);
  const t0 = performance.now();
  await raw.closed;
  const elapsed = performance.now() - t0;
  assert.ok(elapsed >= 90 && elapsed < 1000, `closed after ${elapsed} ms`);
  assert.equal(raw.received().length, 64, "the server sent its greeting only");
  await until(() => errors.length > 0, 1000, "report");
  assert.ok(errors[0] instanceof WireTimeoutError);
  assert.match(errors[0].message, /ZMTP greeting timed out after 100 ms/);
});
