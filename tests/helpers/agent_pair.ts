/**
 * Test helpers: spawn a peer process (`agent_peer.ts`) under the runtime running the
 * tests, talk to it in JSON lines, and whether the native library is there.
 *
 * @module
 */
import type { ChildProcess } from "node:child_process";
import process from "node:process";
import { Buffer } from "node:buffer";
import { nativeLibrary } from "../../src/agent.ts";
import { type PeerReply, startPeerProcess } from "./peer_process.ts";

/** Why the native tests are skipped (`undefined` when the library loads). */
export const nativeSkip: string | undefined = await nativeLibrary().then(
  () => undefined,
  (e) => `libkvport.so not loadable (build it: make -C native): ${String(e).split("\n")[0]}`,
);

/** A running peer. */
export interface Peer {
  name: string;
  pid: number;
  meta: Uint8Array;
  address: bigint;
  size: number;
  listen: string;
  child: ChildProcess;
  /** Sends a command and resolves to the reply (rejects on `ok: false`). */
  call(cmd: string, args?: Record<string, unknown>, timeoutMs?: number): Promise<Reply>;
  /** Resolves when the process has exited. */
  exited: Promise<number | null>;
  /** Sends a signal (with process.kill: Deno's child.kill ignores every signal after the
   * first, so SIGSTOP then SIGCONT would not work through it). */
  signal(sig: "SIGSTOP" | "SIGCONT" | "SIGKILL"): void;
  /** Asks the peer to exit, then kills it after a grace period. */
  stop(): Promise<void>;
}

/** A reply line. */
export type Reply = PeerReply;

const script = new URL("./agent_peer.ts", import.meta.url).pathname;

/** Spawns a peer with `options` (`name`, `backends`, `params`, `size`). */
export async function spawnPeer(
  options: {
    name: string;
    backends?: string[];
    params?: Record<string, string>;
    size: number;
    memType?: "DRAM" | "VRAM";
    /** CUDA ordinal of a VRAM buffer (default 0). */
    device?: number;
    /** The peer's engine (default: builtin, or nixl with KVPORT_ENGINE=nixl). */
    engine?: "builtin" | "nixl";
  },
): Promise<Peer> {
  const { child, exited, ready: first, call } = await startPeerProcess(script, options, {
    readyMs: 20_000,
    callMs: 20_000,
    ignoreNonJson: false,
    releaseOnExit: true,
  });
  const peer: Peer = {
    name: first.name as string,
    pid: first.pid as number,
    meta: new Uint8Array(Buffer.from(first.meta as string, "base64")),
    address: BigInt(first.address as string),
    size: first.size as number,
    listen: first.listen as string,
    child,
    exited,
    call,
    signal(sig) {
      if (child.exitCode !== null || child.signalCode !== null) return;
      try {
        process.kill(child.pid!, sig);
      } catch {
        // already gone
      }
    },
    async stop() {
      if (child.exitCode !== null || child.signalCode !== null) return;
      child.stdin!.end();
      const t = setTimeout(() => peer.signal("SIGKILL"), 3000);
      await exited;
      clearTimeout(t);
    },
  };
  return peer;
}

export { fillRandom } from "./pair_checks.ts";
