/**
 * Transfer requests (NIXL's `makeXferReq` handles) and the one wait used by every
 * transfer: quick synchronous status checks first (tiny transfers finish there: 50 us,
 * or up to 200 us for a request whose recent waits took about that long), then a sleep
 * until the agent says something finished (`events.ts`: the library's wake callback;
 * with an ABI-3 library Bun reads the event descriptor and Deno runs the nonblocking
 * `kvp_xfer_wait` on a pool thread), else (an engine without events) a poll with a
 * backoff timer. Nothing spins longer than SPIN_MAX_MICROS (200 us) per wait.
 *
 * @example
 * ```ts
 * import { NixlAgent } from "@kvport/nixl";
 * declare const agent: NixlAgent;
 * declare const local: import("@kvport/nixl").PreparedDescList;
 * declare const remote: import("@kvport/nixl").PreparedDescList;
 * using req = agent.createTransfer("WRITE", local, [0, 1], remote, [4, 5]);
 * for (let i = 0; i < 1000; i++) {
 *   req.post();
 *   await req.wait(5000);
 * }
 * ```
 * @module
 */

import type { NativeLib } from "../../ffi/mod.ts";
import { CallMessage, check, lastError, sizedOut, text } from "../../ffi/native.ts";
import { NixlError, NixlTimeoutError, Status } from "../errors.ts";
import { type AgentCore, releasedError } from "./common.ts";
import { type OpMetrics, TIMED_POST_BYTES } from "./metrics.ts";
import type { AgentEvents } from "./events.ts";

/** A transfer's direction: READ pulls the remote pages into local ones, WRITE pushes. */
export type TransferOp = "READ" | "WRITE";

/** `"done"` or `"pending"`: what {@linkcode TransferRequest.post} and `status` report. */
export type TransferState = "done" | "pending";

/** Options of waits. */
export interface WaitOptions {
  /** Aborting releases (cancels) the request and rejects with the signal's reason. */
  signal?: AbortSignal;
}

/**
 * Microseconds of synchronous status checks before a wait goes asynchronous: small
 * transfers (a 4 KiB TCP round trip is about 30 us) finish here, without the cost of a
 * thread hop (Deno) or a timer (Bun). Bounded, so nothing spins longer than this.
 */
export const SPIN_MICROS = 50;

/**
 * The longest a wait ever checks synchronously (microseconds): a request whose recent
 * waits ended within about this long (a 4 KiB TCP round trip: 40-60 us here) spins for
 * 1.5 x its typical wait instead of {@linkcode SPIN_MICROS}, so that a round trip just
 * above 50 us does not pay a thread hop (Deno) or a timer (Bun) on every other wait.
 * Longer requests keep the 50 us. See {@linkcode spinWindow}.
 */
export const SPIN_MAX_MICROS = 200;

/**
 * The spin window of a wait (microseconds) for a request whose typical wait is
 * `typicalUs` (see {@linkcode typicalWait}; `undefined` before its first wait): 1.5 x
 * that, between
 * {@linkcode SPIN_MICROS} and {@linkcode SPIN_MAX_MICROS}, and {@linkcode SPIN_MICROS}
 * when even the longest window would not cover it (spinning then only burns the CPU).
 *
 * @example
 * ```ts
 * import { spinWindow } from "./transfer.ts";
 * console.log(spinWindow(45), spinWindow(10), spinWindow(5000)); // 67.5 50 50
 * ```
 */
export function spinWindow(typicalUs: number | undefined): number {
  if (typicalUs === undefined || !(typicalUs <= SPIN_MAX_MICROS)) return SPIN_MICROS;
  return Math.min(SPIN_MAX_MICROS, Math.max(SPIN_MICROS, 1.5 * typicalUs));
}

/**
 * The next typical wait of a request (microseconds) after one that took `us`: a moving
 * average (weight 1/8) of its waits, each capped at 2 x {@linkcode SPIN_MAX_MICROS} so
 * that one stall (a scheduling hiccup of milliseconds) does not take the window away.
 * `previous` is `undefined` before the first wait.
 *
 * @example
 * ```ts
 * import { typicalWait } from "./transfer.ts";
 * let t = typicalWait(undefined, 45);
 * t = typicalWait(t, 3000); // one stall: 45 + (400 - 45) / 8
 * console.log(t.toFixed(1)); // 89.4
 * ```
 */
export function typicalWait(previous: number | undefined, us: number): number {
  const x = Math.min(us, 2 * SPIN_MAX_MICROS);
  return previous === undefined ? x : previous + (x - previous) / 8;
}

/**
 * Transfers of at least this many bytes skip those checks: they take longer than the spin
 * (256 KiB is a 13 us copy at 20 GB/s, plus a copy worker's wake-up of tens of
 * microseconds), so it would only take a core from the copy workers; on a 2-core host
 * that is half of the machine.
 */
export const NO_SPIN_BYTES = 256 * 1024;

/** Longest sleep on the event descriptor before a status poll anyway (see waitStatus). */
const EVENT_SLICE_MS = 100;

/** How long Bun's poll loop yields with `setImmediate` (a few us a turn) before timers. */
const YIELD_MS = 0.3;

/** Bun's pause between polls, backing off with the time waited: event-loop turns for
 * the first 0.3 ms, then timers of 0 ms (about 1 ms in Bun), 1 ms, and 2 ms after 10 ms. */
function pause(elapsedMs: number): Promise<void> {
  const g = globalThis as { setImmediate?: (cb: () => void) => unknown };
  if (elapsedMs < YIELD_MS && g.setImmediate) {
    return new Promise((resolve) => g.setImmediate!(resolve));
  }
  const ms = elapsedMs < 2 ? 0 : elapsedMs < 10 ? 1 : 2;
  return new Promise((resolve) => setTimeout(resolve, ms));
}

/**
 * Waits for `poll()` to stop returning `IN_PROG`: synchronous checks for up to
 * `spinMicros`, then `blocking` (Deno: a nonblocking native wait with the time left), or
 * with `events` (Bun) a poll each time the agent's event descriptor has news, or else
 * polls paced by event-loop turns and short timers. Returns the final status, or
 * `IN_PROG` when `timeoutMs` ran out. `stop()` ends the wait early (it returns
 * `ERR_CANCELED`; with `events`, whoever makes it true also calls `events.poke()`).
 * `took`, when given, receives how long the wait took (microseconds; 0 when the first
 * check already saw the end).
 *
 * @example
 * ```ts
 * import { waitStatus } from "./transfer.ts";
 * let n = 0;
 * const status = await waitStatus(() => (++n < 100 ? 1 : 0), null, 1000, () => false);
 * console.log(status); // 0
 * ```
 */
export async function waitStatus(
  poll: () => number,
  blocking: ((timeoutMs: number) => Promise<number>) | null,
  timeoutMs: number,
  stop: () => boolean,
  spinMicros: number = SPIN_MICROS,
  events: AgentEvents | null = null,
  took: { us: number } | null = null,
): Promise<number> {
  // An event between a poll and the sleep after it is not lost: the sleep compares the
  // count read before the poll.
  let seen = events?.gen ?? 0;
  let s = poll();
  if (took) took.us = 0;
  if (s !== Status.IN_PROG) {
    events?.settled();
    return s;
  }
  const start = performance.now();
  const spinEnd = start + spinMicros / 1000;
  for (let now = start; now < spinEnd; now = performance.now()) {
    seen = events?.gen ?? 0;
    s = poll();
    if (s !== Status.IN_PROG) {
      if (took) took.us = (now - start) * 1000;
      events?.settled();
      return s;
    }
  }
  const deadline = start + timeoutMs;
  for (;;) {
    const now = performance.now();
    const left = deadline - now;
    if (left <= 0) return Status.IN_PROG;
    if (blocking) {
      s = await blocking(Math.ceil(left));
    } else if (events) {
      // Slices of at most EVENT_SLICE_MS: the wake comes from the descriptor; the slice
      // only bounds the cost of a completion path that would fail to signal.
      await events.changed(seen, Math.min(Math.ceil(left), EVENT_SLICE_MS));
      if (stop()) return Status.ERR_CANCELED;
      seen = events.gen;
      s = poll();
    } else {
      await pause(now - start);
      s = stop() ? Status.ERR_CANCELED : poll();
    }
    if (stop()) return Status.ERR_CANCELED;
    if (s !== Status.IN_PROG) {
      if (took) took.us = (performance.now() - start) * 1000;
      // (Woken by the engine, others were too; this poll may have seen an end first.)
      events?.settled();
      return s;
    }
  }
}

/** Checks a timeout argument: a finite number of milliseconds >= 0. */
export function checkTimeout(timeoutMs: number, fn: string): number {
  if (typeof timeoutMs !== "number" || !(timeoutMs >= 0) || !Number.isFinite(timeoutMs)) {
    throw new NixlError(
      Status.ERR_INVALID_PARAM,
      fn,
      `timeoutMs must be a finite number of milliseconds >= 0, got ${String(timeoutMs)}`,
    );
  }
  return timeoutMs;
}

/**
 * A reusable transfer request (NIXL's `makeXferReq`): post it, check or wait for it,
 * post it again once done, release it when finished. For hot loops and benchmarks;
 * `NixlAgent.transfer` is the one-shot form.
 *
 * @example
 * ```ts
 * import { NixlAgent, type PreparedDescList } from "@kvport/nixl";
 * declare const agent: NixlAgent;
 * declare const local: PreparedDescList, remote: PreparedDescList;
 * using req = agent.createTransfer("READ", local, [0], remote, [0]);
 * if (req.post() === "pending") await req.wait(1000);
 * ```
 */
export class TransferRequest {
  /** `"READ"` or `"WRITE"`. */
  readonly op: TransferOp;
  /** The peer's name (`remote` side of the request). */
  readonly peer: string;
  /** Number of descriptor pairs. */
  readonly count: number;
  #core: AgentCore;
  #lib: NativeLib;
  #agent: bigint;
  #handle: bigint;
  #released = false;
  // C copies these when the request is made; they are kept anyway for as long as the
  // request lives, so that no engine can ever see freed memory.
  #keep: unknown[];
  #metrics: OpMetrics | undefined;
  #bytes: number;
  #since = 0; // when the pending post started (ms), 0 when not pending
  // This request's typical wait (us; typicalWait), which sets its spin window.
  #typicalUs: number | undefined;
  #took = { us: 0 };
  #spinMicros: number;

  /** @internal Use `NixlAgent.createTransfer`. */
  constructor(
    core: AgentCore,
    handle: bigint,
    op: TransferOp,
    peer: string,
    count: number,
    keep: unknown[],
    bytes = 0,
    large = false,
  ) {
    this.#core = core;
    this.#lib = core.lib;
    this.#agent = core.handle("createTransfer");
    this.#handle = handle;
    this.op = op;
    this.peer = peer;
    this.count = count;
    this.#keep = keep;
    this.#metrics = core.metrics?.[op === "READ" ? "read" : "write"];
    this.#bytes = bytes;
    this.#spinMicros = large ? 0 : SPIN_MICROS;
  }

  /** True once released. */
  get released(): boolean {
    return this.#released;
  }

  #describe(): string {
    return `${this.op} of ${this.count} descriptor${this.count === 1 ? "" : "s"} with peer ` +
      `"${this.peer}"`;
  }

  /** Throws when the request (or its agent) is gone; the hot paths call only this. */
  #live(fn: string): void {
    if (this.#released) throw releasedError(`request (${this.#describe()})`, fn);
    if (this.#core.closed) this.#core.handle(fn); // throws "agent ... is closed"
  }

  /** The request's own failure message (set by the engine), else the message the call
   * handed back (`call`, for waits that ran on another thread), else this thread's last
   * error (for calls made on it). */
  #message(call?: string): string {
    const lib = this.#lib;
    // Read now: kvp_xfer_message below clears this thread's last error (a post refused
    // before it started, e.g. by a same-host peer's page grants, has only that).
    const last = call ?? lastError(lib);
    const fallback = () => last;
    if (this.#released || this.#core.closed) return fallback();
    try {
      const own = text(
        sizedOut(
          lib,
          "kvp_xfer_message",
          (buf, cap, len) => lib.symbols.kvp_xfer_message(this.#agent, this.#handle, buf, cap, len),
        ),
      );
      return own || fallback();
    } catch {
      return fallback();
    }
  }

  /** A pending post ended (counted once per post; nothing when metrics are off). */
  #ended(status: number): void {
    if (this.#since !== 0) {
      this.#metrics?.finished(status, this.#since, this.#bytes);
      this.#since = 0;
    }
  }

  #state(status: number, fn: string, call?: string): TransferState {
    if (status === Status.SUCCESS) return "done";
    if (status === Status.IN_PROG) return "pending";
    throw new NixlError(status, fn, this.#message(call), { context: this.#describe() });
  }

  /** Posts the request: `"done"` when it completed inline, else `"pending"`. An active
   * request is `NIXL_ERR_REPOST_ACTIVE`. */
  post(): TransferState {
    this.#live("post");
    const m = this.#metrics;
    const t0 = m !== undefined && this.#bytes >= TIMED_POST_BYTES ? performance.now() : 0;
    const s = this.#lib.symbols.kvp_xfer_post(this.#agent, this.#handle);
    if (m !== undefined) {
      if (s === Status.SUCCESS) m.succeeded(this.#bytes, t0);
      else if (s === Status.IN_PROG) this.#since = m.started(t0);
      else m.failed(s);
    }
    return s === Status.SUCCESS ? "done" : this.#state(s, "kvp_xfer_post");
  }

  /** Current state without blocking; a failed request throws its error. */
  status(): TransferState {
    this.#live("status");
    const s = this.#lib.symbols.kvp_xfer_status(this.#agent, this.#handle);
    if (s !== Status.IN_PROG) this.#ended(s);
    return s === Status.SUCCESS ? "done" : this.#state(s, "kvp_xfer_status");
  }

  /**
   * Waits up to `timeoutMs` for the posted request to finish. On timeout it rejects with
   * a {@linkcode NixlTimeoutError} and the request stays active (wait again, or release
   * it to cancel). Aborting `signal` releases the request and rejects with its reason.
   * It checks synchronously for {@linkcode spinWindow} of this request's typical wait
   * (50 us, up to {@linkcode SPIN_MAX_MICROS} for a request that usually takes that
   * long), then waits without spinning.
   */
  async wait(timeoutMs?: number, options?: WaitOptions): Promise<void> {
    timeoutMs ??= 30_000;
    options ??= {};
    checkTimeout(timeoutMs, "wait");
    const signal = options.signal;
    signal?.throwIfAborted();
    this.#live("wait");
    const lib = this.#lib;
    const agent = this.#agent;
    const req = this.#handle;
    // The agent's events (wake callback or descriptor) where it has them, else Deno's
    // pool-thread wait, else polls.
    const events = this.#core.events();
    const nb = events ? null : lib.nonblocking;
    const onAbort = () => this.release();
    signal?.addEventListener("abort", onAbort, { once: true });
    let status: number;
    // The last status and its message: from the native wait (another thread) or the poll.
    // Room for the message only where a native wait may hand one back (not with events:
    // a kilobyte less made per wait).
    const call = nb ? new CallMessage() : null;
    let fromWait = false;
    try {
      status = await waitStatus(
        () => {
          fromWait = false;
          return lib.symbols.kvp_xfer_status(agent, req);
        },
        nb &&
          ((ms) =>
            this.#core.track(
              nb.kvp_xfer_wait(agent, req, BigInt(ms), call!.buf, call!.cap, call!.len),
            )
              .then((s) => {
                fromWait = true;
                return s;
              })),
        timeoutMs,
        () => this.#released || this.#core.closed,
        // A large transfer takes longer than any spin: no synchronous checks at all.
        this.#spinMicros === 0 ? 0 : spinWindow(this.#typicalUs),
        events,
        this.#took,
      );
    } finally {
      signal?.removeEventListener("abort", onAbort);
    }
    if (status === Status.SUCCESS) this.#typicalUs = typicalWait(this.#typicalUs, this.#took.us);
    if (status !== Status.IN_PROG) this.#ended(status);
    else this.#metrics?.timedOut();
    if (signal?.aborted) throw signal.reason;
    if (status === Status.IN_PROG) {
      throw new NixlTimeoutError(
        { op: this.op, peer: this.peer, count: this.count, timeoutMs },
        this.#released ? "the request was released" : "the request is still active",
      );
    }
    if (status === Status.ERR_CANCELED && (this.#released || this.#core.closed)) {
      throw new NixlError(
        Status.ERR_CANCELED,
        "wait",
        this.#core.closed ? `agent "${this.#core.name}" was closed` : "the request was released",
        { context: this.#describe() },
      );
    }
    this.#state(
      status,
      fromWait ? "kvp_xfer_wait" : "kvp_xfer_status",
      fromWait ? call!.text() : undefined,
    );
  }

  /** Releases the request (idempotent); an active one is cancelled first, and no byte
   * is touched once this returns. */
  release(): void {
    if (this.#released) return;
    this.#released = true;
    this.#ended(Status.ERR_CANCELED); // still pending: cancelled by this release
    this.#core.forget(this);
    this.#keep = [];
    if (this.#core.closed) return;
    const lib = this.#core.lib;
    const status = lib.symbols.kvp_xfer_release(this.#core.handle("release"), this.#handle);
    // (The context string is made only for a failure: a release is once per transfer.)
    if (status !== Status.SUCCESS) check(lib, status, "kvp_xfer_release", this.#describe());
  }

  /** Same as {@linkcode TransferRequest.release}. */
  [Symbol.dispose](): void {
    this.release();
  }
}
