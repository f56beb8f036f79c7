/**
 * CURVE on the side channels, from configuration: the `extra_config.curve_*` keys name key
 * files (never keys), read once here into the options of the listening (server) and
 * connecting (client) sockets of a channel, PD's allocation sockets and P2P's lookups.
 *
 * @example
 * ```ts
 * import { sideChannelCurveFromConfig } from "@kvport/nixl";
 *
 * const curve = sideChannelCurveFromConfig({
 *   curve_enabled: true,
 *   curve_client_secret_key_file: "/etc/kvport/prefill-1.key_secret",
 *   curve_server_public_key_file: "/etc/kvport/server.key",
 * }, { listen: false, connect: true });
 * console.log(curve?.client !== undefined); // true
 * ```
 *
 * @module
 */

import {
  type CurveClientOptions,
  curvePublicKey,
  type CurveServerOptions,
  readCurveAllowList,
  readCurveKeyFile,
} from "./wire/mod.ts";
import { ChannelError } from "./errors.ts";

/** CURVE settings of a side channel: what its listening and its connecting sockets use. */
export interface SideChannelCurve {
  /** Listening sockets (REP): our server key and the allowed client keys. */
  readonly server?: CurveServerOptions;
  /** Connecting sockets (REQ): our client key and the server's public key. */
  readonly client?: CurveClientOptions;
}

/** The `extra_config` entries this reads (a loaded configuration has them all). */
export interface CurveConfigLike {
  /** Turns CURVE on. */
  readonly curve_enabled?: boolean;
  /** Secret key file of the listening side. */
  readonly curve_server_secret_key_file?: string | null;
  /** Public key file of the servers connected to. */
  readonly curve_server_public_key_file?: string | null;
  /** Secret key file of the connecting side. */
  readonly curve_client_secret_key_file?: string | null;
  /** Allow-list of client public keys (file or directory). */
  readonly curve_allowed_clients_file?: string | null;
  /** Other entries are ignored. */
  readonly [key: string]: unknown;
}

function need(extra: CurveConfigLike, key: keyof CurveConfigLike, why: string): string {
  const v = extra[key];
  if (typeof v !== "string" || v === "") {
    throw new ChannelError(
      "INVALID_ARGUMENT",
      `extra_config.curve_enabled is true but extra_config.${String(key)} is not set ` +
        `(got ${JSON.stringify(v ?? null)}): ${why}`,
    );
  }
  return v;
}

/**
 * Reads the CURVE settings of a side channel from `extra_config`, or `undefined` when
 * `curve_enabled` is not true (NULL, LMCache's default).
 *
 * @param extra the configuration's `extra_config`
 * @param uses which sockets the caller has: `listen` (server side: needs
 *   `curve_server_secret_key_file` and `curve_allowed_clients_file`) and `connect`
 *   (client side: needs `curve_client_secret_key_file`, and `curve_server_public_key_file`
 *   unless `curve_server_secret_key_file` is set, whose public key is then used)
 * @returns the settings, or `undefined`
 * @throws {ChannelError} `INVALID_ARGUMENT` naming the missing key, or the key file that
 *   cannot be used
 *
 * @example
 * ```ts
 * import { sideChannelCurveFromConfig } from "@kvport/nixl";
 *
 * console.log(sideChannelCurveFromConfig({}, { listen: true, connect: true })); // undefined
 * ```
 */
export function sideChannelCurveFromConfig(
  extra: CurveConfigLike | null | undefined,
  uses: { listen: boolean; connect: boolean },
): SideChannelCurve | undefined {
  if (!extra || extra.curve_enabled !== true) return undefined;
  try {
    let server: CurveServerOptions | undefined;
    let client: CurveClientOptions | undefined;
    if (uses.listen) {
      const secret = readCurveKeyFile(
        need(extra, "curve_server_secret_key_file", "the listening side channels prove it"),
        "secret",
      );
      const allowed = readCurveAllowList(
        need(extra, "curve_allowed_clients_file", "strangers are refused by this list"),
      );
      server = { server: true, secretKey: secret, allowedClients: allowed };
    }
    if (uses.connect) {
      const secret = readCurveKeyFile(
        need(extra, "curve_client_secret_key_file", "the connecting side channels prove it"),
        "secret",
      );
      const publicFile = extra.curve_server_public_key_file;
      const serverSecretFile = extra.curve_server_secret_key_file;
      const serverKey = typeof publicFile === "string" && publicFile !== ""
        ? readCurveKeyFile(publicFile, "public")
        : typeof serverSecretFile === "string" && serverSecretFile !== ""
        ? curvePublicKey(readCurveKeyFile(serverSecretFile, "secret"))
        : readCurveKeyFile(
          need(
            extra,
            "curve_server_public_key_file",
            "the connecting side must know the servers' public key",
          ),
          "public",
        );
      client = { secretKey: secret, serverKey };
    }
    return { server, client };
  } catch (e) {
    if (e instanceof ChannelError) throw e;
    throw new ChannelError("INVALID_ARGUMENT", (e as Error).message, { cause: e });
  }
}
