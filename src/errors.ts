/**
 * Errors of the native layer: every failing status of the C shim becomes a
 * {@linkcode NixlError} carrying NIXL's status value and name, the shim's message and
 * the C function that failed.
 *
 * @example
 * ```ts
 * import { NixlError, Status } from "@kvport/nixl";
 *
 * const e = new NixlError(Status.ERR_NOT_FOUND, "kvp_xfer_post", "unknown request 7");
 * console.log(e.statusName, e.message);
 * // NIXL_ERR_NOT_FOUND kvp_xfer_post failed: NIXL_ERR_NOT_FOUND (-4): unknown request 7
 * ```
 * @module
 */

/**
 * NIXL's `nixl_status_t` values, which the shim returns unchanged.
 *
 * @example
 * ```ts
 * import { Status } from "@kvport/nixl";
 * console.log(Status.ERR_REMOTE_DISCONNECT); // -10
 * ```
 */
export const Status = {
  /** The operation is still running. */
  IN_PROG: 1,
  /** Done. */
  SUCCESS: 0,
  /** A request was waited on before being posted. */
  ERR_NOT_POSTED: -1,
  /** A bad argument. */
  ERR_INVALID_PARAM: -2,
  /** The backend failed. */
  ERR_BACKEND: -3,
  /** An unknown (or released) handle, agent or name. */
  ERR_NOT_FOUND: -4,
  /** Lengths, types or formats that do not match. */
  ERR_MISMATCH: -5,
  /** Not allowed in this state. */
  ERR_NOT_ALLOWED: -6,
  /** The request is still active. */
  ERR_REPOST_ACTIVE: -7,
  /** An error without a better name. */
  ERR_UNKNOWN: -8,
  /** Not supported by this engine, backend or machine. */
  ERR_NOT_SUPPORTED: -9,
  /** The peer went away. */
  ERR_REMOTE_DISCONNECT: -10,
  /** Cancelled (a released request, a destroyed agent). */
  ERR_CANCELED: -11,
  /** No telemetry. */
  ERR_NO_TELEMETRY: -12,
} as const;

/** A status value of {@linkcode Status}. */
export type StatusCode = (typeof Status)[keyof typeof Status];

const NAMES: ReadonlyMap<number, string> = new Map(
  Object.entries(Status).map(([k, v]) => [v, `NIXL_${k}`]),
);

/**
 * NIXL's name of a status value, e.g. `"NIXL_ERR_NOT_FOUND"`; `"NIXL_ERR_UNKNOWN_STATUS"`
 * for a value outside the table (the same names as the shim's `kvp_status_name`).
 *
 * @example
 * ```ts
 * import { statusName } from "@kvport/nixl";
 * console.log(statusName(-4)); // NIXL_ERR_NOT_FOUND
 * ```
 */
export function statusName(status: number): string {
  return NAMES.get(status) ?? "NIXL_ERR_UNKNOWN_STATUS";
}

/**
 * A failing status of the native shim (or of the agent layer, with the same statuses).
 *
 * @example
 * ```ts
 * import { NixlAgent, NixlError } from "@kvport/nixl";
 *
 * await using agent = await NixlAgent.create({ name: "a", engine: "builtin" });
 * try {
 *   agent.invalidateRemoteAgent("nobody");
 * } catch (e) {
 *   if (e instanceof NixlError && e.statusName === "NIXL_ERR_NOT_FOUND") console.log(e.message);
 * }
 * ```
 */
export class NixlError extends Error {
  /** NIXL's status value (negative). */
  readonly status: number;
  /** NIXL's status name, e.g. `"NIXL_ERR_NOT_FOUND"`. */
  readonly statusName: string;
  /** The C function (or agent method) that failed, e.g. `"kvp_register"`. */
  readonly fn: string;
  /** The shim's own message for this failure (its last error); `""` when it gave none. */
  readonly nativeMessage: string;

  /**
   * A failure of `fn` with NIXL status `status`.
   *
   * @param status NIXL's status value
   * @param fn the C function or method that failed
   * @param nativeMessage the shim's message (`kvp_last_error` or `kvp_xfer_message`)
   * @param options `cause`; `context` put in front of the message; `message` to use
   *   instead of the one built from the others
   */
  constructor(
    status: number,
    fn: string,
    nativeMessage = "",
    options: { cause?: unknown; context?: string; message?: string } = {},
  ) {
    const name = statusName(status);
    const what = options.context ? `${options.context}: ` : "";
    super(
      options.message ??
        `${what}${fn} failed: ${name} (${status})${nativeMessage ? `: ${nativeMessage}` : ""}`,
      options.cause === undefined ? undefined : { cause: options.cause },
    );
    this.name = "NixlError";
    this.status = status;
    this.statusName = name;
    this.fn = fn;
    this.nativeMessage = nativeMessage;
  }
}

/** What timed out, for {@linkcode NixlTimeoutError}. */
export interface TimeoutDetails {
  /** `"READ"`, `"WRITE"` or `"notification wait"`. */
  op: string;
  /** The peer agent's name (`""` for the local side). */
  peer: string;
  /** Number of descriptors in the request (0 when not a transfer). */
  count: number;
  /** The timeout that ran out, in milliseconds. */
  timeoutMs: number;
}

/**
 * A transfer (or wait) that did not finish within its timeout. Its status is
 * `NIXL_IN_PROG`: the request was still in progress when the time ran out; a
 * {@linkcode NixlAgent.transfer} has cancelled and released it before rejecting.
 *
 * @example
 * ```ts
 * import { NixlTimeoutError } from "@kvport/nixl";
 *
 * const e = new NixlTimeoutError({ op: "WRITE", peer: "decoder-0", count: 64, timeoutMs: 5 });
 * console.log(e.message);
 * ```
 */
export class NixlTimeoutError extends NixlError {
  /** `"READ"`, `"WRITE"` or `"notification wait"`. */
  readonly op: string;
  /** The peer agent's name. */
  readonly peer: string;
  /** Number of descriptors. */
  readonly count: number;
  /** The timeout that ran out, in milliseconds. */
  readonly timeoutMs: number;

  /**
   * A timeout of `details.op` after `details.timeoutMs`.
   *
   * @param details what timed out
   * @param note what was done about it (appended to the message)
   */
  constructor(details: TimeoutDetails, note = "") {
    const what = details.count > 0
      ? `${details.op} of ${details.count} descriptor${details.count === 1 ? "" : "s"} ` +
        `with peer "${details.peer}"`
      : `${details.op}${details.peer ? ` for peer "${details.peer}"` : ""}`;
    super(Status.IN_PROG, details.op, "", {
      message: `${what} timed out after ${details.timeoutMs} ms (NIXL_IN_PROG)` +
        (note ? `; ${note}` : ""),
    });
    this.name = "NixlTimeoutError";
    this.op = details.op;
    this.peer = details.peer;
    this.count = details.count;
    this.timeoutMs = details.timeoutMs;
  }
}
