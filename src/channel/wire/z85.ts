/**
 * Z85 (ZeroMQ RFC 32), the text form of CURVE keys: 4 bytes become 5 printable
 * characters, so a 32-byte key is 40 characters, as `zmq.curve_keypair()` and
 * `zmq_z85_encode` write it.
 *
 * @example
 * ```ts
 * import { z85Decode, z85Encode } from "@kvport/nixl/wire";
 *
 * const text = z85Encode(new Uint8Array([0x86, 0x4f, 0xd2, 0x6f, 0xb5, 0x59, 0xf7, 0x5b]));
 * console.log(text, z85Decode(text).length); // HelloWorld 8
 * ```
 *
 * @module
 */

import { WireError } from "./errors.ts";

const ALPHABET =
  "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ.-:+=^!/*?&<>()[]{}@%$#";

const DIGITS: Int16Array = (() => {
  const d = new Int16Array(128).fill(-1);
  for (let i = 0; i < ALPHABET.length; i++) d[ALPHABET.charCodeAt(i)] = i;
  return d;
})();

/**
 * Encodes bytes as Z85.
 *
 * @param bytes the data; its length must be a multiple of 4
 * @returns the Z85 text (5 characters per 4 bytes)
 * @throws {WireError} when the length is not a multiple of 4
 *
 * @example
 * ```ts
 * import { z85Encode } from "@kvport/nixl/wire";
 *
 * console.log(z85Encode(new Uint8Array(32)).length); // 40
 * ```
 */
export function z85Encode(bytes: Uint8Array): string {
  if (bytes.length % 4 !== 0) {
    throw new WireError(`Z85 encodes a multiple of 4 bytes, got ${bytes.length}`);
  }
  let out = "";
  for (let i = 0; i < bytes.length; i += 4) {
    let value = ((bytes[i] << 24) | (bytes[i + 1] << 16) | (bytes[i + 2] << 8) | bytes[i + 3]) >>>
      0;
    const chunk = new Array<string>(5);
    for (let j = 4; j >= 0; j--) {
      chunk[j] = ALPHABET[value % 85];
      value = Math.floor(value / 85);
    }
    out += chunk.join("");
  }
  return out;
}

/**
 * Decodes Z85 text.
 *
 * @param text Z85 characters; the length must be a multiple of 5
 * @returns the bytes (4 per 5 characters)
 * @throws {WireError} naming the first character that is not Z85, or a bad length
 *
 * @example
 * ```ts
 * import { z85Decode } from "@kvport/nixl/wire";
 *
 * console.log(z85Decode("HelloWorld")); // Uint8Array(8) [134, 79, 210, 111, 181, 89, 247, 91]
 * ```
 */
export function z85Decode(text: string): Uint8Array {
  if (text.length % 5 !== 0) {
    throw new WireError(`Z85 text must be a multiple of 5 characters long, got ${text.length}`);
  }
  const out = new Uint8Array((text.length / 5) * 4);
  for (let i = 0, o = 0; i < text.length; i += 5, o += 4) {
    let value = 0;
    for (let j = 0; j < 5; j++) {
      const c = text.charCodeAt(i + j);
      const d = c < 128 ? DIGITS[c] : -1;
      if (d < 0) {
        throw new WireError(
          `not Z85: character ${JSON.stringify(text[i + j])} at offset ${i + j}`,
        );
      }
      value = value * 85 + d;
    }
    if (value > 0xffff_ffff) {
      throw new WireError(`not Z85: group at offset ${i} exceeds 32 bits`);
    }
    out[o] = value >>> 24;
    out[o + 1] = (value >>> 16) & 0xff;
    out[o + 2] = (value >>> 8) & 0xff;
    out[o + 3] = value & 0xff;
  }
  return out;
}
