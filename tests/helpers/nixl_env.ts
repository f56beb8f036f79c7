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
import { type ChildProcess, spawn } from "node:child_process";
import process from "node:process";
import { Buffer } from "node:buffer";
import { createInterface } from "node:readline";
import { nativeLibrary, probeEngine } from "../../src/agent.ts";

// UCX opens TCP interfaces on every network device unless told otherwise: keep the tests
// on loopback (a user's own UCX_NET_DEVICES wins). Set before any agent exists, so UCX
// (and the peers spawned from here, which inherit it) read it at start-up.
if (!process.env.UCX_NET_DEVICES) process.env.UCX_NET_DEVICES = "lo";
// NIXL logs warnings to stderr by default; the tests provoke some on purpose.
if (!process.env.NIXL_LOG_LEVEL) process.env.NIXL_LOG_LEVEL = "ERROR";

/** Why the NIXL tests are skipped (`undefined` when the nixl engine is available). */
export const nixlSkip: string | undefined = await (async () => {
  try {
    await nativeLibrary();
  } catch (e) {
    return `libkvport.so not loadable (make -C native): ${String(e).split("\n")[0]}`;
  }
  try {
    const p = await probeEngine("nixl");
    if (!p.available) return `NIXL not available: ${p.reason || "no reason given"}`;
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
export type PeerReply = Record<string, unknown> & { ok: boolean };

/** Options of a peer. */
export interface NixlPeerOptions {
  name: string;
  engine?: "nixl" | "builtin" | "auto";
  backends?: string[];
  params?: Record<string, string>;
  size: number;
}

const script = new URL("./nixl_peer.ts", import.meta.url).pathname;

/** Spawns a peer under the runtime running the tests. */
export async function spawnNixlPeer(options: NixlPeerOptions): Promise<NixlPeer> {
  const isDeno = typeof (globalThis as { Deno?: unknown }).Deno !== "undefined";
  const args = isDeno ? ["run", "-A", script] : [script];
  const child = spawn(process.execPath, [...args, JSON.stringify(options)], {
    stdio: ["pipe", "pipe", "inherit"],
  });
  const exited = new Promise<number | null>((resolve) => child.on("exit", (c) => resolve(c)));
  const lines = createInterface({ input: child.stdout! });
  const waiting = new Map<number, (r: PeerReply) => void>();
  let ready: ((v: Record<string, unknown>) => void) | undefined;
  const readyP = new Promise<Record<string, unknown>>((r) => (ready = r));
  lines.on("line", (line) => {
    let msg: Record<string, unknown>;
    try {
      msg = JSON.parse(line);
    } catch {
      return; // not ours (a library writing to stdout)
    }
    if (msg.ready) ready!(msg);
    else {
      const w = waiting.get(msg.id as number);
      waiting.delete(msg.id as number);
      w?.(msg as PeerReply);
    }
  });
  let timer: ReturnType<typeof setTimeout> | undefined;
  const first = await Promise.race([
    readyP,
    exited.then((c) => {
      throw new Error(`peer ${options.name} exited (${c}) before it was ready`);
    }),
    new Promise<never>((_, rej) => {
      timer = setTimeout(() => rej(new Error(`peer ${options.name} not ready in 30 s`)), 30_000);
    }),
  ]).finally(() => clearTimeout(timer));
  let next = 1;
  return {
    name: first.name as string,
    pid: first.pid as number,
    meta: new Uint8Array(Buffer.from(first.meta as string, "base64")),
    address: BigInt(first.address as string),
    size: first.size as number,
    info: first.info as Record<string, string>,
    child,
    exited,
    call(cmd, extra = {}, timeoutMs = 30_000) {
      const id = next++;
      return new Promise<PeerReply>((resolve, reject) => {
        const t = setTimeout(() => {
          waiting.delete(id);
          reject(new Error(`peer ${options.name}: no reply to ${cmd} in ${timeoutMs} ms`));
        }, timeoutMs);
        waiting.set(id, (r) => {
          clearTimeout(t);
          if (r.ok) resolve(r);
          else reject(new Error(`peer ${options.name}: ${cmd} failed: ${r.error}`));
        });
        child.stdin!.write(JSON.stringify({ id, cmd, ...extra }) + "\n");
      });
    },
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

/** Fills bytes with random data (crypto, 64 KiB at a time). */
export function fillRandom(bytes: Uint8Array): void {
  for (let at = 0; at < bytes.length; at += 65536) {
    crypto.getRandomValues(bytes.subarray(at, Math.min(at + 65536, bytes.length)));
  }
}

/** A name no other test run uses. */
export function uniqueName(tag: string): string {
  return `${tag}-${process.pid}-${Date.now()}-${Math.floor(Math.random() * 1e6)}`;
}
