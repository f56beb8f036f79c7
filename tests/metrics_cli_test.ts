// The metrics flags and `kvport stats` as a person uses them: a `kvport p2p-registry`
// and a `kvport p2p-peer` holder serve /metrics (--metrics-port 0, the address on the
// ready line); a requester here fetches from the holder; `kvport stats` shows the
// holder's counters (JSON and human form); bad flags exit 2, a dead endpoint exits 1.
import { test } from "./helpers/skip.ts";
import assert from "node:assert/strict";
import { nativeLibrary } from "../mod.ts";
import { freePort } from "../cli/demo_cmd.ts";
import {
  type Child,
  nextEvent,
  spawnKvport,
  spawnWithStdin as spawnP2p,
  type StdinChild,
} from "../cli/spawn.ts";
import { docKeys, instance, instanceConfig, tempDir, waitForHits } from "./helpers/p2p_util.ts";
import { type FamilySnapshot, sumOf } from "../src/metrics/mod.ts";

const skip: string | false = await nativeLibrary().then(
  () => false,
  (e) => `libkvport.so not loadable (make -C native): ${String(e).split("\n")[0]}`,
);
if (skip) console.log(`metrics_cli_test skipped: ${skip}`);

const SHAPE = "2,2,256,128"; // 256 KiB chunks
const PAGE = 2 * 2 * 256 * 128 * 2;

async function stats(args: string[]): Promise<{ code: number; json: unknown[]; text: string }> {
  const c = spawnKvport("stats", ["stats", ...args]);
  const json: unknown[] = [];
  for await (const line of c.lines) json.push(line);
  const code = await c.exited;
  return { code, json, text: c.stderr.join("\n") };
}

test("metrics cli: p2p-registry and p2p-peer serve /metrics; kvport stats shows them", {
  skip,
  timeout: 120_000,
}, async () => {
  const tmp = tempDir("kvport-metrics-cli-");
  const [pull, reply, init, lookup, worker] = await Promise.all(
    [1, 2, 3, 4, 5].map(() => freePort()),
  );
  const pullUrl = `127.0.0.1:${pull}`;
  const replyUrl = `127.0.0.1:${reply}`;
  const children: StdinChild[] = [];
  const registry = spawnP2p("registry", [
    "p2p-registry",
    "--pull-url",
    pullUrl,
    "--reply-url",
    replyUrl,
    "--metrics-port",
    "0",
    "--json",
  ]);
  children.push(registry);
  const holder = spawnP2p("holder", [
    "p2p-peer",
    "--config",
    instanceConfig(tmp.dir, {
      id: "holder",
      initPort: init,
      lookupPort: lookup,
      workerPort: worker,
      pull: pullUrl,
      reply: replyUrl,
      bufferBytes: 16 * PAGE,
    }),
    "--kv-shape",
    SHAPE,
    "--store",
    "A:6",
    "--engine",
    "builtin",
    "--metrics-port",
    "0",
    "--json",
  ]);
  children.push(holder);
  const requester = await instance({ pullUrl, replyUrl }, "requester", {
    channelType: "nixl",
    engine: "builtin",
    pageSize: PAGE,
    bufferSize: 16 * PAGE,
  });
  try {
    const [rReady, hReady] = await Promise.all([
      nextEvent(registry, "ready", 30_000),
      nextEvent(holder, "ready", 30_000),
    ]);
    for (const r of [rReady, hReady]) {
      assert.match(String(r.metrics), /^http:\/\/127\.0\.0\.1:\d+\/metrics$/);
    }
    const keys = docKeys("A", 6);
    await waitForHits(requester, keys, 6);
    const got = await requester.retrieve(keys);
    assert.equal(got.hitChunks, 6);
    requester.release(got.pages);

    const { code, json } = await stats(["--url", String(hReady.metrics), "--json"]);
    assert.equal(code, 0);
    assert.equal(json.length, 1);
    const snap = json[0] as { url: string; families: FamilySnapshot[] };
    assert.equal(snap.url, hReady.metrics);
    const fam = (n: string) => snap.families.find((f) => f.name === n);
    assert.equal(sumOf(fam("kvport_p2p_served_chunks_total")), 6);
    assert.equal(sumOf(fam("kvport_p2p_served_bytes_total")), 6 * PAGE);
    assert.equal(sumOf(fam("kvport_p2p_admitted_chunks_total")), 6);
    assert.equal(sumOf(fam("kvport_p2p_chunks")), 6);
    assert.equal(sumOf(fam("kvport_channel_bytes_total"), { role: "both", op: "WRITE" }), 6 * PAGE);
    assert.ok(sumOf(fam("kvport_wire_connections_total"))! > 0);

    const human = await stats([
      "--port",
      new URL(String(hReady.metrics)).port,
      "--filter",
      "p2p_served_chunks",
    ]);
    assert.equal(human.code, 0);
    assert.match(human.text, /kvport_p2p_served_chunks_total \(counter\)/);
    assert.match(human.text, /\{tp_rank="0"\} {2}6/);
    assert.doesNotMatch(human.text, /kvport_p2p_lookups_total/, "--filter keeps only matches");

    const reg = await stats(["--url", String(rReady.metrics), "--json"]);
    const rf = (reg.json[0] as { families: FamilySnapshot[] }).families;
    const rfam = (n: string) => rf.find((f) => f.name === n);
    assert.equal(sumOf(rfam("kvport_p2p_registry_instances")), 2, "holder and requester");
    assert.ok(sumOf(rfam("kvport_p2p_registry_lookup_hits_total"))! >= 1);
    assert.equal(sumOf(rfam("kvport_p2p_registry_chunks")), 6);

    for (const c of children) c.write(JSON.stringify({ cmd: "exit" }));
    assert.deepEqual(await Promise.all(children.map((c) => c.exited)), [0, 0]);
  } finally {
    await requester.close();
    for (const c of children) c.kill();
    await Promise.all(children.map((c) => c.exited));
    tmp.cleanup();
  }
});

test("metrics cli: bad metrics flags exit 2; an endpoint nobody serves exits 1", {
  skip,
  timeout: 60_000,
}, async () => {
  const run = async (args: string[]) => {
    const c: Child = spawnKvport(args[0], args);
    for await (const _ of c.lines) { /* drain */ }
    return { code: await c.exited, err: c.stderr.join("\n") };
  };
  let r = await run([
    "pd-sender",
    "--metrics-port",
    "http",
    "--init-port",
    "1",
    "--alloc-port",
    "2",
  ]);
  assert.equal(r.code, 2, r.err);
  assert.match(r.err, /--metrics-port expects an integer >= 0, got "http"/);
  r = await run(["p2p-registry", "--metrics-host", "0.0.0.0"]);
  assert.equal(r.code, 2, r.err);
  assert.match(r.err, /--metrics-host needs --metrics-port/);
  r = await run(["stats"]);
  assert.equal(r.code, 2, r.err);
  assert.match(r.err, /--url \(or --port\) is required/);
  const dead = await freePort();
  r = await run(["stats", "--port", String(dead), "--timeout", "2"]);
  assert.equal(r.code, 1, r.err);
  assert.match(r.err, new RegExp(`cannot scrape http://127\\.0\\.0\\.1:${dead}/metrics`));
});
