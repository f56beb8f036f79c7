// Resource hygiene: every scenario must leave no timer, socket or listener behind. Under
// Deno these run as Deno.test with the op and resource sanitizers on (node:test under
// Deno does not sanitize); under Bun they run as plain node:test cases.
import { test } from "node:test";
import assert from "node:assert/strict";
import {
  DealerSocket,
  PullSocket,
  PushSocket,
  RepSocket,
  ReqSocket,
  RouterSocket,
  WireTimeoutError,
} from "../src/channel/wire/mod.ts";
import { b, handshake, rawConnect, s, sleep } from "./wire/util.ts";

const FAST = { timeoutMs: 2000, reconnectIntervalMs: 20 };
const E = new Uint8Array(0);

const scenarios: Record<string, () => Promise<void>> = {
  "REQ/REP round trip": async () => {
    const rep = await RepSocket.bind("tcp://127.0.0.1:0", FAST);
    const serving = rep.serve((f) => f);
    const req = ReqSocket.connect(`tcp://127.0.0.1:${rep.port}`, FAST);
    assert.equal(s((await req.request(b("x")))[0]), "x");
    await req.close();
    await rep.close();
    await serving;
  },
  "REQ timeout, recreate, close": async () => {
    const router = await RouterSocket.bind("tcp://127.0.0.1:0", FAST);
    const req = ReqSocket.connect(`tcp://127.0.0.1:${router.port}`, FAST);
    await assert.rejects(req.request(b("x"), { timeoutMs: 50 }), WireTimeoutError);
    const p = req.request(b("y"));
    let [id, , body] = await router.receive();
    while (s(body) !== "y") [id, , body] = await router.receive();
    await router.send([id, E, b("ok")]);
    await p;
    await req.close();
    await router.close();
  },
  "connecting to nothing, then close": async () => {
    const probe = await PullSocket.bind("tcp://127.0.0.1:0");
    const port = probe.port;
    await probe.close();
    const push = PushSocket.connect(`tcp://127.0.0.1:${port}`, FAST);
    await assert.rejects(push.send(b("x"), { timeoutMs: 60 }), WireTimeoutError);
    await push.close();
  },
  "PUSH/PULL and DEALER/ROUTER": async () => {
    const pull = await PullSocket.bind("tcp://127.0.0.1:0", FAST);
    const push = PushSocket.connect(`tcp://127.0.0.1:${pull.port}`, FAST);
    await push.send(b("m"));
    await pull.receive();
    const router = await RouterSocket.bind("tcp://127.0.0.1:0", FAST);
    const dealer = DealerSocket.connect(`tcp://127.0.0.1:${router.port}`, FAST);
    await dealer.send(b("d"));
    const [id] = await router.receive();
    await router.send([id, b("r")]);
    await dealer.receive();
    await Promise.all([push.close(), pull.close(), dealer.close(), router.close()]);
  },
  "malformed and silent raw clients": async () => {
    const rep = await RepSocket.bind("tcp://127.0.0.1:0", { ...FAST, handshakeTimeoutMs: 50 });
    const garbage = await rawConnect(rep.port);
    garbage.write("GET / HTTP/1.1\r\n\r\n");
    await garbage.closed;
    const silent = await rawConnect(rep.port);
    await silent.closed;
    const half = await rawConnect(rep.port);
    half.write(handshake("REQ"));
    await sleep(20);
    await rep.close();
    await half.closed;
  },
  "close while connecting and while a receive waits": async () => {
    const pull = new PullSocket(FAST).connect("tcp://127.0.0.1:9");
    const waiting = pull.receive({ timeoutMs: 10_000 }).catch((e) => e);
    await pull.close();
    assert.equal((await waiting).name, "WireClosedError");
  },
};

const D = (globalThis as {
  Deno?: {
    test(
      t: {
        name: string;
        fn: () => Promise<void>;
        sanitizeOps: boolean;
        sanitizeResources: boolean;
      },
    ): void;
  };
}).Deno;

for (const [name, fn] of Object.entries(scenarios)) {
  if (D) D.test({ name: `no leaks: ${name}`, fn, sanitizeOps: true, sanitizeResources: true });
  else test(`no leaks: ${name} (sanitizers run under Deno only)`, fn);
}
