/**
 * The test side of the JSON-line peer protocol that `agent_pair.ts` and `nixl_env.ts`
 * share: spawn a peer script under the runtime running the tests, wait for its `ready`
 * line, then send commands whose replies are matched by `id`.
 *
 * @module
 */
import { type ChildProcess, spawn } from "node:child_process";
import process from "node:process";
import { createInterface } from "node:readline";

/** A reply line. */
export type PeerReply = Record<string, unknown> & { ok: boolean };

/** How a peer process is driven. */
export interface PeerProcessOptions {
  /** How long the peer may take to print its `ready` line. */
  readyMs: number;
  /** Default deadline of a command's reply. */
  callMs: number;
  /** Skip stdout lines that are not JSON (a library writing to stdout) instead of
   * failing on them. */
  ignoreNonJson: boolean;
  /** Close the line reader and our ends of stdin and stdout once the process exits. */
  releaseOnExit: boolean;
}

/** A spawned peer that printed its `ready` line. */
export interface PeerProcess {
  child: ChildProcess;
  /** Resolves when the process has exited. */
  exited: Promise<number | null>;
  /** The `ready` line. */
  ready: Record<string, unknown>;
  /** Sends a command and resolves to the reply (rejects on `ok: false`). */
  call(cmd: string, args?: Record<string, unknown>, timeoutMs?: number): Promise<PeerReply>;
}

/**
 * Spawns `script` with `options` (JSON, last argument) and waits for its `ready` line.
 *
 * @throws when the peer exits first, or is not ready within `how.readyMs`
 */
export async function startPeerProcess(
  script: string,
  options: { name: string },
  how: PeerProcessOptions,
): Promise<PeerProcess> {
  const isDeno = typeof (globalThis as { Deno?: unknown }).Deno !== "undefined";
  const args = isDeno ? ["run", "-A", script] : [script];
  const child = spawn(process.execPath, [...args, JSON.stringify(options)], {
    stdio: ["pipe", "pipe", "inherit"],
  });
  const lines = createInterface({ input: child.stdout! });
  const exited = new Promise<number | null>((resolve) =>
    child.on("exit", (c) => {
      if (how.releaseOnExit) {
        lines.close();
        child.stdin?.destroy();
        child.stdout?.destroy();
      }
      resolve(c);
    })
  );
  const waiting = new Map<number, (r: PeerReply) => void>();
  let ready: ((v: Record<string, unknown>) => void) | undefined;
  const readyP = new Promise<Record<string, unknown>>((r) => (ready = r));
  lines.on("line", (line) => {
    // Our replies are JSON objects, one per line; anything else is a library writing to
    // stdout (UCX logs there): shown on stderr, never parsed as a reply.
    let msg: Record<string, unknown> | undefined;
    try {
      const v = JSON.parse(line);
      if (v !== null && typeof v === "object" && !Array.isArray(v)) msg = v;
    } catch { /* not ours */ }
    if (msg === undefined) {
      if (!how.ignoreNonJson) process.stderr.write(`[${options.name} stdout] ${line}\n`);
      return;
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
      timer = setTimeout(
        () => rej(new Error(`peer ${options.name} not ready in ${how.readyMs / 1000} s`)),
        how.readyMs,
      );
    }),
  ]).finally(() => clearTimeout(timer));
  let next = 1;
  return {
    child,
    exited,
    ready: first,
    call(cmd, extra = {}, timeoutMs = how.callMs) {
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
  };
}
