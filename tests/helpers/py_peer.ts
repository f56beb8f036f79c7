/**
 * Spawns `tests/helpers/py_zmq_peer.py` under Debian's `/usr/bin/python3` (which has
 * pyzmq and msgpack; the `python3` on PATH may not) for the wire interop tests.
 *
 * @module
 */

import { type ChildProcess, spawn, spawnSync } from "node:child_process";

/**
 * The interpreter with pyzmq and msgpack: Debian's, or `$WIRE_TEST_PYTHON` when set.
 */
export const PYTHON: string = (globalThis as { process?: { env: Record<string, string> } })
  .process?.env.WIRE_TEST_PYTHON ?? "/usr/bin/python3";

const SCRIPT = new URL("./py_zmq_peer.py", import.meta.url).pathname;

let cached: string | undefined | null = null;

/**
 * Why the interop tests cannot run here, or `undefined` when they can: `/usr/bin/python3`
 * must import `zmq` and `msgpack`.
 */
export function pythonSkipReason(): string | undefined {
  if (cached !== null) return cached;
  const r = spawnSync(PYTHON, ["-c", "import zmq, msgpack; print(zmq.zmq_version())"], {
    encoding: "utf8",
    timeout: 10_000,
  });
  cached = r.status === 0 ? undefined : `${PYTHON} cannot import zmq and msgpack ` +
    `(${r.error?.message ?? r.stderr?.trim().split("\n").pop() ?? "unknown"}); ` +
    `install Debian's python3-zmq and python3-msgpack`;
  return cached;
}

/** A running Python peer. */
export interface PyPeer {
  /** The port it bound (bind modes), else 0. */
  port: number;
  /** Resolves with its exit code and output when it exits. */
  done: Promise<{ code: number | null; stdout: string; stderr: string }>;
  /** Kills it (idempotent). */
  kill(): void;
}

/**
 * Starts the peer in `mode`; for bind modes waits for its "PORT n" line.
 *
 * @param mode see the script's usage
 * @param endpoint where to connect, for connect modes
 */
export function startPyPeer(mode: string, endpoint?: string): Promise<PyPeer> {
  const args = [SCRIPT, mode, ...(endpoint ? [endpoint] : [])];
  const child: ChildProcess = spawn(PYTHON, args, { stdio: ["ignore", "pipe", "pipe"] });
  let stdout = "";
  let stderr = "";
  const done = new Promise<{ code: number | null; stdout: string; stderr: string }>(
    (resolve) => {
      child.on("close", (code) => resolve({ code, stdout, stderr }));
    },
  );
  const kill = () => {
    if (child.exitCode === null && child.signalCode === null) child.kill("SIGKILL");
  };
  return new Promise<PyPeer>((resolve, reject) => {
    let settled = false;
    const timer = setTimeout(() => {
      if (settled) return;
      settled = true;
      kill();
      reject(new Error(`python peer ${mode} did not start within 10 s: ${stderr}`));
    }, 10_000);
    child.stdout!.setEncoding("utf8");
    child.stderr!.setEncoding("utf8");
    child.stderr!.on("data", (d: string) => (stderr += d));
    child.stdout!.on("data", (d: string) => {
      stdout += d;
      if (settled) return;
      const m = /^PORT (\d+)$/m.exec(stdout);
      if (m || !mode.endsWith("-bind")) {
        settled = true;
        clearTimeout(timer);
        resolve({ port: m ? Number(m[1]) : 0, done, kill });
      }
    });
    if (!mode.endsWith("-bind")) {
      settled = true;
      clearTimeout(timer);
      resolve({ port: 0, done, kill });
    }
    child.on("error", (e) => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      reject(e);
    });
    done.then((r) => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      reject(new Error(`python peer ${mode} exited (${r.code}) before starting: ${r.stderr}`));
    });
  });
}
