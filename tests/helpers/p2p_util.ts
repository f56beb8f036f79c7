/**
 * Helpers of the P2P tests: instances on an in-process registry, synthetic documents
 * whose every byte can be checked, waiting for asynchronous reports.
 *
 * @module
 */

import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import {
  MockMemoryChannel,
  P2PBackend,
  type P2PBackendOptions,
  type P2PFetchResult,
  P2PRegistry,
} from "../../mod.ts";
import { RepSocket } from "../../src/channel/wire/mod.ts";
import { RegistryClient } from "../../src/p2p/registry_client.ts";
import { checkPattern, fillPattern } from "../../src/pd/pattern.ts";
import { crc32 } from "../../src/storage/checksum.ts";
import { p2pDemoKey } from "../../cli/p2p_cmd.ts";

export { p2pDemoKey };

/** Keys of chunks `from..from+count-1` of document `doc`. */
export function docKeys(doc: string, count: number, from = 0): string[] {
  return Array.from({ length: count }, (_, i) => p2pDemoKey(doc, from + i));
}

/** A registry on loopback, any free ports. */
export function startRegistry(heartbeatTimeoutMs = 30_000): Promise<P2PRegistry> {
  return P2PRegistry.listen({
    pullUrl: "127.0.0.1:0",
    replyUrl: "127.0.0.1:0",
    heartbeatTimeoutMs,
  });
}

/**
 * Tells `registry` that instance `id` (worker 0, peer `h:1`) holds `keys` in its CPU
 * backend, as its RegisterMsg and one BatchedKVOperationMsg would.
 *
 * @example
 * ```ts
 * import { reportHolder, startRegistry } from "./p2p_util.ts";
 * await using registry = await startRegistry();
 * reportHolder(registry, "holder", [1n, 2n]);
 * ```
 */
export function reportHolder(registry: P2PRegistry, id: string, keys: readonly bigint[]): void {
  registry.report({
    type: "RegisterMsg",
    instance_id: id,
    worker_id: 0,
    ip: "h",
    port: 1,
    peer_init_url: "h:1",
  });
  registry.report({
    type: "BatchedKVOperationMsg",
    instance_id: id,
    worker_id: 0,
    location: "LocalCPUBackend",
    operations: keys.map((key, i) => ({ op_type: "admit" as const, key, seq_num: i })),
  });
}

/** An instance on loopback reporting to `registry`. */
export function instance(
  registry: { pullUrl: string; replyUrl: string } | null,
  instanceId: string,
  extra: Partial<P2PBackendOptions> = {},
): Promise<P2PBackend> {
  return P2PBackend.create({
    instanceId,
    host: "127.0.0.1",
    initPort: 0,
    lookupPort: 0,
    pageSize: 64 * 1024,
    bufferSize: 32 * 64 * 1024,
    channelType: "mock_memory",
    registryPullUrl: registry?.pullUrl ?? null,
    registryReplyUrl: registry?.replyUrl ?? null,
    heartbeatIntervalMs: null,
    lookupRecvTimeoutMs: 5000,
    lookupSendTimeoutMs: 2000,
    handshakeTimeoutMs: 2000,
    ...extra,
  });
}

/** Stores chunks of `doc` (content from `fillPattern`) and flushes the reports. */
export async function storeDoc(
  p2p: P2PBackend,
  doc: string,
  count: number,
  from = 0,
): Promise<string[]> {
  const keys = docKeys(doc, count, from);
  for (const k of keys) await p2p.store(k, (page) => fillPattern(k, page));
  await p2p.flushReports();
  return keys;
}

/** Looks `keys` up until the registry promises `n` chunks (reports are asynchronous). */
export async function waitForHits(
  p2p: P2PBackend,
  keys: readonly string[],
  n: number,
  timeoutMs = 5000,
): Promise<void> {
  const end = performance.now() + timeoutMs;
  let last = -1;
  while (performance.now() < end) {
    last = (await p2p.lookup(keys)).hitChunks;
    if (last === n) return;
    await new Promise((r) => setTimeout(r, 10));
  }
  throw new Error(`the registry promised ${last} chunk(s), not ${n}, within ${timeoutMs} ms`);
}

/** Waits until `cond()` holds, polling every 10 ms. */
export async function until(cond: () => boolean, timeoutMs: number, what: string): Promise<void> {
  const end = performance.now() + timeoutMs;
  while (!cond()) {
    if (performance.now() > end) throw new Error(`timed out after ${timeoutMs} ms: ${what}`);
    await new Promise((r) => setTimeout(r, 10));
  }
}

/**
 * Checks every byte of the fetched pages against their keys' content; returns the number
 * of bad chunks and the CRC-32 over the pages, and releases the pages.
 */
export function checkFetched(p2p: P2PBackend, r: P2PFetchResult): { bad: number; crc: number } {
  let bad = 0;
  let crc = 0;
  r.pages.forEach((page, i) => {
    const view = p2p.channel.pages[page];
    if (checkPattern(r.keys[i], view) >= 0) bad++;
    crc = crc32(view, crc);
  });
  p2p.release(r.pages);
  return { bad, crc };
}

/** The CRC-32 of the chunks `keys` as the holder has them. */
export function crcOf(p2p: P2PBackend, keys: readonly string[]): number {
  let crc = 0;
  for (const k of keys) crc = crc32(p2p.get(k)!, crc);
  return crc;
}

/** A temporary directory removed by `cleanup`. */
export function tempDir(prefix: string): { dir: string; cleanup: () => void } {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), prefix));
  return { dir, cleanup: () => fs.rmSync(dir, { recursive: true, force: true }) };
}

/** Writes an LMCache-style P2P instance configuration; returns its path. */
export function instanceConfig(
  dir: string,
  o: {
    id: string;
    initPort: number;
    lookupPort: number;
    workerPort: number;
    pull: string;
    reply: string;
    bufferBytes: number;
    channel?: string;
    /** `extra_config.kvport_agent_params` (engine parameters of the instance's agent). */
    agentParams?: Readonly<Record<string, string>>;
  },
): string {
  const params = Object.entries(o.agentParams ?? {});
  const file = path.join(dir, `${o.id}.yaml`);
  fs.writeFileSync(
    file,
    [
      "chunk_size: 256",
      `max_local_cpu_size: ${(o.bufferBytes / 2 ** 30).toFixed(9)}`,
      "enable_p2p: true",
      'p2p_host: "127.0.0.1"',
      `p2p_init_ports: [${o.initPort}]`,
      `p2p_lookup_ports: [${o.lookupPort}]`,
      `transfer_channel: "${o.channel ?? "nixl"}"`,
      "nixl_backends: [UCX]",
      "enable_controller: true",
      `lmcache_instance_id: "${o.id}"`,
      `controller_pull_url: "${o.pull}"`,
      `controller_reply_url: "${o.reply}"`,
      `lmcache_worker_ports: [${o.workerPort}]`,
      "lmcache_worker_heartbeat_time: 1",
      "lmcache_worker_heartbeat_delay_time: 0",
      "extra_config:",
      "  p2p_socket_recv_timeout_ms: 5000",
      "  p2p_socket_send_timeout_ms: 2000",
      "  p2p_max_retry_count: 3",
      ...(params.length > 0
        ? ["  kvport_agent_params:", ...params.map(([k, v]) => `    ${k}: "${v}"`)]
        : []),
      "",
    ].join("\n"),
  );
  return file;
}

/**
 * A P2P holder that completes the handshake but never answers a lookup (its lookup socket
 * takes requests and lets them hang): `initUrl` to fetch from; dispose to close both.
 */
export async function silentHolder(): Promise<{ initUrl: string } & AsyncDisposable> {
  const lookup = await RepSocket.bind("tcp://127.0.0.1:0");
  lookup.serve(() => new Promise<Uint8Array>(() => {})); // never answers
  const fake = await MockMemoryChannel.create({
    role: "both",
    pageSize: 64 * 1024,
    pageCount: 4,
    peerInitUrl: "127.0.0.1:0",
  });
  fake.onSideMessage(() => ({
    type: "P2PInitSideRetMsg",
    peer_lookup_url: `127.0.0.1:${lookup.port}`,
  }));
  return {
    initUrl: fake.initUrl!,
    async [Symbol.asyncDispose]() {
      await fake.close();
      await lookup.close();
    },
  };
}

/**
 * A registry client that only asks (no heartbeats, no reports of its own), for tests
 * of the lookup round trip.
 *
 * @example
 * ```ts
 * import { askingClient, startRegistry } from "./p2p_util.ts";
 * const registry = await startRegistry();
 * const client = askingClient(registry.replyUrl);
 * console.log(await client.lookup([1n])); // no holder yet
 * await client.close();
 * await registry.close();
 * ```
 */
export function askingClient(replyUrl: string): RegistryClient {
  return new RegistryClient({
    pullUrl: null,
    replyUrl,
    instanceId: "asker",
    workerId: 0,
    ip: "h",
    port: 0,
    peerInitUrl: "a:1",
    location: "LocalCPUBackend",
    heartbeatIntervalMs: null,
    heartbeatDelayMs: 0,
    requestTimeoutMs: 5000,
    sendTimeoutMs: 5000,
    snapshot: () => [],
  });
}
