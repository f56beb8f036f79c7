// The metrics as an operator gets them: a real Prometheus (Debian's package) scrapes a
// `kvport pd-receiver` and a `kvport pd-sender` every second while the sender moves
// chunks; through Prometheus's HTTP API the chunk and byte counters must equal what the
// sender reported sending and the receiver checked byte for byte, a scrape must have
// seen the transfer in progress, `promtool check metrics` must find nothing wrong with
// our exposition, and every query of docs/grafana-dashboard.json must answer.
//
// Under CI (CI=true or KVPORT_REQUIRE_NATIVE=1) a missing prometheus is a failure:
// .ci/run installs it.
import { test as anyEngineTest, type TestOptions } from "./helpers/skip.ts";
import { withEnvDefaults } from "./helpers/env_scope.ts";
import assert from "node:assert/strict";
import * as fs from "node:fs";
import * as path from "node:path";
import process from "node:process";
import { chunkBytes, MemoryFormat, nativeLibrary } from "../mod.ts";
import { type Child, decoderConfig, nextEvent, spawnKvport, tempDir } from "./helpers/pd_procs.ts";
import {
  type Prometheus,
  prometheusBinaries,
  promtoolCheck,
  type QueryData,
  startPrometheus,
} from "./helpers/prometheus.ts";

const bins = prometheusBinaries();
// CI=true (CI) or KVPORT_REQUIRE_NATIVE=1 (main's .ci/run): a missing prometheus fails.
const inCi = /^(1|true|yes)$/i.test(process.env.CI ?? "") ||
  /^(1|true|yes)$/i.test(process.env.KVPORT_REQUIRE_NATIVE ?? "");
const noLib: string | false = await nativeLibrary().then(
  () => false,
  (e) => `libkvport.so not loadable (make -C native): ${String(e).split("\n")[0]}`,
);
const skip = noLib || (typeof bins === "string" && !inCi ? bins : false);
if (skip) console.log(`metrics_prometheus_test skipped: ${skip}`);

// These flows are about the built-in engine: where NIXL is installed, `auto` would pick it
// (tests/nixl_*_test.ts cover that engine). The children inherit KVPORT_ENGINE, set for
// each test only (a file-level setting reached every later file of the run); the sender
// in this process names its engine (Bun's process.env does not reach C's getenv).
function test(name: string, options: TestOptions, fn: () => Promise<void>): void {
  anyEngineTest(name, options, withEnvDefaults({ KVPORT_ENGINE: "builtin" }, fn));
}

const SHAPE = "2,4,256,128"; // 512 KiB chunks
const PAGE = chunkBytes(MemoryFormat.KV_2LTD, [2, 4, 256, 128], "bfloat16")!;
const CHUNKS = 8; // per request
const BATCH = 4;
const REQUESTS = 40;
const RATE_WINDOW = "10s"; // stands in for Grafana's $__rate_interval (10 x the scrape interval)

/** The one number of an instant query whose answer is a single series. */
function single(data: QueryData, expr: string): number {
  assert.equal(data.resultType, "vector", expr);
  assert.equal(data.result.length, 1, `${expr}: ${JSON.stringify(data.result)}`);
  return Number(data.result[0].value![1]);
}

async function waitFor(
  prom: Prometheus,
  expr: string,
  want: number,
  timeoutMs: number,
): Promise<number> {
  const deadline = Date.now() + timeoutMs;
  let got = NaN;
  while (Date.now() < deadline) {
    const d = await prom.query(expr);
    got = d.result.length === 1 ? Number(d.result[0].value![1]) : NaN;
    if (got === want) return got;
    await new Promise((r) => setTimeout(r, 250));
  }
  return got;
}

async function metricsText(url: string): Promise<string> {
  const res = await fetch(url, { signal: AbortSignal.timeout(10_000) });
  assert.equal(res.status, 200, url);
  assert.match(res.headers.get("content-type") ?? "", /^text\/plain; version=0\.0\.4/);
  return await res.text();
}

test(
  "Prometheus scrapes a PD receiver and sender: counters equal what was sent, dashboard queries answer",
  {
    skip,
    timeout: 180_000,
  },
  async () => {
    if (typeof bins === "string") {
      assert.fail(`under CI (CI / KVPORT_REQUIRE_NATIVE) but ${bins}`);
    }
    const { dir, cleanup } = tempDir("kvport-prom-");
    const children: Child[] = [];
    let prom: Prometheus | undefined;
    try {
      prom = await startPrometheus(bins.prometheus, dir);

      // The decoder: 4 pages, each landed chunk held 40 ms (as a model reading it would),
      // so AllocRequests really wait for pages.
      const decoder = decoderConfig(dir, {
        initPorts: [7300],
        allocPorts: [7301],
        bufferSize: 4 * PAGE,
      });
      const rx = spawnKvport("receiver", [
        "pd-receiver",
        "--config",
        decoder,
        "--kv-shape",
        SHAPE,
        "--init-port",
        "0",
        "--alloc-port",
        "0",
        "--verify",
        "--hold-ms",
        "40",
        "--metrics-port",
        "0",
        "--json",
      ]);
      children.push(rx);
      const rxReady = await nextEvent(rx, "ready", 30_000);
      const rxMetrics = String(rxReady.metrics);
      assert.match(rxMetrics, /^http:\/\/127\.0\.0\.1:\d+\/metrics$/);
      const targets = [{ address: new URL(rxMetrics).host, labels: { process: "receiver" } }];
      prom.setTargets(targets);

      const prefiller = path.join(dir, "prefiller.yaml");
      fs.writeFileSync(
        prefiller,
        [
          "enable_pd: true",
          'transfer_channel: "nixl"',
          'pd_role: "sender"',
          `pd_buffer_size: ${2 * BATCH * PAGE}`,
          'pd_buffer_device: "cpu"',
          "pd_skip_proxy_notification: true",
          "nixl_backends: [UCX]",
          "",
        ].join("\n"),
      );
      const tx = spawnKvport("sender", [
        "pd-sender",
        "--config",
        prefiller,
        "--kv-shape",
        SHAPE,
        "--receiver-host",
        "127.0.0.1",
        "--init-port",
        String(rxReady.init).split(":")[1],
        "--alloc-port",
        String(rxReady.alloc).split(":")[1],
        "--chunks",
        String(CHUNKS),
        "--batch",
        String(BATCH),
        "--requests",
        String(REQUESTS),
        "--pace-ms",
        "200", // 40 requests over 8 s or more: Prometheus finds the target and scrapes meanwhile
        "--linger",
        "120",
        "--metrics-port",
        "0",
        "--json",
      ]);
      children.push(tx);
      const txReady = await nextEvent(tx, "ready", 30_000);
      const tStart = Date.now() / 1000;
      const txMetrics = String(txReady.metrics);
      targets.push({ address: new URL(txMetrics).host, labels: { process: "sender" } });
      prom.setTargets(targets);
      const done = await nextEvent(tx, "done", 120_000);
      const tDone = Date.now() / 1000;
      const chunks = CHUNKS * REQUESTS;
      assert.equal(done.chunks, chunks);
      assert.equal(done.bytes, chunks * PAGE);

      // Both targets up, and the final figures scraped.
      assert.equal(
        await waitFor(prom, `sum(up{job="kvport"})`, 2, 20_000),
        2,
        `targets: ${prom.log.join("\n")}`,
      );
      const sent = await waitFor(prom, "sum(kvport_pd_sent_chunks_total)", chunks, 20_000);
      assert.equal(sent, chunks, "kvport_pd_sent_chunks_total as Prometheus has it");
      assert.equal(
        await waitFor(prom, "sum(kvport_pd_received_chunks_total)", chunks, 20_000),
        chunks,
        "kvport_pd_received_chunks_total as Prometheus has it",
      );
      const now = Date.now() / 1000;
      const q = async (expr: string) => single(await prom!.query(expr, now), expr);
      assert.equal(await q(`sum(kvport_pd_sent_bytes_total{process="sender"})`), done.bytes);
      assert.equal(await q(`sum(kvport_pd_received_bytes_total{process="receiver"})`), done.bytes);
      assert.equal(
        await q(`sum(kvport_channel_pages_total{process="sender",role="sender",op="WRITE"})`),
        chunks,
      );
      assert.equal(
        await q(`sum(kvport_channel_bytes_total{process="sender",role="sender",op="WRITE"})`),
        done.bytes,
      );
      assert.equal(
        await q(`sum(kvport_agent_transfer_bytes_total{process="sender",op="WRITE"})`),
        done.bytes,
      );
      assert.equal(
        await q(`sum(kvport_pd_send_batches_total{result="ok"})`),
        REQUESTS * Math.ceil(CHUNKS / BATCH),
      );
      assert.equal(
        await q(`sum(kvport_pd_alloc_requests_total{process="receiver",result="ok"})`),
        REQUESTS * Math.ceil(CHUNKS / BATCH),
      );
      assert.equal(
        await q(`sum(kvport_pd_send_seconds_count)`),
        REQUESTS * Math.ceil(CHUNKS / BATCH),
      );
      assert.ok(await q(`sum(kvport_pd_alloc_waits_total)`) > 0, "some AllocRequests waited");
      assert.ok(
        await q(`sum(kvport_agent_posts_total{process="sender",path="mem"})`) > 0,
        "same-host posts took the shared-memory path",
      );
      assert.equal(await q(`sum(kvport_agent_transfers_total{status!="SUCCESS"}) or vector(0)`), 0);

      // A scrape saw the transfer half done: the sender was watched while it sent.
      const range = await prom.queryRange("sum(kvport_pd_sent_chunks_total)", tStart, tDone, 0.5);
      const seen = range.result[0]?.values?.map(([, v]) => Number(v)) ?? [];
      assert.ok(
        seen.some((v) => v > 0 && v < chunks),
        `a value between 0 and ${chunks} while sending; Prometheus saw ${JSON.stringify(seen)}`,
      );

      // Our exposition passes promtool's checks, both processes.
      for (const url of [rxMetrics, txMetrics]) {
        const text = await metricsText(url);
        const { status, output } = promtoolCheck(bins.promtool, text);
        assert.equal(output, "", `promtool check metrics on ${url}`);
        assert.equal(status, 0, `promtool exit status on ${url}`);
      }

      // Every panel query of the dashboard answers with numbers, over the transfer.
      const dash = JSON.parse(
        fs.readFileSync(new URL("../docs/grafana-dashboard.json", import.meta.url), "utf8"),
      );
      let checked = 0;
      for (const panel of dash.panels) {
        for (const t of panel.targets) {
          const expr = String(t.expr).replaceAll("$__rate_interval", RATE_WINDOW);
          const data = await prom.query(expr, tDone);
          assert.equal(data.resultType, "vector", `${panel.title}: ${expr}`);
          assert.ok(data.result.length > 0, `${panel.title}: ${expr} has no series`);
          const texts = data.result.map((r) => r.value![1]);
          assert.ok(
            texts.every((v) => /^(NaN|[+-]?Inf|[-+]?[0-9.]+(e[-+]?[0-9]+)?)$/.test(v)),
            `${panel.title}: ${expr} answered ${JSON.stringify(texts)}`,
          );
          assert.ok(
            texts.map(Number).some(Number.isFinite),
            `${panel.title}: ${expr} gave no finite value: ${JSON.stringify(data.result)}`,
          );
          checked++;
        }
      }
      assert.ok(checked >= 6, `checked ${checked} dashboard queries`);

      // The receiver checked every byte. (No exit codes here: after kill(), Deno's
      // node:child_process reports the signal even when the child handled it and exited 0.)
      tx.kill();
      await tx.exited;
      rx.kill();
      const rxDone = await nextEvent(rx, "done", 30_000);
      assert.equal(rxDone.signal, "SIGTERM");
      assert.equal(rxDone.landed, chunks);
      assert.equal(rxDone.bad, 0);
    } finally {
      for (const c of children) c.kill();
      await Promise.all(children.map((c) => c.exited));
      await prom?.stop();
      cleanup();
    }
  },
);
