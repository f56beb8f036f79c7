/**
 * Page handles: one page of a channel's buffer, in host memory or on a GPU. A page of a
 * GPU buffer is not viewable from JavaScript: it is a handle (address + device) whose
 * bytes are reached by copies, so code that fills or checks pages works the same for
 * `device: "cpu"` and `device: "cuda:N"` channels.
 *
 * @example
 * ```ts
 * import { createTransferChannel } from "@kvport/nixl";
 *
 * await using ch = await createTransferChannel({
 *   channelType: "mock_memory", role: "both", bufferSize: 8192, alignBytes: 4096,
 *   tpRank: 0, peerInitUrl: null,
 * });
 * const page = ch.page(1);
 * page.copyFrom(new Uint8Array([1, 2, 3]));
 * console.log(page.read(0, 3), page.checksum(0, 3));
 * ```
 * @module
 */

import type { NativeBuffer } from "../agent/buffers.ts";
import { ChannelError } from "./errors.ts";

/** Where a buffer lives: host memory or one CUDA device. */
export type BufferDevice = { kind: "cpu" } | { kind: "cuda"; ordinal: number };

/**
 * One page of a channel's buffer. Works for host and GPU pages alike: GPU pages are
 * filled and read through copies (`cudaMemcpy`), host pages through their view.
 *
 * @example
 * ```ts
 * import { type ChannelPage, createTransferChannel } from "@kvport/nixl";
 *
 * await using ch = await createTransferChannel({
 *   channelType: "mock_memory", role: "both", bufferSize: 4096, alignBytes: 1024,
 *   tpRank: 0, peerInitUrl: null,
 * });
 * const p: ChannelPage = ch.page(0);
 * p.copyFrom(new Uint8Array(1024).fill(7));
 * const back = new Uint8Array(1024);
 * p.copyTo(back);
 * console.log(back[0], p.device.kind); // 7 "cpu"
 * ```
 */
export interface ChannelPage {
  /** Page index in the channel's buffer. */
  readonly index: number;
  /** Bytes in the page. */
  readonly size: number;
  /** Where the page lives. */
  readonly device: BufferDevice;
  /** Address of the page's first byte (device address for GPU pages; 0n when the page
   * is not native memory, as in `mock_memory`). */
  readonly address: bigint;
  /** Copies `src` into the page at `offset` (bytes). */
  copyFrom(src: Uint8Array, offset?: number): void;
  /** Copies `dst.length` bytes from `offset` of the page into `dst`. */
  copyTo(dst: Uint8Array, offset?: number): void;
  /** A copy of `length` bytes from `offset` (default: the whole page). */
  read(offset?: number, length?: number): Uint8Array;
  /** 64-bit FNV-1a of `length` bytes from `offset`, as the native `kvp_mem_checksum`
   * computes it (GPU pages are staged through host memory). */
  checksum(offset?: number, length?: number): bigint;
}

function checkRange(page: ChannelPage, offset: number, length: number, op: string): void {
  if (
    !Number.isSafeInteger(offset) || !Number.isSafeInteger(length) || offset < 0 ||
    length < 0 || offset + length > page.size
  ) {
    throw new ChannelError(
      "INVALID_ARGUMENT",
      `page ${page.index}: ${op} of [${offset}, ${offset + length}) is outside the page of ` +
        `${page.size} bytes`,
      { op },
    );
  }
}

/** A page of a buffer allocated by the native library (DRAM or VRAM). @internal */
export class NativePage implements ChannelPage {
  /** Page index. */
  readonly index: number;
  /** Bytes in the page. */
  readonly size: number;
  /** Where the page lives. */
  readonly device: BufferDevice;
  readonly #buffer: NativeBuffer;
  readonly #offset: number;

  /** A page of `buffer` at `offset`. */
  constructor(buffer: NativeBuffer, index: number, offset: number, size: number) {
    this.#buffer = buffer;
    this.index = index;
    this.#offset = offset;
    this.size = size;
    this.device = buffer.memType === "VRAM"
      ? { kind: "cuda", ordinal: buffer.device }
      : { kind: "cpu" };
  }

  /** Address of the page's first byte. */
  get address(): bigint {
    return this.#buffer.address + BigInt(this.#offset);
  }

  /** Copies `src` into the page at `offset`. */
  copyFrom(src: Uint8Array, offset = 0): void {
    checkRange(this, offset, src.byteLength, "copyFrom");
    this.#buffer.copyFrom(src, this.#offset + offset);
  }

  /** Copies bytes from `offset` of the page into `dst`. */
  copyTo(dst: Uint8Array, offset = 0): void {
    checkRange(this, offset, dst.byteLength, "copyTo");
    this.#buffer.copyTo(dst, this.#offset + offset);
  }

  /** A copy of `length` bytes from `offset`. */
  read(offset = 0, length: number = this.size - offset): Uint8Array {
    checkRange(this, offset, length, "read");
    const out = new Uint8Array(length);
    this.#buffer.copyTo(out, this.#offset + offset);
    return out;
  }

  /** 64-bit FNV-1a of a range of the page. */
  checksum(offset = 0, length: number = this.size - offset): bigint {
    checkRange(this, offset, length, "checksum");
    return this.#buffer.checksum(this.#offset + offset, length);
  }
}

/** A page that is a `Uint8Array` view (host memory of `mock_memory`). @internal */
export class ViewPage implements ChannelPage {
  /** Page index. */
  readonly index: number;
  /** Bytes in the page. */
  readonly size: number;
  /** Always host memory. */
  readonly device: BufferDevice = { kind: "cpu" };
  /** Not native memory. */
  readonly address: bigint = 0n;
  readonly #view: Uint8Array;

  /** A page over `view`. */
  constructor(view: Uint8Array, index: number) {
    this.#view = view;
    this.index = index;
    this.size = view.byteLength;
  }

  /** Copies `src` into the page at `offset`. */
  copyFrom(src: Uint8Array, offset = 0): void {
    checkRange(this, offset, src.byteLength, "copyFrom");
    this.#view.set(src, offset);
  }

  /** Copies bytes from `offset` of the page into `dst`. */
  copyTo(dst: Uint8Array, offset = 0): void {
    checkRange(this, offset, dst.byteLength, "copyTo");
    dst.set(this.#view.subarray(offset, offset + dst.byteLength));
  }

  /** A copy of `length` bytes from `offset`. */
  read(offset = 0, length: number = this.size - offset): Uint8Array {
    checkRange(this, offset, length, "read");
    return this.#view.slice(offset, offset + length);
  }

  /** 64-bit FNV-1a of a range of the page. */
  checksum(offset = 0, length: number = this.size - offset): bigint {
    checkRange(this, offset, length, "checksum");
    return fnv1a64(this.#view.subarray(offset, offset + length));
  }
}

/**
 * 64-bit FNV-1a of `bytes` (the native `kvp_mem_checksum`), in 32-bit halves.
 *
 * @example
 * ```ts
 * import { fnv1a64 } from "./page.ts";
 * console.log(fnv1a64(new Uint8Array()).toString(16)); // "cbf29ce484222325"
 * ```
 */
export function fnv1a64(bytes: Uint8Array): bigint {
  let lo = 0x84222325, hi = 0xcbf29ce4;
  for (let i = 0; i < bytes.length; i++) {
    lo = (lo ^ bytes[i]) >>> 0;
    // (hi:lo) * 0x100000001b3 = (hi:lo) * 0x1b3 + (lo << 40)
    const l16 = lo & 0xffff, h16 = lo >>> 16;
    const a = l16 * 0x1b3;
    const b = h16 * 0x1b3 + (a >>> 16);
    const newLo = ((b & 0xffff) << 16 | (a & 0xffff)) >>> 0;
    const carry = Math.floor(b / 0x10000);
    hi = (Math.imul(hi, 0x1b3) + carry + (lo << 8)) >>> 0;
    lo = newLo;
  }
  return (BigInt(hi) << 32n) | BigInt(lo);
}
