/**
 * A real Prometheus server for the tests (Debian's `prometheus` package): our own
 * instance with a temporary configuration, storage directory and free port (never the
 * system service on 9090), scraping targets listed in a file it watches; its HTTP query
 * API; and `promtool check metrics`.
 *
 * @module
 */

import { spawn, spawnSync } from "node:child_process";
import * as fs from "node:fs";
import * as path from "node:path";
import * as readline from "node:readline";
import { freePort } from "../../cli/demo_cmd.ts";

/** Where the binaries are, or why they are not usable. */
export function prometheusBinaries(): { prometheus: string; promtool: string } | string {
  const found: Record<string, string> = {};
  for (const name of ["prometheus", "promtool"]) {
    const r = spawnSync(name, ["--version"], { encoding: "utf8" });
    if (r.error || r.status !== 0) {
      return `${name} not found on PATH (Debian: apt-get install prometheus; .ci/run installs it)`;
    }
    found[name] = name;
  }
  return { prometheus: found.prometheus, promtool: found.promtool };
}

/** One scrape target: `host:port` and the labels Prometheus adds to its series. */
export interface Target {
  /** `host:port` of a `/metrics` endpoint. */
  address: string;
  /** Target labels (e.g. `{ process: "receiver" }`). */
  labels: Record<string, string>;
}

/** A running Prometheus of ours. */
export interface Prometheus {
  /** `http://127.0.0.1:port`. */
  url: string;
  /** Replaces the scrape targets (Prometheus picks the file up within a second). */
  setTargets(targets: Target[]): void;
  /** Runs an instant query; resolves to `data` of the API's answer. */
  query(expr: string, time?: number): Promise<QueryData>;
  /** Runs a range query (times in Unix seconds). */
  queryRange(expr: string, start: number, end: number, step: number): Promise<QueryData>;
  /** Its last log lines. */
  log: string[];
  /** Stops it and removes its files. */
  stop(): Promise<void>;
}

/** `data` of a query answer. */
export interface QueryData {
  /** `vector`, `matrix`, `scalar` or `string`. */
  resultType: string;
  /** The series. */
  result: {
    metric: Record<string, string>;
    value?: [number, string];
    values?: [number, string][];
  }[];
}

async function api(url: string): Promise<QueryData> {
  const res = await fetch(url, { signal: AbortSignal.timeout(10_000) });
  const body = await res.json() as { status: string; data?: QueryData; error?: string };
  if (body.status !== "success" || !body.data) {
    throw new Error(`Prometheus answered ${body.status}: ${body.error ?? "no data"} (${url})`);
  }
  return body.data;
}

/**
 * Starts Prometheus scraping every second, with a temporary configuration and storage in
 * `dir`, on a free port (a port taken between our check and its bind is retried).
 */
export async function startPrometheus(binary: string, dir: string): Promise<Prometheus> {
  const targetsFile = path.join(dir, "targets.json");
  const writeTargets = (targets: Target[]) => {
    const tmp = `${targetsFile}.tmp`;
    fs.writeFileSync(
      tmp,
      JSON.stringify(targets.map((t) => ({ targets: [t.address], labels: t.labels }))),
    );
    fs.renameSync(tmp, targetsFile);
  };
  writeTargets([]);
  const config = path.join(dir, "prometheus.yml");
  fs.writeFileSync(
    config,
    [
      "global:",
      "  scrape_interval: 1s",
      "  scrape_timeout: 900ms",
      "  evaluation_interval: 1s",
      "scrape_configs:",
      "  - job_name: kvport",
      "    file_sd_configs:",
      `      - files: [${JSON.stringify(targetsFile)}]`,
      "        refresh_interval: 1s",
      "",
    ].join("\n"),
  );
  let lastError = "";
  for (let attempt = 0; attempt < 4; attempt++) {
    const port = await freePort();
    const storage = fs.mkdtempSync(path.join(dir, "tsdb-"));
    const child = spawn(binary, [
      `--config.file=${config}`,
      `--storage.tsdb.path=${storage}`,
      `--web.listen-address=127.0.0.1:${port}`,
      "--log.level=warn",
    ], { stdio: ["ignore", "pipe", "pipe"] });
    const log: string[] = [];
    for (const s of [child.stdout!, child.stderr!]) {
      readline.createInterface({ input: s }).on("line", (l: string) => {
        log.push(l);
        if (log.length > 100) log.shift();
      });
    }
    let exited = false;
    const gone = new Promise<void>((resolve) => {
      child.on("exit", () => {
        exited = true;
        resolve();
      });
      child.on("error", (e: Error) => {
        log.push(e.message);
        exited = true;
        resolve();
      });
    });
    const url = `http://127.0.0.1:${port}`;
    const deadline = Date.now() + 30_000;
    let ready = false;
    while (!exited && Date.now() < deadline) {
      try {
        const r = await fetch(`${url}/-/ready`, { signal: AbortSignal.timeout(1000) });
        await r.body?.cancel();
        if (r.ok) {
          ready = true;
          break;
        }
      } catch {
        // not listening yet
      }
      await new Promise((r) => setTimeout(r, 200));
    }
    const stop = async () => {
      if (!exited) child.kill("SIGTERM");
      const t = setTimeout(() => child.kill("SIGKILL"), 5000);
      await gone;
      clearTimeout(t);
    };
    if (ready) {
      return {
        url,
        log,
        setTargets: writeTargets,
        query: (expr, time) =>
          api(
            `${url}/api/v1/query?query=${encodeURIComponent(expr)}` +
              (time === undefined ? "" : `&time=${time}`),
          ),
        queryRange: (expr, start, end, step) =>
          api(
            `${url}/api/v1/query_range?query=${encodeURIComponent(expr)}` +
              `&start=${start}&end=${end}&step=${step}`,
          ),
        stop,
      };
    }
    await stop();
    lastError = log.slice(-5).join("\n");
    if (!/address already in use/i.test(lastError)) break;
  }
  throw new Error(`Prometheus did not start:\n${lastError}`);
}

/** `promtool check metrics` of `text`: its exit code and what it printed. */
export function promtoolCheck(binary: string, text: string): { status: number; output: string } {
  const r = spawnSync(binary, ["check", "metrics"], { input: text, encoding: "utf8" });
  return { status: r.status ?? -1, output: `${r.stdout ?? ""}${r.stderr ?? ""}`.trim() };
}
