/**
 * A running `native/build/nixl-raw --serve` (bench/nixl_raw.cpp): two processes with one
 * NIXL agent each and nothing of ours in between, kept up for the whole benchmark and
 * driven one command at a time, so that `bench/nixl_bench.ts` can alternate short rounds
 * of raw NIXL with rounds of the library (a load on the shared machine then hits both).
 *
 * ```ts
 * import { startRawNixl } from "./raw_nixl.ts";
 * const raw = await startRawNixl({ backend: "UCX", buffer: "private", size: 1 << 26 });
 * if (raw) {
 *   console.log(await raw.bandwidth({ page: 4096, count: 64, scattered: false }, 300, "backoff"));
 *   console.log(await raw.latency(2000, 200, "backoff"));
 *   await raw.close();
 * }
 * ```
 * @module
 */
import { spawn } from "node:child_process";
import { existsSync } from "node:fs";
import { createInterface } from "node:readline";
import process from "node:process";

/** Where `make -C native` puts the program (built only when NIXL is found);
 * `KVPORT_NIXL_RAW` names another build. */
export const RAW_TOOL: string = process.env.KVPORT_NIXL_RAW ||
  new URL("../native/build/nixl-raw", import.meta.url).pathname;

/** How raw NIXL waits: `backoff` polls the way the library does (the yardstick),
 * `spin` polls `getXferStatus` back to back. */
export type RawWait = "spin" | "backoff";

/** A request shape: `count` pages of `page` bytes, the peer's in reverse order when
 * `scattered`. */
export interface RawShape {
  page: number;
  count: number;
  scattered: boolean;
}

/** One bandwidth round. */
export interface RawBandwidth {
  name: string;
  gbps: number;
  requests: number;
  ms: number;
}

/** One latency round (4 KiB WRITE, post to completion). */
export interface RawLatency {
  p50_us: number;
  p99_us: number;
  samples: number;
}

/** The served program. */
export interface RawNixl {
  /** WRITEs of `shape` back to back for at least `ms`. */
  bandwidth(shape: RawShape, ms: number, wait: RawWait): Promise<RawBandwidth>;
  /** `n` timed 4 KiB WRITEs after `warm` untimed ones. */
  latency(n: number, warm: number, wait: RawWait): Promise<RawLatency>;
  /** Ends the program (end of its input) and waits for it. */
  close(): Promise<void>;
}

/**
 * Starts `nixl-raw --serve`; `undefined` (with the reason printed) when the program is
 * not built or does not come up within `readyMs`.
 */
export async function startRawNixl(
  opts: { backend: string; buffer: string; size: number; readyMs?: number },
): Promise<RawNixl | undefined> {
  if (!existsSync(RAW_TOOL)) {
    console.log(`raw NIXL skipped: ${RAW_TOOL} not built (make -C native with NIXL found)`);
    return undefined;
  }
  const args = ["--serve", "--backend", opts.backend, "--buffer", opts.buffer];
  args.push("--size", String(opts.size));
  const child = spawn(RAW_TOOL, args, { stdio: ["pipe", "pipe", "inherit"] });
  const lines = createInterface({ input: child.stdout! });
  const queue: ((v: Record<string, unknown> | Error) => void)[] = [];
  let exitCode: number | null | undefined;
  const exited = new Promise<void>((resolve) =>
    child.on("exit", (c) => {
      exitCode = c;
      lines.close();
      for (const w of queue.splice(0)) w(new Error(`nixl-raw exited (${c})`));
      resolve();
    })
  );
  lines.on("line", (line) => {
    // Ours are JSON objects; UCX may log to stdout too (shown, never taken as a reply).
    if (!line.startsWith("{")) return void console.log(`[nixl-raw] ${line}`);
    queue.shift()?.(JSON.parse(line));
  });
  const next = (timeoutMs: number) =>
    new Promise<Record<string, unknown>>((resolve, reject) => {
      const t = setTimeout(
        () => reject(new Error(`nixl-raw: no reply in ${timeoutMs} ms`)),
        timeoutMs,
      );
      queue.push((v) => {
        clearTimeout(t);
        if (v instanceof Error) reject(v);
        else if (typeof v.error === "string") reject(new Error(`nixl-raw: ${v.error}`));
        else resolve(v);
      });
    });
  const command = (line: string, timeoutMs: number) => {
    if (exitCode !== undefined) return Promise.reject(new Error(`nixl-raw exited (${exitCode})`));
    const reply = next(timeoutMs);
    child.stdin!.write(line + "\n");
    return reply;
  };
  try {
    await next(opts.readyMs ?? 60_000);
  } catch (e) {
    console.log(`raw NIXL skipped: nixl-raw ${args.join(" ")}: ${(e as Error).message}`);
    child.kill("SIGKILL");
    await exited;
    return undefined;
  }
  return {
    async bandwidth(s, ms, wait) {
      const r = await command(
        `bw ${s.page} ${s.count} ${s.scattered ? "s" : "c"} ${ms} ${wait}`,
        ms + 120_000,
      );
      return r as unknown as RawBandwidth;
    },
    async latency(n, warm, wait) {
      const r = await command(`lat ${n} ${warm} ${wait}`, 120_000);
      return r as unknown as RawLatency;
    },
    async close() {
      child.stdin!.end();
      const t = setTimeout(() => child.kill("SIGKILL"), 10_000);
      await exited;
      clearTimeout(t);
    },
  };
}
