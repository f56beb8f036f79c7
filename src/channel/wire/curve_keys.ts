/**
 * CURVE keys from files, never from the command line: a key file holds one 32-byte key as
 * raw bytes, as 40 Z85 characters (what `zmq.curve_keypair()` returns), or as a ZeroMQ
 * certificate (`public-key = "..."` / `secret-key = "..."`, as pyzmq's
 * `zmq.auth.create_certificates` and czmq write them). A secret key file must not be
 * readable by group or others (`chmod 600`).
 *
 * An allow-list is a file with one public key per line (Z85; lines starting with `# ` are
 * comments, and anything after a blank following a key), or a
 * directory of certificates (every `*.key` file in it, as pyzmq's `public_keys_dir`).
 *
 * @example
 * ```ts
 * import { readCurveAllowList, readCurveKeyFile } from "@kvport/nixl/wire";
 *
 * const secretKey = readCurveKeyFile("/etc/kvport/server.key_secret", "secret");
 * const allowedClients = readCurveAllowList("/etc/kvport/clients");
 * console.log(secretKey.length, allowedClients.length);
 * ```
 *
 * @module
 */

import * as fs from "node:fs";
import * as path from "node:path";
import { CURVE_KEY_BYTES } from "./curve.ts";
import { WireSecurityError } from "./errors.ts";
import { z85Decode } from "./z85.ts";

function certField(text: string, field: "public-key" | "secret-key"): string | undefined {
  const m = new RegExp(`^\\s*${field}\\s*=\\s*"([^"]*)"`, "m").exec(text);
  return m?.[1];
}

function fromText(text: string, where: string): Uint8Array {
  const t = text.trim();
  if (t.length !== 40) {
    throw new WireSecurityError(
      `${where}: expected a 40-character Z85 key, got ${t.length} characters`,
    );
  }
  try {
    return z85Decode(t);
  } catch (e) {
    throw new WireSecurityError(`${where}: ${(e as Error).message}`);
  }
}

/**
 * Reads one CURVE key from a file (raw 32 bytes, 40 Z85 characters, or a certificate).
 *
 * @param file the key file's path
 * @param kind `"secret"` (checks the file is not readable by group or others; from a
 *   certificate, its `secret-key`) or `"public"` (from a certificate, its `public-key`)
 * @returns the 32-byte key
 * @throws {WireSecurityError} naming the file and what is wrong with it
 *
 * @example
 * ```ts
 * import { readCurveKeyFile } from "@kvport/nixl/wire";
 *
 * const serverKey = readCurveKeyFile("/etc/kvport/server.key", "public");
 * console.log(serverKey.length); // 32
 * ```
 */
export function readCurveKeyFile(file: string, kind: "secret" | "public"): Uint8Array {
  let bytes: Uint8Array;
  let mode: number;
  try {
    mode = fs.statSync(file).mode;
    bytes = fs.readFileSync(file);
  } catch (e) {
    throw new WireSecurityError(
      `cannot read the CURVE ${kind} key file ${file}: ${(e as Error).message}`,
    );
  }
  if (kind === "secret" && (mode & 0o077) !== 0) {
    throw new WireSecurityError(
      `CURVE secret key file ${file} is readable by others (mode ` +
        `${(mode & 0o777).toString(8)}): chmod 600 it`,
    );
  }
  if (bytes.length === CURVE_KEY_BYTES) return new Uint8Array(bytes);
  const text = new TextDecoder().decode(bytes);
  const field = certField(text, kind === "secret" ? "secret-key" : "public-key");
  if (field !== undefined) return fromText(field, `${file} (${kind}-key)`);
  if (/^\s*(public|secret)-key\s*=/m.test(text)) {
    throw new WireSecurityError(`${file} is a certificate without a ${kind}-key`);
  }
  return fromText(text, file);
}

/**
 * Reads the public keys a CURVE server lets in.
 *
 * @param file a file with one Z85 key per line (`# ` comment lines, blank lines ignored), or a
 *   directory whose `*.key` certificates each give one `public-key`
 * @returns the keys (at least one)
 * @throws {WireSecurityError} naming the file and line that is wrong, or an empty list
 *
 * @example
 * ```ts
 * import { readCurveAllowList } from "@kvport/nixl/wire";
 *
 * console.log(readCurveAllowList("/etc/kvport/allowed_clients").length);
 * ```
 */
export function readCurveAllowList(file: string): Uint8Array[] {
  let keys: Uint8Array[] = [];
  let stat: fs.Stats;
  try {
    stat = fs.statSync(file);
  } catch (e) {
    throw new WireSecurityError(
      `cannot read the CURVE allow-list ${file}: ${(e as Error).message}`,
    );
  }
  if (stat.isDirectory()) {
    for (const name of fs.readdirSync(file).sort()) {
      if (!name.endsWith(".key")) continue;
      keys.push(readCurveKeyFile(path.join(file, name), "public"));
    }
  } else {
    const lines = fs.readFileSync(file, "utf8").split("\n");
    keys = [];
    lines.forEach((line, i) => {
      // Z85 has '#' among its characters: a comment is a line starting with "#" and a
      // blank (or a bare "#"), or what follows a key after a blank.
      const t = line.trim();
      if (t === "" || /^#(\s|$)/.test(t)) return;
      keys.push(fromText(t.split(/\s/)[0], `${file} line ${i + 1}`));
    });
  }
  if (keys.length === 0) {
    throw new WireSecurityError(
      `CURVE allow-list ${file} holds no key: every client would be refused`,
    );
  }
  return keys;
}
