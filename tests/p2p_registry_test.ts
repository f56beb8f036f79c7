// The P2P registry on the wire, as LMCache's workers talk to a controller: reports pushed
// to its PULL socket (several messages as the parts of one message), lookups from REQ and
// DEALER sockets on its ROUTER socket; longest prefix, the asker excluded, same worker only,
// re-registration, eviction, and forgetting silent instances; and a pyzmq (libzmq) worker
// shaped like LMCache's talking to the registry and to a holder.
import { spawn } from "node:child_process";
import { test } from "./helpers/skip.ts";
import assert from "node:assert/strict";
import { Decoder } from "@msgpack/msgpack";
import {
  DealerSocket,
  decodeMessage,
  encodeMessage,
  type LmcacheMessage,
  PushSocket,
  ReqSocket,
} from "../src/channel/wire/mod.ts";
import { chunkHashOf, loadConfig, P2PRegistry, type P2PRegistryEvent } from "../mod.ts";
import { instance, startRegistry, until } from "./helpers/p2p_util.ts";
import { PYTHON, pythonSkipReason } from "./helpers/py_peer.ts";

const reg = (id: string, worker = 0, url: string | null = `127.0.0.1:9${worker}00`) =>
  ({
    type: "RegisterMsg",
    instance_id: id,
    worker_id: worker,
    ip: "127.0.0.1",
    port: 7000 + worker,
    peer_init_url: url,
  }) as const;

const admit = (id: string, keys: bigint[], worker = 0): LmcacheMessage => ({
  type: "BatchedKVOperationMsg",
  instance_id: id,
  worker_id: worker,
  location: "LocalCPUBackend",
  operations: keys.map((key, i) => ({ op_type: "admit" as const, key, seq_num: i })),
});

async function push(url: string, msgs: LmcacheMessage[]): Promise<void> {
  await using p = PushSocket.connect(`tcp://${url}`, { timeoutMs: 2000 });
  await p.send(msgs.map(encodeMessage));
}

async function ask(url: string, hashes: bigint[], asker = "asker", worker = 0) {
  await using req = ReqSocket.connect(`tcp://${url}`, { timeoutMs: 2000 });
  const [reply] = await req.request(
    encodeMessage({ type: "BatchedP2PLookupMsg", hashes, instance_id: asker, worker_id: worker }),
  );
  return decodeMessage(reply, ["BatchedP2PLookupRetMsg"]).layout_info;
}

test("p2p registry: multipart reports, longest prefix over REQ, asker and other ranks excluded", async () => {
  await using r = await startRegistry();
  await push(r.pullUrl, [
    reg("a"),
    admit("a", [1n, 2n, 3n]),
    reg("b"),
    admit("b", [1n, 2n, 3n, 4n, 5n]),
    reg("c", 1, "127.0.0.1:9100"),
    admit("c", [1n, 2n, 3n, 4n, 5n, 6n], 1),
    // 2^63 and a negative hash travel as 64-bit integers
    admit("a", [2n ** 63n, -5n]),
  ]);
  await until(() => r.stats.chunks === 16, 2000, "reports applied");
  assert.deepEqual(await ask(r.replyUrl, [1n, 2n, 3n, 4n, 9n]), [[
    "b",
    "LocalCPUBackend",
    4,
    "127.0.0.1:9000",
  ]]);
  // the asker itself is never the answer; worker 1 only sees worker 1's chunks
  assert.deepEqual((await ask(r.replyUrl, [1n, 2n, 3n, 4n], "b"))[0].slice(0, 3), [
    "a",
    "LocalCPUBackend",
    3,
  ]);
  assert.deepEqual((await ask(r.replyUrl, [1n, 2n], "x", 1))[0][0], "c");
  // a miss, as LMCache's controller answers it
  assert.deepEqual(await ask(r.replyUrl, [7n, 1n]), [["", "", 0, ""]]);
  assert.deepEqual(await ask(r.replyUrl, []), [["", "", 0, ""]]);
  assert.deepEqual((await ask(r.replyUrl, [2n ** 63n, -5n]))[0].slice(0, 3), [
    "a",
    "LocalCPUBackend",
    2,
  ]);
  assert.equal(r.stats.instances, 3);
});

test("p2p registry: evict shortens the prefix, a new registration drops the old chunks", async () => {
  await using r = await startRegistry();
  await push(r.pullUrl, [
    reg("a"),
    admit("a", [1n, 2n, 3n, 4n]),
    { type: "KVEvictMsg", instance_id: "a", worker_id: 0, key: 3n, location: "LocalCPUBackend" },
    { type: "KVAdmitMsg", instance_id: "a", worker_id: 0, key: 9n, location: "LocalDiskBackend" },
  ]);
  await until(() => r.stats.reports === 4, 2000, "reports applied");
  assert.equal(r.lookup([1n, 2n, 3n, 4n], "x", 0).hitChunks, 2);
  assert.equal(r.lookup([9n], "x", 0).location, "LocalDiskBackend");
  assert.deepEqual(r.instances()[0].chunks, { LocalCPUBackend: 3, LocalDiskBackend: 1 });
  await push(r.pullUrl, [reg("a")]);
  await until(() => r.stats.reports === 5, 2000, "re-registration applied");
  assert.equal(r.lookup([1n], "x", 0).hitChunks, 0, "a restarted instance holds nothing yet");
  assert.equal(r.stats.chunks, 0);
  await push(r.pullUrl, [{
    type: "DeRegisterMsg",
    instance_id: "a",
    worker_id: 0,
    ip: "127.0.0.1",
    port: 7000,
  }]);
  await until(() => r.stats.instances === 0, 2000, "deregistered");
});

test("p2p registry: DEALER requests (newer LMCache) and register/heartbeat requests are answered", async () => {
  await using r = await startRegistry();
  r.report(reg("h"));
  r.report(admit("h", [chunkHashOf("vllm@m@1@0@a@bfloat16")]));
  await using dealer = DealerSocket.connect(`tcp://${r.replyUrl}`, { timeoutMs: 2000 });
  const empty = new Uint8Array(0);
  await dealer.send([
    empty,
    encodeMessage({ type: "BatchedP2PLookupMsg", hashes: [10n], instance_id: "q", worker_id: 0 }),
  ]);
  const frames = await dealer.receive();
  assert.equal(frames.length, 2);
  assert.equal(frames[0].length, 0);
  assert.deepEqual(decodeMessage(frames[1], ["BatchedP2PLookupRetMsg"]).layout_info[0][2], 1);
  await dealer.send([empty, encodeMessage(reg("q", 0, "127.0.0.1:9999"))]);
  const ret = new Decoder().decode((await dealer.receive())[1]) as Record<string, unknown>;
  // newer workers heartbeat (over a DEALER) to the URL the registration reply names
  assert.deepEqual(ret, { type: "RegisterRetMsg", extra_config: { heartbeat_url: r.replyUrl } });
  await dealer.send([
    empty,
    encodeMessage({
      type: "HeartbeatMsg",
      instance_id: "q",
      worker_id: 0,
      ip: "127.0.0.1",
      port: 1,
      peer_init_url: "127.0.0.1:9999",
    }),
  ]);
  const beat = new Decoder().decode((await dealer.receive())[1]) as Record<string, unknown>;
  assert.equal(beat.type, "HeartbeatRetMsg");
  // something that is not a request gets an ErrorMsg, not silence
  await dealer.send([empty, encodeMessage({ type: "ProxyNotif", req_id: "x" })]);
  const e = decodeMessage((await dealer.receive())[1], ["ErrorMsg"]);
  assert.match(e.error, /ProxyNotif is not a request/);
  assert.equal(r.instances().find((i) => i.instanceId === "q")?.heartbeats, 1);
});

test("p2p registry: an instance that stops sending heartbeats is forgotten, a live one is kept", async () => {
  await using r = await startRegistry(300);
  const events: P2PRegistryEvent[] = [];
  r.onEvent((e) => events.push(e));
  await push(r.pullUrl, [reg("silent"), admit("silent", [1n, 2n]), reg("alive", 0, "x:1")]);
  await until(() => r.stats.instances === 2, 2000, "both registered");
  const beat = setInterval(() =>
    r.report({
      type: "HeartbeatMsg",
      instance_id: "alive",
      worker_id: 0,
      ip: "127.0.0.1",
      port: 1,
      peer_init_url: "x:1",
    }), 50);
  try {
    await until(() => r.stats.forgotten === 1, 3000, "the silent instance forgotten");
    await new Promise((res) => setTimeout(res, 400));
    assert.deepEqual(r.instances().map((i) => i.instanceId), ["alive"]);
    assert.equal(r.lookup([1n], "q", 0).hitChunks, 0);
    assert.equal(r.stats.chunks, 0);
    const forget = events.find((e) => e.type === "forget")!;
    assert.equal(forget.instanceId, "silent");
    assert.match(forget.detail!, /silent for \d+ ms \(timeout 300 ms\)/);
  } finally {
    clearInterval(beat);
  }
});

test("p2p registry: a worker_id beyond 2^53 decodes exactly, is refused by name, and the loop goes on", async () => {
  await using r = await startRegistry();
  const events: string[] = [];
  r.onEvent((e) => e.type === "error" && events.push(e.detail ?? ""));
  await using p = PushSocket.connect(`tcp://${r.pullUrl}`, { timeoutMs: 2000 });
  await p.send([encodeMessage({ ...reg("huge"), worker_id: 2n ** 60n })]);
  await p.send([encodeMessage(reg("fine"))]);
  await until(() => r.stats.instances === 1 && r.stats.errors === 1, 2000, "one refused, one kept");
  assert.match(events[0], /RegisterMsg field "worker_id".*int 1152921504606846976/);
});

test("p2p registry: undecodable reports are counted and skipped; fromConfig reads the controller keys", async () => {
  await using r = await startRegistry();
  await using p = PushSocket.connect(`tcp://${r.pullUrl}`, { timeoutMs: 2000 });
  await p.send([new Uint8Array([0xc1]), encodeMessage(reg("a"))]);
  await until(() => r.stats.instances === 1 && r.stats.errors === 1, 2000, "one good, one bad");
  const { config } = loadConfig({
    env: {},
    overrides: {
      controller_pull_url: "127.0.0.1:0",
      controller_reply_url: "127.0.0.1:0",
      lmcache_worker_heartbeat_time: 2,
    },
  });
  await using fromCfg = await P2PRegistry.fromConfig(config);
  assert.equal(fromCfg.heartbeatTimeoutMs, 6000);
  assert.match(fromCfg.pullUrl, /^127\.0\.0\.1:\d+$/);
  await assert.rejects(
    P2PRegistry.fromConfig({ controller_pull_url: null, controller_reply_url: "x:1" }),
    /needs controller_pull_url and controller_reply_url/,
  );
  await assert.rejects(
    P2PRegistry.listen({ pullUrl: r.pullUrl, replyUrl: "127.0.0.1:0" }),
    /cannot bind pullUrl/,
  );
});

const pySkip = pythonSkipReason() ?? false;

test("p2p registry: an LMCache-style worker on libzmq (pyzmq) reports, looks up, asks a holder", {
  skip: pySkip,
}, async () => {
  await using r = await startRegistry();
  await using holder = await instance(null, "holder");
  const script = new URL("./helpers/p2p_py_worker.py", import.meta.url).pathname;
  const child = spawn(PYTHON, [script, r.pullUrl, r.replyUrl, holder.lookupUrl], {
    stdio: ["ignore", "pipe", "pipe"],
  });
  let stdout = "";
  let stderr = "";
  child.stdout!.on("data", (d: Uint8Array) => (stdout += new TextDecoder().decode(d)));
  child.stderr!.on("data", (d: Uint8Array) => (stderr += new TextDecoder().decode(d)));
  const code = await new Promise<number | null>((res) => child.on("close", res));
  assert.equal(code, 0, stderr);
  const lines = stdout.trim().split("\n").map((l) => JSON.parse(l));
  const want = {
    type: "BatchedP2PLookupRetMsg",
    layout_info: [["py-worker", "LocalCPUBackend", 5, "127.0.0.1:1"]],
  };
  assert.deepEqual(lines[0], { via: "dealer", frames: 2, reply: want });
  assert.deepEqual(lines[1], { via: "req", reply: want });
  assert.deepEqual(lines[2], { via: "holder", reply: { type: "P2PErrorMsg", error_code: 3 } });
  assert.equal(r.instances()[0].port, 7777);
});

test("registry client: reports queued while the registry is away are bounded; a resync says the same", async () => {
  const { RegistryClient } = await import("../src/p2p/registry_client.ts");
  let reg = await startRegistry();
  const pullUrl = reg.pullUrl;
  const held = new Set<bigint>();
  const client = new RegistryClient({
    pullUrl,
    replyUrl: null,
    instanceId: "bounded",
    workerId: 0,
    ip: "127.0.0.1",
    port: 1,
    peerInitUrl: "127.0.0.1:2",
    location: "LocalCPUBackend",
    heartbeatIntervalMs: null,
    heartbeatDelayMs: 0,
    requestTimeoutMs: 2000,
    sendTimeoutMs: 3000,
    snapshot: () => held,
  });
  try {
    client.start();
    await client.flush();
    await until(() => reg.stats.instances === 1, 3000, "the registration");
    await reg.close();
    // The registry is away: 100,000 admits and 20,000 evicts of them pile up behind a
    // push that waits for a peer.
    for (let i = 1n; i <= 100_000n; i++) {
      held.add(i);
      client.admit(i);
      assert.ok(client.queuedReports <= 65_536, `queue at ${client.queuedReports}`);
    }
    for (let i = 1n; i <= 20_000n; i++) {
      held.delete(i);
      client.evict(i);
    }
    assert.ok(client.queuedReports <= 65_536);
    // The registry comes back on the same address: the client resyncs and the registry
    // holds exactly what the instance holds.
    const [host, port] = [
      pullUrl.slice(0, pullUrl.lastIndexOf(":")),
      pullUrl.slice(pullUrl.lastIndexOf(":") + 1),
    ];
    reg = await P2PRegistry.listen({ pullUrl: `${host}:${port}`, replyUrl: "127.0.0.1:0" });
    // (A heartbeat would do this; they are off here.) The push under way may still be
    // waiting out its deadline: flush until the resync went through.
    const deadline = performance.now() + 20_000;
    while (reg.stats.chunks !== 80_000 && performance.now() < deadline) {
      await client.flush().catch(() => {});
      await new Promise((r) => setTimeout(r, 50));
    }
    await until(
      () => reg.stats.chunks === 80_000,
      20_000,
      `80000 chunks (got ${reg.stats.chunks})`,
    );
    await client.flush().catch(() => {});
    await new Promise((r) => setTimeout(r, 200));
    assert.equal(reg.stats.chunks, 80_000);
    assert.deepEqual(reg.instances().map((i) => i.chunks), [{ LocalCPUBackend: 80_000 }]);
    assert.equal(client.queuedReports, 0);
  } finally {
    await client.close(1000).catch(() => {});
    await reg.close();
  }
});
