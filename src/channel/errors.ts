/**
 * Errors of the transfer channels and of disaggregated prefill.
 *
 * Every error names the thing (peer, URL, operation), what was expected and what
 * happened, so a log line is enough to act on.
 *
 * @module
 */

/** Machine-readable reason of a {@linkcode ChannelError}. */
export type ChannelErrorCode =
  | "UNSUPPORTED_CHANNEL_TYPE"
  | "INVALID_ARGUMENT"
  | "DEVICE_UNAVAILABLE"
  | "TIMEOUT"
  | "HANDSHAKE_FAILED"
  | "UNKNOWN_PEER"
  | "TRANSFER_FAILED"
  | "NOT_ALLOWED"
  | "PEER_RESTARTED"
  | "REMOTE_ERROR"
  | "CLOSED";

/**
 * The error every channel and PD operation throws.
 *
 * @example
 * ```ts
 * import { ChannelError } from "@kvport/nixl";
 *
 * try {
 *   throw new ChannelError("TIMEOUT", "handshake with localhost:7300 timed out", {
 *     peerId: "localhost:7300",
 *   });
 * } catch (e) {
 *   if (e instanceof ChannelError && e.code === "TIMEOUT") console.log(e.peerId);
 * }
 * ```
 */
export class ChannelError extends Error {
  /** Why it failed. */
  readonly code: ChannelErrorCode;
  /** The peer involved, when there is one. */
  readonly peerId?: string;
  /** The URL (`host:port`) involved, when there is one. */
  readonly url?: string;
  /** The operation that failed (`connect`, `write`, `read`, `alloc`, ...). */
  readonly op?: string;

  /**
   * Creates the error.
   *
   * @param code why it failed
   * @param message the full human-readable message
   * @param details peer, URL, operation and cause
   */
  constructor(
    code: ChannelErrorCode,
    message: string,
    details: { peerId?: string; url?: string; op?: string; cause?: unknown } = {},
  ) {
    super(message, details.cause === undefined ? undefined : { cause: details.cause });
    this.name = "ChannelError";
    this.code = code;
    if (details.peerId !== undefined) this.peerId = details.peerId;
    if (details.url !== undefined) this.url = details.url;
    if (details.op !== undefined) this.op = details.op;
  }
}

/**
 * A wait that ran past its deadline: a handshake, a transfer, an allocation or a
 * notification. A {@linkcode ChannelError} with code `"TIMEOUT"`.
 *
 * @example
 * ```ts
 * import { ChannelTimeoutError } from "@kvport/nixl";
 *
 * const e = new ChannelTimeoutError("write", 5000, { peerId: "localhost:7300" });
 * console.log(e.message, e.timeoutMs);
 * ```
 */
export class ChannelTimeoutError extends ChannelError {
  /** The deadline that passed, in milliseconds. */
  readonly timeoutMs: number;

  /**
   * Creates the error; the message says what timed out, with whom, and after how long.
   *
   * @param op the operation that timed out
   * @param timeoutMs its deadline
   * @param details peer, URL and an optional extra sentence
   */
  constructor(
    op: string,
    timeoutMs: number,
    details: { peerId?: string; url?: string; hint?: string; cause?: unknown } = {},
  ) {
    const who = [
      details.peerId === undefined ? "" : ` with peer ${details.peerId}`,
      details.url === undefined ? "" : ` at ${details.url}`,
    ].join("");
    super(
      "TIMEOUT",
      `${op}${who} timed out after ${timeoutMs} ms` + (details.hint ? `: ${details.hint}` : ""),
      { ...details, op },
    );
    this.name = "ChannelTimeoutError";
    this.timeoutMs = timeoutMs;
  }
}
