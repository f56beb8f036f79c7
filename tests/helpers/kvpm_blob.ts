/**
 * The builtin engine's metadata blob ("KVPM", version 2, native/src/metadata.h) as an
 * attacker who saw one on the wire reads and rewrites it: the regions it lists (where
 * the victim's pages are), and a forged copy under another name that keeps every claim
 * of locality (boot id, pid namespace, pid, start time, agent page) with a valid
 * checksum and a process tag nobody outside the victim can compute.
 *
 * @module
 */

const MAGIC = [0x4b, 0x56, 0x50, 0x4d];

/** What a blob says, with the offsets a forger needs. */
export interface KvpmBlob {
  name: string;
  token: Uint8Array;
  host: string;
  port: number;
  pid: number;
  /** Registered regions: memory type, address, length. */
  regions: { memType: number; addr: bigint; len: bigint }[];
  /** Offset of the token (right after the name). */
  tokenAt: number;
  /** Offset of host_len. */
  hostAt: number;
}

/** Parses a blob (throws on anything unexpected: this is a test helper). */
export function parseKvpm(blob: Uint8Array): KvpmBlob {
  if (MAGIC.some((b, i) => blob[i] !== b)) throw new Error("not a KVPM blob");
  const v = new DataView(blob.buffer, blob.byteOffset, blob.byteLength);
  const dec = new TextDecoder();
  let at = 8;
  const nl = blob[at++];
  const name = dec.decode(blob.subarray(at, at + nl));
  at += nl;
  const tokenAt = at;
  const token = blob.slice(at, at + 16);
  at += 16 + 16 + 8; // token, boot id, pidns
  const pid = v.getUint32(at, true);
  at += 4 + 8; // pid, start time
  const hostAt = at;
  const hl = blob[at++];
  const host = dec.decode(blob.subarray(at, at + hl));
  at += hl;
  const port = v.getUint16(at, true);
  at += 2 + 4 + 4 + 8 + 8; // port, caps, page_fd, page_ino, page_size
  const n = v.getUint32(at, true);
  at += 4;
  const regions = [];
  for (let i = 0; i < n; i++) {
    const memType = blob[at];
    const flags = blob[at + 1];
    const addr = v.getBigUint64(at + 2, true);
    const len = v.getBigUint64(at + 10, true);
    at += 2 + 24;
    if (flags & 1) at += 4 + 24; // memfd, ino, off, size
    if (flags & 2) at += 64 + 8; // CUDA IPC handle, offset
    regions.push({ memType, addr, len });
  }
  if (at + 24 !== blob.length) throw new Error(`KVPM blob: ${blob.length - at} bytes at the end`);
  return { name, token, host, port, pid, regions, tokenAt, hostAt };
}

function fnv1a64(bytes: Uint8Array): bigint {
  let h = 0xcbf29ce484222325n;
  for (const b of bytes) {
    h ^= BigInt(b);
    h = (h * 0x100000001b3n) & 0xffff_ffff_ffff_ffffn;
  }
  return h;
}

/**
 * A copy of `blob` under `name`, keeping everything else (token unless `token` is
 * given), with a random process tag and a correct checksum.
 */
export function forgeKvpm(blob: Uint8Array, name: string, token?: Uint8Array): Uint8Array {
  const parsed = parseKvpm(blob);
  const nameBytes = new TextEncoder().encode(name);
  const body = blob.subarray(parsed.tokenAt, blob.length - 24);
  const out = new Uint8Array(9 + nameBytes.length + body.length + 24);
  out.set(blob.subarray(0, 8));
  out[8] = nameBytes.length;
  out.set(nameBytes, 9);
  out.set(body, 9 + nameBytes.length);
  if (token) out.set(token, 9 + nameBytes.length);
  const tagAt = out.length - 24;
  crypto.getRandomValues(out.subarray(tagAt, tagAt + 16));
  new DataView(out.buffer).setBigUint64(tagAt + 16, fnv1a64(out.subarray(0, tagAt + 16)), true);
  return out;
}
