/**
 * The error of P2P sharing.
 *
 * @module
 */

import { ChannelError, type ChannelErrorCode } from "../channel/errors.ts";

/**
 * A P2P lookup or fetch that failed: the registry unreachable, the holder unreachable or
 * refusing (`P2PErrorMsg`), retries exhausted. A {@linkcode ChannelError}; `errorCode`
 * carries the holder's `P2PErrorMsg.error_code` when it answered one (1 server error,
 * 2 unknown message, 3 remote handler not initialized).
 *
 * @example
 * ```ts
 * import { P2PError } from "@kvport/nixl";
 *
 * const e = new P2PError("REMOTE_ERROR", "holder 127.0.0.1:8200 answered P2PErrorMsg 1", {
 *   peerId: "127.0.0.1:8200", errorCode: 1,
 * });
 * console.log(e.code, e.errorCode); // REMOTE_ERROR 1
 * ```
 */
export class P2PError extends ChannelError {
  /** The holder's `P2PErrorMsg.error_code`, when it answered one. */
  readonly errorCode?: number;
  /** With code `"TIMEOUT"`: the deadline that passed, ms. */
  readonly timeoutMs?: number;

  /**
   * Creates the error.
   *
   * @param code why it failed
   * @param message the full message
   * @param details peer, URL, operation, the holder's error code and the cause
   */
  constructor(
    code: ChannelErrorCode,
    message: string,
    details: {
      peerId?: string;
      url?: string;
      op?: string;
      errorCode?: number;
      timeoutMs?: number;
      cause?: unknown;
    } = {},
  ) {
    super(code, message, details);
    this.name = "P2PError";
    if (details.errorCode !== undefined) this.errorCode = details.errorCode;
    if (details.timeoutMs !== undefined) this.timeoutMs = details.timeoutMs;
  }
}
