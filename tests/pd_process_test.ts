// Disaggregated prefill between processes over the built-in engine: a `kvport
// pd-receiver` child (the decoder) and a PdSender in this process (the prefiller), with
// the proxy collector here. Every byte is checked by the receiver. Also: TP=2 with two
// receiver processes, a receiver killed and restarted mid-stream, and `kvport demo`.
import { test as anyEngineTest, type TestOptions } from "./helpers/skip.ts";
import { withEnvDefaults } from "./helpers/env_scope.ts";
import assert from "node:assert/strict";
import process from "node:process";
import { spawnSync } from "node:child_process";
import { fileURLToPath } from "node:url";
import {
  chunkBytes,
  loadConfig,
  MemoryFormat,
  nativeLibrary,
  PdSender,
  PdSendError,
  ProxyNotifier,
} from "../mod.ts";
import { fillPattern } from "../src/pd/pattern.ts";
import { demoKey } from "../cli/pd_cmd.ts";
import {
  decoderConfig,
  freePort,
  nextEvent,
  spawnKvport,
  startReceiver,
  tempDir,
} from "./helpers/pd_procs.ts";

const skip: string | false = await nativeLibrary().then(
  () => false,
  (e) => `libkvport.so not loadable (build it: make -C native): ${String(e).split("\n")[0]}`,
);
if (skip) console.log(`pd_process_test skipped: ${skip}`);

// These flows are about the built-in engine: where NIXL is installed, `auto` would pick it
// (tests/nixl_*_test.ts cover that engine). The children inherit KVPORT_ENGINE, set for
// each test only (a file-level setting reached every later file of the run); the sender
// in this process names its engine (Bun's process.env does not reach C's getenv).
function test(name: string, options: TestOptions, fn: () => Promise<void>): void {
  anyEngineTest(name, options, withEnvDefaults({ KVPORT_ENGINE: "builtin" }, fn));
}

const SHAPE = [2, 4, 256, 128]; // 512 KiB chunks
const SHAPE_ARG = SHAPE.join(",");
const PAGE = chunkBytes(MemoryFormat.KV_2LTD, SHAPE, "bfloat16")!;

async function sender(proxyPort: number | null, tpRank = 0): Promise<PdSender> {
  const { config } = loadConfig({
    env: {},
    overrides: {
      enable_pd: true,
      pd_role: "sender",
      transfer_channel: "nixl",
      pd_buffer_size: 16 * PAGE,
      pd_buffer_device: "cpu",
      ...(proxyPort === null
        ? { pd_skip_proxy_notification: true }
        : { pd_proxy_host: "127.0.0.1", pd_proxy_port: proxyPort }),
    },
  });
  return await PdSender.fromConfig(config, {
    pageSize: PAGE,
    tpRank,
    transferTimeoutMs: 5000,
    engine: "builtin",
  });
}

async function send(
  tx: PdSender,
  spec: { receiverInitPort: number[]; receiverAllocPort: number[] },
  reqId: string,
  from: number,
  count: number,
  last: boolean,
  world = 1,
) {
  const pages = await tx.allocate(count);
  const keys = pages.map((_, i) => demoKey(reqId, from + i, tx.tpRank, world));
  keys.forEach((k, i) => fillPattern(k, tx.channel.pages[pages[i]]));
  return await tx.send({ receiverHost: "127.0.0.1", reqId, isLastPrefill: last, ...spec }, {
    keys,
    pages,
    shape: SHAPE,
    dtype: "bfloat16",
    lastChunkToks: 256,
  });
}

test("pd process: prefiller here, decoder in another process, every byte checked", {
  skip,
}, async () => {
  const tmp = tempDir("kvport-pd-test-");
  const [initPort, allocPort] = [await freePort(), await freePort()];
  const cfg = decoderConfig(tmp.dir, {
    initPorts: [initPort],
    allocPorts: [allocPort],
    bufferSize: 16 * PAGE,
  });
  const { child, ready } = await startReceiver(cfg, SHAPE_ARG, ["--verify", "--expect", "12"]);
  await using proxy = await ProxyNotifier.listen({ host: "127.0.0.1", port: 0 });
  const tx = await sender(proxy.port);
  try {
    assert.equal(ready.engine, "builtin");
    assert.equal(ready.id, `127.0.0.1:${initPort}`);
    const spec = { receiverInitPort: [initPort], receiverAllocPort: [allocPort] };
    const r1 = await send(tx, spec, "req-1", 0, 8, false);
    assert.deepEqual([r1.sent, r1.handshook], [8, true]);
    const r2 = await send(tx, spec, "req-1", 8, 4, true);
    assert.deepEqual([r2.sent, r2.notified, r2.handshook], [4, true, false]);
    await proxy.waitFor("req-1", { timeoutMs: 5000 });
    const done = await nextEvent(child, "done", 10_000);
    assert.deepEqual([done.landed, done.bad, done.verified], [12, 0, true]);
    assert.equal(await child.exited, 0);
  } finally {
    await tx.close();
    child.kill();
    await child.exited;
    tmp.cleanup();
  }
});

test("pd process: TP=2, two decoder processes, the proxy waits for both ranks", {
  skip,
}, async () => {
  const tmp = tempDir("kvport-pd-tp2-");
  const ports = await Promise.all([freePort(), freePort(), freePort(), freePort()]);
  const initPorts = [ports[0], ports[1]];
  const allocPorts = [ports[2], ports[3]];
  const cfg = decoderConfig(tmp.dir, { initPorts, allocPorts, bufferSize: 8 * PAGE });
  const rxs = await Promise.all(
    [0, 1].map((r) =>
      startReceiver(cfg, SHAPE_ARG, ["--tp-rank", String(r), "--verify", "--expect", "3"])
    ),
  );
  await using proxy = await ProxyNotifier.listen({ host: "127.0.0.1", port: 0, tpSize: 2 });
  const txs = await Promise.all([sender(proxy.port, 0), sender(proxy.port, 1)]);
  try {
    assert.deepEqual(rxs.map((r) => r.ready.id), initPorts.map((p) => `127.0.0.1:${p}`));
    const spec = { receiverInitPort: initPorts, receiverAllocPort: allocPorts };
    const waiting = proxy.waitFor("tp2", { timeoutMs: 10_000 });
    const results = await Promise.all(txs.map((tx) => send(tx, spec, "tp2", 0, 3, true, 2)));
    assert.deepEqual(results.map((r) => r.receiverId), rxs.map((r) => r.ready.id));
    await waiting;
    for (const { child } of rxs) {
      const done = await nextEvent(child, "done", 10_000);
      assert.deepEqual([done.landed, done.bad], [3, 0]);
    }
  } finally {
    await Promise.all(txs.map((tx) => tx.close()));
    for (const { child } of rxs) child.kill();
    await Promise.all(rxs.map((r) => r.child.exited));
    tmp.cleanup();
  }
});

test(
  "pd process: a decoder killed mid-stream fails the request clearly; after its restart the next request succeeds",
  {
    skip,
  },
  async () => {
    const tmp = tempDir("kvport-pd-restart-");
    const [initPort, allocPort] = [await freePort(), await freePort()];
    const cfg = decoderConfig(tmp.dir, {
      initPorts: [initPort],
      allocPorts: [allocPort],
      bufferSize: 16 * PAGE,
    });
    let rx = await startReceiver(cfg, SHAPE_ARG, ["--verify"]);
    const tx = await sender(null);
    const spec = { receiverInitPort: [initPort], receiverAllocPort: [allocPort] };
    try {
      await send(tx, spec, "victim", 0, 2, false);
      process.kill(rx.ready.pid as number, "SIGKILL");
      await rx.child.exited;
      rx = await startReceiver(cfg, SHAPE_ARG, ["--verify", "--expect", "3"]);
      const t0 = performance.now();
      await assert.rejects(send(tx, spec, "victim", 2, 2, true), (e) => {
        assert.ok(e instanceof PdSendError, String(e));
        assert.equal(e.reqId, "victim");
        assert.equal(e.receiverId, `127.0.0.1:${initPort}`);
        assert.equal(e.code, "PEER_RESTARTED");
        assert.match(e.message, /restarted or lost after 1 batch\(es\).*retry the whole request/);
        return true;
      });
      assert.ok(performance.now() - t0 < 5000, "failed fast");
      assert.equal(tx.pool.free, tx.pool.pageCount, "no page leaked");
      const r = await send(tx, spec, "retry", 0, 3, true);
      assert.deepEqual([r.sent, r.handshook], [3, true]);
      const done = await nextEvent(rx.child, "done", 10_000);
      assert.deepEqual([done.landed, done.bad], [3, 0]);
    } finally {
      await tx.close();
      rx.child.kill();
      await rx.child.exited;
      tmp.cleanup();
    }
  },
);

/** Runs `kvport demo <args> --json` to its end: exit 0 and its one JSON result line. */
async function demoResult(args: string[]): Promise<Record<string, unknown>> {
  const demo = spawnKvport("demo", ["demo", ...args, "--json"]);
  const results: Record<string, unknown>[] = [];
  const reading = (async () => {
    for await (const line of demo.lines) if ("ok" in line) results.push(line);
  })();
  const code = await demo.exited;
  await reading;
  assert.equal(code, 0, demo.stderr.join("\n"));
  assert.equal(results.length, 1, `one JSON result line: ${demo.stderr.join("\n")}`);
  return results[0];
}

test("pd process: kvport demo runs end to end, checks every byte, the warm request on credits", {
  skip,
}, async () => {
  const r = await demoResult(["--chunks", "3", "--kv-shape", SHAPE_ARG]) as {
    ok: boolean;
    verified: number;
    creditBatches: number;
    allocBatches: number;
    batches: { req: string; credits: number; allocRequests: number }[];
  };
  assert.equal(r.ok, true);
  assert.equal(r.verified, 12, "4 requests (the default) of 3 chunks checked byte for byte");
  // The first request asks (nothing is known yet) and is given credits with its pages;
  // every later one (one batch of 3) is written into credits with no AllocRequest: the
  // refill after a request comes back, or is waited for, before the next one needs it.
  const ways = r.batches.map((b) => [b.credits, b.allocRequests]);
  assert.deepEqual(ways, [[0, 1], [1, 0], [1, 0], [1, 0]]);
  assert.deepEqual([r.creditBatches, r.allocBatches], [1, 0], "the figure is the last request's");
});

// The GPU demo's decoder keeps every chunk until all have landed (it checks them then),
// so its last request needs exactly the pages the sender holds as credits: with one batch
// per request the sender once sent that request an AllocRequest, which waited on the
// decoder for those very pages until the connection gave up. The fake CUDA runtime of
// native/tools (VRAM is host memory there) takes it through the GPU paths on any machine.
const fakeCudart = (() => {
  const r = spawnSync("sh", [
    fileURLToPath(new URL("../native/tools/fake-cudart.sh", import.meta.url)),
  ], {
    encoding: "utf8",
  });
  return r.status === 0 ? r.stdout.trim() : null;
})();

test(
  "pd process: kvport demo --device cuda (fake CUDA runtime), one batch per request: every request lands, the warm ones on credits",
  {
    skip: skip ||
      (fakeCudart === null && "the fake CUDA runtime did not build (native/tools/fake-cudart.sh)"),
  },
  withEnvDefaults({ KVPORT_CUDART: fakeCudart ?? "" }, async () => {
    const r = await demoResult([
      "--device",
      "cuda",
      "--chunks",
      "16",
      "--batch",
      "16",
      "--kv-shape",
      SHAPE_ARG,
      "--timeout",
      "60",
    ]) as {
      ok: boolean;
      device: string;
      verified: number;
      batches: { credits: number; allocRequests: number }[];
    };
    assert.equal(r.ok, true);
    assert.equal(r.device, "cuda");
    assert.equal(r.verified, 64, "4 requests of 16 chunks checked byte for byte");
    assert.deepEqual(
      r.batches.map((b) => [b.credits, b.allocRequests]),
      [[0, 1], [1, 0], [1, 0], [1, 0]],
    );
  }),
);
