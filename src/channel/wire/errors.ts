/**
 * Errors of the wire layer (ZMTP sockets and LMCache messages).
 *
 * Every error names the peer address (when there is one), what was expected and what
 * arrived, so one log line is enough to act on.
 *
 * @example
 * ```ts
 * import { WireError, WireTimeoutError } from "@kvport/nixl/wire";
 *
 * try {
 *   throw new WireTimeoutError("reply to request", 250, { peer: "tcp://127.0.0.1:7300" });
 * } catch (e) {
 *   if (e instanceof WireError) console.log(e.name, e.peer);
 * }
 * ```
 *
 * @module
 */

/** Where an error happened and why, shared by every {@linkcode WireError}. */
export interface WireErrorDetails {
  /** The peer or endpoint involved, e.g. `"tcp://127.0.0.1:7300"`. */
  peer?: string;
  /** The underlying error. */
  cause?: unknown;
}

/**
 * Base class of every error of the wire layer.
 *
 * @example
 * ```ts
 * import { WireError } from "@kvport/nixl/wire";
 *
 * const e = new WireError("something failed", { peer: "tcp://10.0.0.2:7300" });
 * console.log(e instanceof Error, e.peer); // true tcp://10.0.0.2:7300
 * ```
 */
export class WireError extends Error {
  /** The peer or endpoint involved, when there is one. */
  readonly peer?: string;

  /**
   * Creates the error.
   *
   * @param message the full human-readable message
   * @param details peer address and cause
   */
  constructor(message: string, details: WireErrorDetails = {}) {
    super(message, details.cause === undefined ? undefined : { cause: details.cause });
    this.name = "WireError";
    if (details.peer !== undefined) this.peer = details.peer;
  }
}

/**
 * A wait that ran past its deadline: a connect, a handshake, a send or a receive.
 *
 * @example
 * ```ts
 * import { WireTimeoutError } from "@kvport/nixl/wire";
 *
 * const e = new WireTimeoutError("reply to request", 500, {
 *   peer: "tcp://127.0.0.1:7300",
 *   hint: "the socket was recreated",
 * });
 * console.log(e.message);
 * // reply to request timed out after 500 ms (peer tcp://127.0.0.1:7300): the socket was recreated
 * ```
 */
export class WireTimeoutError extends WireError {
  /** What was awaited, e.g. `"reply to request"` or `"connection"`. */
  readonly expected: string;
  /** The deadline that passed, in milliseconds. */
  readonly timeoutMs: number;

  /**
   * Creates the error.
   *
   * @param expected what was awaited
   * @param timeoutMs the deadline that passed
   * @param details peer, cause and an extra sentence
   */
  constructor(
    expected: string,
    timeoutMs: number,
    details: WireErrorDetails & { hint?: string } = {},
  ) {
    const peer = details.peer === undefined ? "" : ` (peer ${details.peer})`;
    super(
      `${expected} timed out after ${timeoutMs} ms${peer}` +
        (details.hint ? `: ${details.hint}` : ""),
      details,
    );
    this.name = "WireTimeoutError";
    this.expected = expected;
    this.timeoutMs = timeoutMs;
  }
}

/**
 * A peer that broke the ZMTP protocol: a bad greeting, a frame larger than the limit,
 * an incompatible socket type, a malformed command or envelope. The connection to that
 * peer is closed; other connections are not affected.
 *
 * @example
 * ```ts
 * import { WireProtocolError } from "@kvport/nixl/wire";
 *
 * const e = new WireProtocolError("frame of 1073741824 bytes exceeds the limit of 67108864", {
 *   peer: "tcp://10.0.0.9:41000",
 * });
 * console.log(e.message);
 * ```
 */
export class WireProtocolError extends WireError {
  /**
   * Creates the error.
   *
   * @param message what the peer did wrong (the peer address is appended)
   * @param details peer and cause
   */
  constructor(message: string, details: WireErrorDetails = {}) {
    super(details.peer === undefined ? message : `${message} (peer ${details.peer})`, details);
    this.name = "WireProtocolError";
  }
}

/**
 * A CURVE failure: a peer that is not allowed in (its public key is not in the server's
 * allow-list), one that does not hold the server's key, a CURVE command that does not
 * check (bad layout, a box that does not open, a replayed nonce), or bad key settings.
 * The connection is dropped; other connections go on.
 *
 * @example
 * ```ts
 * import { WireProtocolError, WireSecurityError } from "@kvport/nixl/wire";
 *
 * const e = new WireSecurityError("CURVE: MESSAGE box does not open", { peer: "tcp://10.0.0.9:41000" });
 * console.log(e instanceof WireProtocolError, e.name); // true WireSecurityError
 * ```
 */
export class WireSecurityError extends WireProtocolError {
  /**
   * Creates the error.
   *
   * @param message what failed (the peer address is appended)
   * @param details peer and cause
   */
  constructor(message: string, details: WireErrorDetails = {}) {
    super(message, details);
    this.name = "WireSecurityError";
  }
}

/**
 * The socket or the connection was closed while an operation needed it.
 *
 * @example
 * ```ts
 * import { WireClosedError } from "@kvport/nixl/wire";
 *
 * const e = new WireClosedError("connection closed while waiting for a reply", {
 *   peer: "tcp://127.0.0.1:7300",
 * });
 * console.log(e.message);
 * ```
 */
export class WireClosedError extends WireError {
  /**
   * Creates the error.
   *
   * @param message what could not be done (the peer address is appended)
   * @param details peer and cause
   */
  constructor(message: string, details: WireErrorDetails = {}) {
    super(details.peer === undefined ? message : `${message} (peer ${details.peer})`, details);
    this.name = "WireClosedError";
  }
}

/**
 * A message body that is not a valid LMCache message: not msgpack, not a map, an
 * unknown or unexpected `type`, a missing field or a field of the wrong type.
 *
 * @example
 * ```ts
 * import { decodeMessage, WireMessageError } from "@kvport/nixl/wire";
 *
 * try {
 *   decodeMessage(new Uint8Array([0x81, 0xa4, 0x74, 0x79, 0x70, 0x65, 0xa3, 0x46, 0x6f, 0x6f]));
 * } catch (e) {
 *   if (e instanceof WireMessageError) console.log(e.messageType, e.expected); // Foo ...
 * }
 * ```
 */
export class WireMessageError extends WireError {
  /** The message's `type` tag, when it could be read. */
  readonly messageType?: string;
  /** The offending field, with an index for list elements (e.g. `keys[2]`). */
  readonly field?: string;
  /** What was expected. */
  readonly expected: string;
  /** What was found. */
  readonly got: string;

  /**
   * Creates the error.
   *
   * @param expected what was expected
   * @param got what was found
   * @param details message type, field, peer and cause
   */
  constructor(
    expected: string,
    got: string,
    details: WireErrorDetails & { messageType?: string; field?: string } = {},
  ) {
    const what = details.messageType === undefined ? "message" : `${details.messageType}`;
    const where = details.field === undefined ? "" : ` field "${details.field}"`;
    const from = details.peer === undefined ? "" : ` from ${details.peer}`;
    super(`invalid ${what}${where}${from}: expected ${expected}, got ${got}`, details);
    this.name = "WireMessageError";
    if (details.messageType !== undefined) this.messageType = details.messageType;
    if (details.field !== undefined) this.field = details.field;
    this.expected = expected;
    this.got = got;
  }
}
