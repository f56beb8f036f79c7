/**
 * Two-process PD test harness: LMCache-style configurations in a temporary directory and
 * `kvport pd-receiver` children.
 *
 * @module
 */

import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { type Child, freePort, nextEvent, spawnKvport } from "../../cli/demo_cmd.ts";

export { type Child, freePort, nextEvent, spawnKvport };

/** A temporary directory removed by `cleanup`. */
export function tempDir(prefix: string): { dir: string; cleanup: () => void } {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), prefix));
  return { dir, cleanup: () => fs.rmSync(dir, { recursive: true, force: true }) };
}

/** Writes a decoder configuration (LMCache keys) and returns its path. */
export function decoderConfig(
  dir: string,
  o: { initPorts: number[]; allocPorts: number[]; bufferSize: number; allocTimeoutS?: number },
): string {
  const file = path.join(dir, `decoder-${o.initPorts.join("-")}.yaml`);
  fs.writeFileSync(
    file,
    [
      "enable_pd: true",
      'transfer_channel: "nixl"',
      'pd_role: "receiver"',
      'pd_peer_host: "127.0.0.1"',
      `pd_peer_init_port: [${o.initPorts.join(", ")}]`,
      `pd_peer_alloc_port: [${o.allocPorts.join(", ")}]`,
      `pd_buffer_size: ${o.bufferSize}`,
      'pd_buffer_device: "cpu"',
      `pd_allocation_timeout_sec: ${o.allocTimeoutS ?? 10}`,
      "nixl_backends: [UCX]",
      "",
    ].join("\n"),
  );
  return file;
}

/** Starts `kvport pd-receiver` and waits for its ready line. */
export async function startReceiver(
  config: string,
  shape: string,
  extra: string[] = [],
): Promise<{ child: Child; ready: Record<string, unknown> }> {
  const child = spawnKvport("pd-receiver", [
    "pd-receiver",
    "--config",
    config,
    "--kv-shape",
    shape,
    "--json",
    ...extra,
  ]);
  const ready = await nextEvent(child, "ready", 30_000);
  return { child, ready };
}
