/**
 * `deno task bench`: runs every benchmark suite under Deno and under Bun, one process per
 * suite and runtime (so one suite's memory and threads never disturb the next), streams
 * each suite's own lines, and ends with a side-by-side table of every figure and its ratio
 * to the physical limit measured in the same run, then one JSON line with all of them.
 *
 * Usage: `deno run -A bench/main.ts [--only agent,pd,...] [--runtimes deno,bun]`
 *
 * @module
 */
import { spawn } from "node:child_process";
import { existsSync } from "node:fs";
import process from "node:process";
import { parseArgs } from "node:util";

/** The suites, in the order they run; nixl and gpu skip themselves where unavailable. */
const SUITES = [
  "agent",
  "pd",
  "latency",
  "wake",
  "grants",
  "storage",
  "p2p",
  "scale",
  "wire",
  "nixl",
  "gpu",
] as const;

interface Row {
  suite: string;
  runtime: string;
  name: string;
  value: number;
  unit: string;
  ratio?: number;
  limitName?: string;
  pass?: boolean;
}

const root = new URL("..", import.meta.url);

function runtimeCommand(runtime: string, file: string): [string, string[]] | undefined {
  if (runtime === "deno") {
    const deno = new URL("node_modules/deno/deno", root).pathname;
    return [existsSync(deno) ? deno : process.execPath, ["run", "-A", file]];
  }
  const bun = new URL("node_modules/.bin/bun", root).pathname;
  return existsSync(bun) ? [bun, [file]] : undefined;
}

/** Pulls figures out of one JSON line, in the two shapes the suites print. */
function rowsOf(suite: string, runtime: string, line: string): Row[] {
  let parsed: unknown;
  try {
    parsed = JSON.parse(line);
  } catch {
    return [];
  }
  if (typeof parsed !== "object" || parsed === null) return [];
  const obj = parsed as Record<string, unknown>;
  const list = Array.isArray(obj.results) ? obj.results : [obj];
  const rows: Row[] = [];
  for (const r of list as Record<string, unknown>[]) {
    if (typeof r?.name !== "string" || typeof r.value !== "number") continue;
    rows.push({
      suite,
      runtime,
      name: r.name,
      value: r.value,
      unit: String(r.unit ?? ""),
      ratio: typeof r.ratio === "number" ? r.ratio : undefined,
      limitName: typeof r.limitName === "string" ? r.limitName : undefined,
      pass: typeof r.pass === "boolean" ? r.pass : undefined,
    });
  }
  return rows;
}

function runSuite(suite: string, runtime: string): Promise<{ rows: Row[]; code: number }> {
  const file = new URL(`bench/${suite}_bench.ts`, root).pathname;
  const cmd = runtimeCommand(runtime, file);
  if (!existsSync(file) || !cmd) return Promise.resolve({ rows: [], code: 0 });
  console.log(`\n=== ${suite} (${runtime})`);
  return new Promise((resolve) => {
    const child = spawn(cmd[0], cmd[1], { stdio: ["ignore", "pipe", "inherit"] });
    const rows: Row[] = [];
    let pending = "";
    child.stdout.setEncoding("utf8");
    child.stdout.on("data", (chunk: string) => {
      pending += chunk;
      let nl: number;
      while ((nl = pending.indexOf("\n")) >= 0) {
        const line = pending.slice(0, nl);
        pending = pending.slice(nl + 1);
        if (line.startsWith("{")) rows.push(...rowsOf(suite, runtime, line));
        else console.log(line);
      }
    });
    child.on("close", (code) => resolve({ rows, code: code ?? 1 }));
  });
}

const fmt = (v: number) =>
  v >= 100 ? v.toFixed(0) : v >= 10 ? v.toFixed(1) : v >= 1 ? v.toFixed(2) : v.toPrecision(3);

async function main(): Promise<number> {
  const { values } = parseArgs({
    args: process.argv.slice(2),
    options: { only: { type: "string" }, runtimes: { type: "string", default: "deno,bun" } },
  });
  const suites = values.only ? values.only.split(",") : [...SUITES];
  const runtimes = values.runtimes.split(",");
  const rows: Row[] = [];
  let failed = 0;
  for (const suite of suites) {
    for (const runtime of runtimes) {
      const r = await runSuite(suite, runtime);
      rows.push(...r.rows);
      if (r.code !== 0) {
        failed++;
        console.log(`=== ${suite} (${runtime}) exited ${r.code}`);
      }
    }
  }
  console.log("\n| suite | figure | " + runtimes.join(" | ") + " |");
  console.log("| --- | --- | " + runtimes.map(() => "---").join(" | ") + " |");
  const keys = [...new Set(rows.map((r) => `${r.suite}\u0000${r.name}`))];
  for (const key of keys) {
    const [suite, name] = key.split("\u0000");
    const cells = runtimes.map((rt) => {
      const r = rows.find((x) => x.suite === suite && x.name === name && x.runtime === rt);
      if (!r) return "-";
      const ratio = r.ratio === undefined ? "" : ` (${fmt(r.ratio)}x)`;
      const mark = r.pass === false ? " miss" : "";
      return `${fmt(r.value)} ${r.unit}${ratio}${mark}`;
    });
    console.log(`| ${suite} | ${name} | ${cells.join(" | ")} |`);
  }
  console.log(JSON.stringify({ suite: "all", date: new Date().toISOString(), rows }));
  return failed === 0 ? 0 : 1;
}

process.exitCode = await main();
