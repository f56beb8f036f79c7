// Real-peer interop: our sockets against libzmq through pyzmq (/usr/bin/python3), both
// directions, for REQ/REP, PUSH/PULL and DEALER/ROUTER, exchanging every LMCache message
// sample and checking the bytes on both sides.
import { test } from "./helpers/skip.ts";
import assert from "node:assert/strict";
import {
  DealerSocket,
  decodeMessage,
  encodeMessage,
  PullSocket,
  PushSocket,
  RepSocket,
  ReqSocket,
  RouterSocket,
} from "../src/channel/wire/mod.ts";
import { type PyPeer, pythonSkipReason, startPyPeer } from "./helpers/py_peer.ts";
import { hex, loadSamples } from "./wire/samples.ts";
import { b, s } from "./wire/util.ts";

const skip = pythonSkipReason();
if (skip) console.log(`wire interop tests skipped: ${skip}`);
const opts = { skip: skip ?? false };

const samples = loadSamples();
const wanted = samples.map((m) => encodeMessage(m));
const FAST = { timeoutMs: 5000, reconnectIntervalMs: 20 };
const E = new Uint8Array(0);

/** What arrived must be exactly pyzmq's msgpack bytes of sample i, and decode to it. */
function checkArrival(i: number, bytes: Uint8Array): void {
  assert.equal(hex(bytes), hex(wanted[i]), `sample ${i} (${samples[i].type}): bytes differ`);
  assert.deepEqual(decodeMessage(bytes), samples[i], `sample ${i}: decoded value differs`);
}

async function finished(py: PyPeer): Promise<void> {
  const r = await py.done;
  assert.equal(r.code, 0, `python peer failed: ${r.stdout}${r.stderr}`);
  assert.match(r.stdout, new RegExp(`OK ${samples.length}`));
}

async function withPeer(
  mode: string,
  endpoint: string | undefined,
  body: (py: PyPeer) => Promise<void>,
): Promise<void> {
  const py = await startPyPeer(mode, endpoint);
  try {
    await body(py);
    await finished(py);
  } finally {
    py.kill();
    await py.done;
  }
}

test("interop: TS REQ -> pyzmq REP", opts, async () => {
  await withPeer("rep-bind", undefined, async (py) => {
    await using req = ReqSocket.connect(`127.0.0.1:${py.port}`, FAST);
    for (let i = 0; i < samples.length; i++) {
      const reply = await req.request(wanted[i]);
      assert.equal(reply.length, 1);
      checkArrival(i, reply[0]);
    }
  });
});

test("interop: pyzmq REQ -> TS REP", opts, async () => {
  await using rep = await RepSocket.bind("tcp://127.0.0.1:0", FAST);
  await withPeer("req-connect", `tcp://127.0.0.1:${rep.port}`, async () => {
    for (let i = 0; i < samples.length; i++) {
      const r = await rep.receive();
      assert.equal(r.peer.socketType, "REQ");
      assert.equal(r.frames.length, 1);
      checkArrival(i, r.frames[0]);
      await r.reply(wanted[i]);
    }
  });
});

test("interop: TS PUSH -> pyzmq PULL", opts, async () => {
  await withPeer("pull-bind", undefined, async (py) => {
    await using push = PushSocket.connect(`tcp://127.0.0.1:${py.port}`, FAST);
    for (const w of wanted) await push.send(w);
    await push.send([b("a"), E, b("c".repeat(300))]);
  });
});

test("interop: pyzmq PUSH -> TS PULL", opts, async () => {
  await using pull = await PullSocket.bind("tcp://127.0.0.1:0", FAST);
  await withPeer("push-connect", `tcp://127.0.0.1:${pull.port}`, async () => {
    for (let i = 0; i < samples.length; i++) {
      const frames = await pull.receive();
      assert.equal(frames.length, 1);
      checkArrival(i, frames[0]);
    }
    const last = await pull.receive();
    assert.deepEqual(last.map(s), ["a", "", "c".repeat(300)]);
  });
});

test("interop: TS DEALER (identity) -> pyzmq ROUTER", opts, async () => {
  await withPeer("router-bind", undefined, async (py) => {
    await using dealer = DealerSocket.connect(`tcp://127.0.0.1:${py.port}`, {
      ...FAST,
      identity: "ts-dealer",
    });
    for (let i = 0; i < samples.length; i++) {
      await dealer.send([E, wanted[i]]);
      const frames = await dealer.receive();
      assert.equal(frames.length, 2);
      assert.equal(frames[0].length, 0);
      checkArrival(i, frames[1]);
    }
  });
});

test("interop: pyzmq DEALER (identity) -> TS ROUTER", opts, async () => {
  await using router = await RouterSocket.bind("tcp://127.0.0.1:0", FAST);
  await withPeer("dealer-connect", `tcp://127.0.0.1:${router.port}`, async () => {
    for (let i = 0; i < samples.length; i++) {
      const [id, delim, body, ...rest] = await router.receive();
      assert.equal(s(id), "py-dealer");
      assert.equal(delim.length, 0);
      assert.equal(rest.length, 0);
      checkArrival(i, body);
      await router.send([id, E, wanted[i]]);
    }
  });
});

test("interop: pyzmq REQ -> TS ROUTER (generated identity)", opts, async () => {
  await using router = await RouterSocket.bind("tcp://127.0.0.1:0", FAST);
  await withPeer("req-router", `tcp://127.0.0.1:${router.port}`, async () => {
    for (let i = 0; i < samples.length; i++) {
      const [id, delim, body] = await router.receive();
      assert.equal(id.length, 5);
      assert.equal(id[0], 0);
      assert.equal(delim.length, 0);
      checkArrival(i, body);
      await router.send([id, E, wanted[i]]);
    }
  });
});

// Two pyzmq DEALERs claiming one identity: our ROUTER refuses the second as libzmq's does
// by default, and the first keeps its replies.
const SAME_IDENTITY_PY = `
import sys, time, zmq
ctx = zmq.Context()
def dealer():
    d = ctx.socket(zmq.DEALER)
    d.setsockopt(zmq.IDENTITY, b"worker")
    d.setsockopt(zmq.LINGER, 0)
    d.setsockopt(zmq.RCVTIMEO, 3000)
    d.connect(sys.argv[1])
    return d
first = dealer()
first.send(b"from first")
assert first.recv() == b"ack first"
second = dealer()
second.send(b"from second")
time.sleep(0.3)  # the second connection has shaken hands by now
first.send(b"first again")
assert first.recv() == b"ack again", "the first peer lost its route"
second.setsockopt(zmq.RCVTIMEO, 300)
try:
    got = second.recv()
    print("SECOND GOT", got)
    sys.exit(1)
except zmq.Again:
    pass
print("OK")
`;

test(
  "interop: pyzmq DEALERs claiming one identity -> TS ROUTER refuses the second",
  opts,
  async () => {
    const { spawn } = await import("node:child_process");
    const { PYTHON } = await import("./helpers/py_peer.ts");
    await using router = await RouterSocket.bind("tcp://127.0.0.1:0", FAST);
    const child = spawn(PYTHON, ["-c", SAME_IDENTITY_PY, `tcp://127.0.0.1:${router.port}`], {
      stdio: ["ignore", "pipe", "pipe"],
    });
    let out = "";
    child.stdout!.on("data", (d) => out += String(d));
    child.stderr!.on("data", (d) => out += String(d));
    const done = new Promise<number | null>((r) => child.on("close", (code) => r(code)));
    try {
      const seen: string[] = [];
      for (const reply of ["ack first", "ack again"]) {
        const [id, body] = await router.receive({ timeoutMs: 5000 });
        assert.equal(s(id), "worker");
        seen.push(s(body));
        await router.send([id, b(reply)]);
      }
      assert.deepEqual(seen, ["from first", "first again"], "the second peer's message never came");
      assert.equal(await done, 0, `python peer failed: ${out}`);
      assert.match(out, /^OK$/m);
    } finally {
      child.kill();
      await done;
    }
  },
);
