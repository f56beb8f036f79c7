/**
 * Helpers of the tests that need a real NIXL (`tests/nixl_*_test.ts`): whether the nixl
 * engine is available (else the reason they skip), UCX kept on loopback, and a peer
 * process on the nixl engine (`nixl_peer.ts`) driven by JSON lines.
 *
 * These tests run where NIXL is installed (see docs/NIXL.md) and skip, saying why,
 * everywhere else (CI has no NIXL).
 *
 * @module
 */
import type { ChildProcess } from "node:child_process";
import process from "node:process";
import { Buffer } from "node:buffer";
import { nativeLibrary, probeEngine } from "../../src/agent.ts";
import { type PeerReply, startPeerProcess } from "./peer_process.ts";
import { skipFor } from "./skip.ts";

// UCX opens TCP interfaces on every network device unless told otherwise: keep the tests
// on loopback (a user's own UCX_NET_DEVICES wins). Set before any agent exists, so UCX
// (and the peers spawned from here, which inherit it) read it at start-up.
if (!process.env.UCX_NET_DEVICES) process.env.UCX_NET_DEVICES = "lo";
// NIXL logs warnings to stderr by default; the tests provoke some on purpose.
if (!process.env.NIXL_LOG_LEVEL) process.env.NIXL_LOG_LEVEL = "ERROR";

/**
 * Why the NIXL tests are skipped (`undefined` when the nixl engine is available): NIXL
 * missing is a "needs NIXL" skip; a native library that does not load is not (under CI
 * those tests fail, see skip.ts).
 */
export const nixlSkip: string | undefined = await (async () => {
  try {
    await nativeLibrary();
  } catch (e) {
    return `libkvport.so not loadable (make -C native): ${String(e).split("\n")[0]}`;
  }
  try {
    const p = await probeEngine("nixl");
    if (!p.available) return skipFor("needs NIXL", p.reason || "no reason given");
    return undefined;
  } catch (e) {
    return `kvp_engine_probe("nixl") failed: ${String(e).split("\n")[0]}`;
  }
})();

/** Prints one line saying why a file's NIXL tests are skipped. */
export function reportSkip(file: string): void {
  if (nixlSkip) console.log(`${file} skipped: ${nixlSkip}`);
}

/** A running peer. */
export interface NixlPeer {
  name: string;
  pid: number;
  meta: Uint8Array;
  address: bigint;
  size: number;
  info: Record<string, string>;
  child: ChildProcess;
  /** Sends a command and resolves to the reply (rejects on `ok: false`). */
  call(cmd: string, args?: Record<string, unknown>, timeoutMs?: number): Promise<PeerReply>;
  /** Resolves when the process has exited. */
  exited: Promise<number | null>;
  /** Asks the peer to exit, then kills it after a grace period. */
  stop(): Promise<void>;
  /** Kills it at once (SIGKILL). */
  kill(): Promise<void>;
}

/** A reply line. */
export type { PeerReply };

/** Options of a peer. */
export interface NixlPeerOptions {
  name: string;
  engine?: "nixl" | "builtin" | "auto";
  backends?: string[];
  params?: Record<string, string>;
  size: number;
  /** The kind of DRAM (`allocate`'s `shared`); default the engine's. */
  shared?: boolean;
}

const script = new URL("./nixl_peer.ts", import.meta.url).pathname;

/** Spawns a peer under the runtime running the tests. */
export async function spawnNixlPeer(options: NixlPeerOptions): Promise<NixlPeer> {
  const { child, exited, ready: first, call } = await startPeerProcess(script, options, {
    readyMs: 30_000,
    callMs: 30_000,
    ignoreNonJson: true,
    releaseOnExit: false,
  });
  return {
    name: first.name as string,
    pid: first.pid as number,
    meta: new Uint8Array(Buffer.from(first.meta as string, "base64")),
    address: BigInt(first.address as string),
    size: first.size as number,
    info: first.info as Record<string, string>,
    child,
    exited,
    call,
    async stop() {
      if (child.exitCode !== null || child.signalCode !== null) return;
      child.stdin!.end();
      const t = setTimeout(() => child.kill("SIGKILL"), 5000);
      await exited;
      clearTimeout(t);
    },
    async kill() {
      if (child.exitCode !== null || child.signalCode !== null) return;
      child.kill("SIGKILL");
      await exited;
    },
  };
}

export { fillRandom } from "./pair_checks.ts";

/** A name no other test run uses. */
export function uniqueName(tag: string): string {
  return `${tag}-${process.pid}-${Date.now()}-${Math.floor(Math.random() * 1e6)}`;
}
