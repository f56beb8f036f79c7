// The metrics registry on its own (no native library): families, bounded labels, the
// text format and its parser, scrape-time collectors and retired totals, the /metrics
// listener, and the text `kvport stats` shows.
import { test } from "./helpers/skip.ts";
import assert from "node:assert/strict";
import {
  collectFrom,
  formatExposition,
  MetricsError,
  MetricsRegistry,
  parseExposition,
  quantile,
  serveMetrics,
  sumOf,
  weakly,
} from "../src/metrics/mod.ts";
import { formatStats, metricsUrl } from "../cli/stats_cmd.ts";

test("metrics: counters, gauges and histograms in the text format, label values escaped", async () => {
  const r = new MetricsRegistry();
  const c = r.counter({ name: "t_requests_total", help: "Requests.\nTwo lines", labels: ["op"] });
  c.labels("WRITE").inc(3);
  c.labels('a"b\\c\nd').inc();
  c.labels("WRITE").inc(-5); // counters never go down
  r.gauge({ name: "t_in_flight", help: "Running." }).set(2.5);
  const h = r.histogram({ name: "t_seconds", help: "Latency.", buckets: [0.1, 1] });
  for (const v of [0.05, 0.5, 0.5, 7]) h.observe(v);
  const text = await r.metrics();
  const want = [
    "# HELP kvport_metrics_collector_errors_total Collectors that failed during a scrape " +
    "(their figures were left out of it).",
    "# TYPE kvport_metrics_collector_errors_total counter",
    "kvport_metrics_collector_errors_total 0",
    "# HELP t_in_flight Running.",
    "# TYPE t_in_flight gauge",
    "t_in_flight 2.5",
    "# HELP t_requests_total Requests.\\nTwo lines",
    "# TYPE t_requests_total counter",
    't_requests_total{op="WRITE"} 3',
    't_requests_total{op="a\\"b\\\\c\\nd"} 1',
    "# HELP t_seconds Latency.",
    "# TYPE t_seconds histogram",
    't_seconds_bucket{le="0.1"} 1',
    't_seconds_bucket{le="1"} 3',
    't_seconds_bucket{le="+Inf"} 4',
    "t_seconds_sum 8.05",
    "t_seconds_count 4",
    "",
  ].join("\n");
  assert.equal(text, want);
  assert.equal(r.contentType, "text/plain; version=0.0.4; charset=utf-8");
});

test("metrics: the parser reads back what the registry writes (labels, histograms, +Inf)", async () => {
  const r = new MetricsRegistry();
  r.counter({ name: "p_bytes_total", help: "B.", labels: ["peer", "op"] }).labels("x,y", "W")
    .inc(1e12);
  const h = r.histogram({ name: "p_seconds", help: "S.", labels: ["op"], buckets: [1, 2] });
  h.labels("READ").observe(1.5);
  r.gauge({ name: "p_neg", help: "N." }).set(-Infinity);
  const snap = await r.collect();
  const parsed = parseExposition(await r.metrics());
  assert.deepEqual(parsed, snap);
  const hist = parsed.find((f) => f.name === "p_seconds")!;
  assert.equal(hist.type, "histogram");
  assert.equal(sumOf(hist, { op: "READ" }), 1);
  assert.equal(sumOf(parsed.find((f) => f.name === "p_bytes_total"), { peer: "x,y" }), 1e12);
  assert.throws(() => parseExposition("a_total{op=WRITE} 1"), /line 1: malformed labels/);
  assert.throws(() => parseExposition("a_total 1 2 3"), /line 1/);
  assert.throws(() => parseExposition("\n# TYPE a widget"), /line 2: unknown type/);
});

test("metrics: label values are bounded per label, series per family; the rest is 'other'", async () => {
  const r = new MetricsRegistry();
  const c = r.counter({
    name: "b_total",
    help: "B.",
    labels: ["peer", "op"],
    maxLabelValues: 3,
  });
  for (let i = 0; i < 100; i++) c.labels(`peer-${i}`, "WRITE").inc();
  const snap = (await r.collect()).find((f) => f.name === "b_total")!;
  assert.deepEqual(
    snap.samples.map((s) => [s.labels.peer, "value" in s ? s.value : 0]),
    [["peer-0", 1], ["peer-1", 1], ["peer-2", 1], ["other", 97]],
  );
  const few = r.counter({ name: "s_total", help: "S.", labels: ["k"], maxSeries: 5 });
  for (let i = 0; i < 20; i++) few.labels(String(i)).inc();
  const s = (await r.collect()).find((f) => f.name === "s_total")!;
  assert.equal(s.samples.length, 6); // 5, then one "other" for everything after
  assert.equal(sumOf(s, { k: "other" }), 15);
  assert.equal(sumOf(s), 20);
});

test("metrics: names and labels follow Prometheus's rules; a family is declared once", () => {
  const r = new MetricsRegistry();
  assert.throws(() => r.counter({ name: "requests", help: "x" }), /ends in _total/);
  assert.throws(() => r.gauge({ name: "queue_total", help: "x" }), /only counters/);
  assert.throws(() => r.counter({ name: "9bad_total", help: "x" }), MetricsError);
  assert.throws(
    () => r.counter({ name: "a_total", help: "x", labels: ["__x"] }),
    /label name "__x"/,
  );
  assert.throws(
    () => r.histogram({ name: "h_seconds", help: "x", labels: ["le"] }),
    /bucket label/,
  );
  assert.throws(
    () => r.histogram({ name: "h2_seconds", help: "x", buckets: [1, 1] }),
    /strictly increasing/,
  );
  const a = r.counter({ name: "a_total", help: "x", labels: ["op"] });
  assert.equal(r.counter({ name: "a_total", help: "x", labels: ["op"] }), a);
  assert.throws(
    () => r.counter({ name: "a_total", help: "x", labels: ["peer"] }),
    /already a counter with labels \[op\]/,
  );
  assert.throws(() => r.gauge({ name: "a_total", help: "x" }), MetricsError);
  assert.throws(() => a.labels(), /1 label value\(s\) expected \(op\), got 0/);
});

test("metrics: collectors add up, a failing one is left out and counted; retired totals stay", async () => {
  const r = new MetricsRegistry();
  const live = { served: 4, queued: 2 };
  const a = collectFrom(r, () => live, (s, sink) => {
    sink.counter("c_served_total", "Served.", { pool: "p" }, s.served);
    sink.gauge("c_queued", "Queued.", {}, s.queued);
  });
  collectFrom(r, () => ({ served: 6 }), (s, sink) => {
    sink.counter("c_served_total", "Served.", { pool: "p" }, s.served);
  });
  r.addCollector(() => {
    throw new Error("broken");
  });
  let snap = await r.collect();
  assert.equal(sumOf(snap.find((f) => f.name === "c_served_total")), 10);
  assert.equal(sumOf(snap.find((f) => f.name === "c_queued")), 2);
  snap = await r.collect();
  assert.equal(sumOf(snap.find((f) => f.name === "kvport_metrics_collector_errors_total")), 1);

  live.served = 9; // counted after the last scrape: retire() reads it once more
  await a.retire();
  await a.retire();
  snap = await r.collect();
  assert.equal(sumOf(snap.find((f) => f.name === "c_served_total")), 15, "9 retired + 6 live");
  assert.equal(snap.find((f) => f.name === "c_queued"), undefined, "a retired gauge is gone");

  const off = new MetricsRegistry({ enabled: false });
  let reads = 0;
  const none = collectFrom(off, () => reads++, () => {});
  await off.collect();
  await none.retire();
  assert.equal(reads, 0, "a disabled registry collects nothing");
});

test("metrics: a source whose read answers undefined (collected) keeps its last counters, then stops", async () => {
  const r = new MetricsRegistry();
  let gone = false;
  let reads = 0;
  collectFrom(r, () => {
    reads++;
    return gone ? undefined : { served: 3 };
  }, (s, sink) => {
    sink.counter("g_served_total", "Served.", {}, s.served);
    sink.gauge("g_live", "Live.", {}, 1);
  });
  assert.equal(sumOf((await r.collect()).find((f) => f.name === "g_live")), 1);
  gone = true;
  await r.collect();
  const snap = await r.collect();
  assert.equal(sumOf(snap.find((f) => f.name === "g_served_total")), 3, "kept as retired");
  assert.equal(snap.find((f) => f.name === "g_live"), undefined);
  const before = reads;
  await r.collect();
  assert.equal(reads, before, "no longer read");
  // weakly() reads through a WeakRef while the target lives.
  const target = { n: 5 };
  assert.equal(weakly(target, (t) => t.n)(), 5);
});

test("metrics: histogram quantiles as histogram_quantile estimates them", () => {
  const b: [number, number][] = [[0.1, 10], [0.2, 90], [1, 100], [Infinity, 100]];
  assert.ok(Math.abs(quantile(b, 0.5) - 0.15) < 1e-12);
  assert.ok(Math.abs(quantile(b, 0.99) - 0.92) < 1e-12);
  assert.ok(Number.isNaN(quantile([[1, 0], [Infinity, 0]], 0.5)));
  assert.equal(quantile([[1, 0], [Infinity, 5]], 0.5), 1, "in the +Inf bucket: its lower edge");
});

test("metrics: serveMetrics answers GET /metrics on the host asked, 404 elsewhere, closes", async () => {
  const r = new MetricsRegistry();
  r.counter({ name: "srv_total", help: "S." }).inc(7);
  const server = await serveMetrics({ port: 0, registry: r });
  try {
    assert.equal(server.host, "127.0.0.1");
    assert.equal(server.url, `http://127.0.0.1:${server.port}/metrics`);
    const res = await fetch(server.url);
    assert.equal(res.status, 200);
    assert.equal(res.headers.get("content-type"), r.contentType);
    const text = await res.text();
    assert.match(text, /^srv_total 7$/m);
    const other = await fetch(`http://127.0.0.1:${server.port}/nope`);
    assert.equal(other.status, 404);
    await other.body?.cancel();
    const post = await fetch(server.url, { method: "POST" });
    assert.equal(post.status, 405);
    await post.body?.cancel();
    await assert.rejects(
      serveMetrics({ port: server.port, registry: r }),
      new RegExp(`cannot serve metrics on 127\\.0\\.0\\.1:${server.port}`),
    );
    await assert.rejects(serveMetrics({ port: 70000 }), /0\.\.65535, got 70000/);
  } finally {
    await server.close();
    await server.close();
  }
  await assert.rejects(fetch(server.url), "closed: nothing listens any more");
});

test("metrics: a scrape that outlasts timeoutMs is answered 503, not left open", async () => {
  const r = new MetricsRegistry();
  r.addCollector(() => new Promise<void>((resolve) => setTimeout(resolve, 500)));
  await using server = await serveMetrics({ port: 0, registry: r, timeoutMs: 50 });
  const res = await fetch(server.url);
  assert.equal(res.status, 503);
  assert.match(await res.text(), /more than 50 ms/);
  await new Promise((resolve) => setTimeout(resolve, 500)); // the slow collector ends
});

test("kvport stats: the URL from --url or --port; the human view with quantiles and rates", () => {
  assert.equal(metricsUrl("127.0.0.1:9400", undefined), "http://127.0.0.1:9400/metrics");
  assert.equal(metricsUrl(undefined, "9400", "::1"), "http://[::1]:9400/metrics");
  assert.equal(metricsUrl("http://h:1/custom", undefined), "http://h:1/custom");
  assert.throws(() => metricsUrl(undefined, undefined), /--url \(or --port\) is required/);
  assert.throws(() => metricsUrl("ftp://h:1", undefined), /http\(s\) URL/);
  assert.throws(() => metricsUrl("h:1", "2"), /not both/);
  const families = parseExposition(
    [
      "# HELP kvport_x_bytes_total Bytes.",
      "# TYPE kvport_x_bytes_total counter",
      'kvport_x_bytes_total{peer="a"} 3221225472',
      "# TYPE kvport_x_seconds histogram",
      'kvport_x_seconds_bucket{le="0.001"} 50',
      'kvport_x_seconds_bucket{le="0.01"} 100',
      'kvport_x_seconds_bucket{le="+Inf"} 100',
      "kvport_x_seconds_sum 0.3",
      "kvport_x_seconds_count 100",
      "# TYPE kvport_empty gauge",
    ].join("\n"),
  );
  const before = parseExposition(
    '# TYPE kvport_x_bytes_total counter\nkvport_x_bytes_total{peer="a"} 1073741824\n',
  );
  const text = formatStats(families, { families: before, seconds: 2 });
  assert.match(text, /\{peer="a"\} {2}3221225472 \(3\.0 GiB\) {2}\(1073741824 \(1\.0 GiB\)\/s\)/);
  assert.match(text, /count 100, mean 3\.00 ms, p50 1\.00 ms, p99 9\.82 ms/);
  assert.doesNotMatch(text, /kvport_empty/, "families without series are left out");
});

test("metrics: formatExposition of nothing is empty; a family without series keeps HELP/TYPE", () => {
  assert.equal(formatExposition([]), "");
  assert.equal(
    formatExposition([{ name: "e_total", help: "E.", type: "counter", samples: [] }]),
    "# HELP e_total E.\n# TYPE e_total counter\n",
  );
});
