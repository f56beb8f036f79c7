/**
 * Test helpers: spawn a peer process (`agent_peer.ts`) under the runtime running the
 * tests, talk to it in JSON lines, and whether the native library is there.
 *
 * @module
 */
import { type ChildProcess, spawn } from "node:child_process";
import process from "node:process";
import { Buffer } from "node:buffer";
import { createInterface } from "node:readline";
import { nativeLibrary } from "../../src/agent.ts";

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
export type Reply = Record<string, unknown> & { ok: boolean };

const script = new URL("./agent_peer.ts", import.meta.url).pathname;

/** Spawns a peer with `options` (`name`, `backends`, `params`, `size`). */
export async function spawnPeer(
  options: {
    name: string;
    backends?: string[];
    params?: Record<string, string>;
    size: number;
    memType?: "DRAM" | "VRAM";
  },
): Promise<Peer> {
  const isDeno = typeof (globalThis as { Deno?: unknown }).Deno !== "undefined";
  const args = isDeno ? ["run", "-A", script] : [script];
  const child = spawn(process.execPath, [...args, JSON.stringify(options)], {
    stdio: ["pipe", "pipe", "inherit"],
  });
  const lines = createInterface({ input: child.stdout! });
  const exited = new Promise<number | null>((resolve) =>
    child.on("exit", (c) => {
      lines.close();
      child.stdin?.destroy();
      child.stdout?.destroy();
      resolve(c);
    })
  );
  const waiting = new Map<number, (r: Reply) => void>();
  let ready: ((v: Record<string, unknown>) => void) | undefined;
  const readyP = new Promise<Record<string, unknown>>((r) => (ready = r));
  lines.on("line", (line) => {
    const msg = JSON.parse(line) as Record<string, unknown>;
    if (msg.ready) ready!(msg);
    else {
      const w = waiting.get(msg.id as number);
      waiting.delete(msg.id as number);
      w?.(msg as Reply);
    }
  });
  let timer: ReturnType<typeof setTimeout> | undefined;
  const first = await Promise.race([
    readyP,
    exited.then((c) => {
      throw new Error(`peer ${options.name} exited (${c}) before it was ready`);
    }),
    new Promise<never>((_, rej) => {
      timer = setTimeout(() => rej(new Error(`peer ${options.name} not ready in 20 s`)), 20_000);
    }),
  ]).finally(() => clearTimeout(timer));
  let next = 1;
  const peer: Peer = {
    name: first.name as string,
    pid: first.pid as number,
    meta: new Uint8Array(Buffer.from(first.meta as string, "base64")),
    address: BigInt(first.address as string),
    size: first.size as number,
    listen: first.listen as string,
    child,
    exited,
    call(cmd, extra = {}, timeoutMs = 20_000) {
      const id = next++;
      return new Promise<Reply>((resolve, reject) => {
        const timer = setTimeout(() => {
          waiting.delete(id);
          reject(new Error(`peer ${options.name}: no reply to ${cmd} in ${timeoutMs} ms`));
        }, timeoutMs);
        waiting.set(id, (r) => {
          clearTimeout(timer);
          if (r.ok) resolve(r);
          else reject(new Error(`peer ${options.name}: ${cmd} failed: ${r.error}`));
        });
        child.stdin!.write(JSON.stringify({ id, cmd, ...extra }) + "\n");
      });
    },
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

/** Fills a byte range with random data (crypto, 64 KiB at a time). */
export function fillRandom(bytes: Uint8Array): void {
  for (let at = 0; at < bytes.length; at += 65536) {
    crypto.getRandomValues(bytes.subarray(at, Math.min(at + 65536, bytes.length)));
  }
}
