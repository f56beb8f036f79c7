/**
 * What page grants cost at the channel level: the PD end-to-end transfer of
 * `bench/pd_bench.ts` (prefiller here, decoder a `kvport pd-receiver` process) on the
 * same-host path (`nixl_backends: [UCX]`) and over TCP (`[TCP]`), with page grants on
 * (the default: the decoder grants the sender each AllocResponse's pages, the engine
 * checks every piece, the grant is revoked when the pages land) and off
 * (`extra_config.kvport_page_grants: false`), alternating on/off runs in the same process
 * and taking the median. Each figure is the GB/s with grants as a ratio to the same
 * transfer without them, measured in the same run (goal >= 0.98: grants cost under 2%),
 * with the ratio to memcpy alongside; then one JSON line.
 *
 * ```sh
 * deno run -A bench/grants_bench.ts [--rounds 4] [--sizes 8,64] [--chunk-mib 4]
 * bun bench/grants_bench.ts
 * ```
 *
 * @module
 */
import process from "node:process";
import { parseArgs } from "node:util";
import { Report } from "./lib.ts";
import { type PdBenchResult, runPdBench } from "./pd_bench.ts";

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  return s.length % 2 ? s[(s.length - 1) / 2] : (s[s.length / 2 - 1] + s[s.length / 2]) / 2;
}

/**
 * Runs the comparison and reports it.
 *
 * @example
 * ```ts
 * import { runGrantsBench } from "./grants_bench.ts";
 * await runGrantsBench({ rounds: 2, sizes: [8], chunkBytes: 1 << 20 });
 * ```
 */
export async function runGrantsBench(
  options: { rounds?: number; sizes?: number[]; chunkBytes?: number } = {},
): Promise<void> {
  const rounds = options.rounds ?? 4;
  const sizes = options.sizes ?? [8, 64];
  const chunkBytes = options.chunkBytes ?? 4 * 2 ** 20;
  const report = new Report("grants");
  console.log(
    `grants bench: PD ${sizes.join(", ")} chunk(s) of ${chunkBytes / 2 ** 20} MiB, ` +
      `${rounds} alternating rounds with and without page grants per transport`,
  );
  for (const [transport, backends] of [["same_host", ["UCX"]], ["tcp", ["TCP"]]] as const) {
    const runs: Record<"on" | "off", PdBenchResult[][]> = { on: [], off: [] };
    for (let r = 0; r < rounds; r++) {
      // Alternate which goes first, so a drift of the machine hits both alike.
      for (const g of r % 2 === 0 ? [true, false] : [false, true]) {
        runs[g ? "on" : "off"].push(
          await runPdBench({
            sizes,
            chunkBytes,
            pageGrants: g,
            backends: [...backends],
            quiet: true,
          }),
        );
      }
    }
    sizes.forEach((n, i) => {
      const on = median(runs.on.map((rs) => rs[i].gbps));
      const off = median(runs.off.map((rs) => rs[i].gbps));
      const memcpy = median([...runs.on, ...runs.off].map((rs) => rs[i].memcpyGbps));
      const spread = (xs: number[]) => (Math.max(...xs) - Math.min(...xs)) / median(xs);
      const s = report.add({
        name: `grants_pd_${transport}_${n}x${(chunkBytes / 2 ** 20).toFixed(0)}MiB`,
        value: on,
        unit: "GB/s",
        limit: off,
        limitName: "the same transfer without page grants",
        goal: { op: ">=", ratio: 0.98 },
        extra: {
          engine: runs.on[0][i].engine,
          withoutGbps: off,
          memcpyGbps: memcpy,
          ratioToMemcpy: on / memcpy,
          rounds,
          spreadWith: spread(runs.on.map((rs) => rs[i].gbps)),
          spreadWithout: spread(runs.off.map((rs) => rs[i].gbps)),
        },
      });
      console.log(
        `  (${transport}, ${n} chunk(s): without grants ${off.toFixed(2)} GB/s; with ` +
          `${(on / memcpy).toFixed(2)} x memcpy ${memcpy.toFixed(2)} GB/s; run-to-run spread ` +
          `${(100 * (s.extra!.spreadWith as number)).toFixed(0)}% / ` +
          `${(100 * (s.extra!.spreadWithout as number)).toFixed(0)}%)`,
      );
    });
  }
  report.finish({ note: "ratio = GB/s with page grants / without, same run (median of rounds)" });
}

if (import.meta.main) {
  const { values } = parseArgs({
    args: process.argv.slice(2),
    options: {
      rounds: { type: "string" },
      sizes: { type: "string" },
      "chunk-mib": { type: "string" },
    },
  });
  await runGrantsBench({
    rounds: values.rounds ? Number(values.rounds) : undefined,
    sizes: values.sizes?.split(",").map(Number),
    chunkBytes: values["chunk-mib"] ? Number(values["chunk-mib"]) * 2 ** 20 : undefined,
  });
}
