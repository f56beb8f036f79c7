/**
 * Runs `tests/helpers/py_lmcache_peer.py`, a pyzmq peer that speaks like LMCache's PD
 * sender or receiver with msgspec structs mirroring LMCache's classes.
 *
 * The interpreter: `$LMCACHE_PEER_PYTHON`, else `python3` when it imports zmq and
 * msgspec (real msgspec), else Debian's `/usr/bin/python3` with python3-zmq and
 * python3-msgpack (the peer then runs its stand-in for msgspec's decoding rules).
 *
 * @module
 */

import { type ChildProcess, spawn, spawnSync } from "node:child_process";

const SCRIPT = new URL("./py_lmcache_peer.py", import.meta.url).pathname;
const env = (globalThis as { process?: { env: Record<string, string | undefined> } }).process
  ?.env ?? {};

function works(python: string, modules: string): boolean {
  const r = spawnSync(python, ["-c", `import ${modules}`], { timeout: 10_000 });
  return r.status === 0;
}

let chosen: string | null | undefined;

/** The interpreter the peer runs under, or `null` when none has what it needs. */
export function lmcachePeerPython(): string | null {
  if (chosen !== undefined) return chosen;
  const candidates = env.LMCACHE_PEER_PYTHON
    ? [[env.LMCACHE_PEER_PYTHON, "zmq"]]
    : [["python3", "zmq, msgspec"], ["/usr/bin/python3", "zmq, msgpack"]];
  chosen = candidates.find(([p, m]) => works(p, m))?.[0] ?? null;
  return chosen;
}

/** A running peer: its output lines as they come, and its exit. */
export interface LmcachePeer {
  /** Every stdout line so far. */
  readonly lines: string[];
  /** Waits for a line starting with `prefix` (at most `timeoutMs`), returns its rest. */
  line(prefix: string, timeoutMs?: number): Promise<string>;
  /** Resolves when it exits. */
  done: Promise<{ code: number | null; stdout: string; stderr: string }>;
  /** Kills it (idempotent). */
  kill(): void;
}

/**
 * Starts the peer.
 *
 * @param args the script's arguments (mode, generation, ...)
 */
export function startLmcachePeer(args: string[]): LmcachePeer {
  const python = lmcachePeerPython();
  if (!python) throw new Error("no python with zmq and msgspec (or msgpack)");
  const child: ChildProcess = spawn(python, [SCRIPT, ...args], {
    stdio: ["ignore", "pipe", "pipe"],
  });
  const lines: string[] = [];
  let stdout = "";
  let stderr = "";
  let partial = "";
  const waiters = new Set<() => void>();
  child.stdout!.setEncoding("utf8");
  child.stderr!.setEncoding("utf8");
  child.stderr!.on("data", (d: string) => (stderr += d));
  child.stdout!.on("data", (d: string) => {
    stdout += d;
    partial += d;
    const parts = partial.split("\n");
    partial = parts.pop()!;
    lines.push(...parts);
    for (const w of waiters) w();
  });
  const done = new Promise<{ code: number | null; stdout: string; stderr: string }>((resolve) =>
    child.on("close", (code) => {
      for (const w of waiters) w();
      resolve({ code, stdout, stderr });
    })
  );
  let exited = false;
  done.then(() => (exited = true));
  let read = 0;
  return {
    lines,
    done,
    kill: () => {
      if (child.exitCode === null && child.signalCode === null) child.kill("SIGKILL");
    },
    line(prefix: string, timeoutMs = 15_000): Promise<string> {
      return new Promise((resolve, reject) => {
        const check = () => {
          for (; read < lines.length; read++) {
            if (lines[read].startsWith(prefix)) {
              const rest = lines[read].slice(prefix.length).trim();
              read++;
              finish();
              resolve(rest);
              return;
            }
          }
          if (exited) {
            finish();
            reject(new Error(`peer exited before "${prefix}": ${stdout}\n${stderr}`));
          }
        };
        const timer = setTimeout(() => {
          finish();
          reject(new Error(`no "${prefix}" line within ${timeoutMs} ms: ${stdout}\n${stderr}`));
        }, timeoutMs);
        const finish = () => {
          clearTimeout(timer);
          waiters.delete(check);
        };
        waiters.add(check);
        check();
      });
    },
  };
}
