/**
 * Files for FILE registration through the shim (`kvp_file_open`, `kvp_file_sync`,
 * `kvp_file_close`): the fd the engine reads and writes (NIXL: addr = offset, devId =
 * fd), opened with `O_DIRECT` where asked and the file system allows it. A file is a
 * handle of the shim: only its fds can be registered, and it stays open until closed
 * here (refused while registered), so a transfer never reaches a reused descriptor.
 *
 * @example
 * ```ts
 * import { NixlAgent } from "../agent.ts";
 * import { closeFile, openFile } from "./files.ts";
 * await using agent = await NixlAgent.create({ name: "files", engine: "builtin", backends: ["POSIX"] });
 * const f = openFile(agent, "/tmp/kvport-example.bin", { create: true, size: 1 << 20 });
 * const reg = agent.registerMemory([{ fd: f.fd, offset: 0, length: 1 << 20 }]);
 * reg.deregister(); // a registered file cannot be closed
 * closeFile(agent, f);
 * ```
 * @module
 */

import { check, cString, OUT_I32, OUT_I32_B, OUT_U64 } from "../../ffi/native.ts";
import { NixlError, Status } from "../errors.ts";
import type { NixlAgent } from "../agent.ts";
import { agentLibraries } from "./desc_list.ts";
import type { NativeLib } from "../../ffi/mod.ts";

/**
 * `kvp_file_open` flag: create the file when missing (mode 0644).
 *
 * @example
 * ```ts
 * import { KVP_FILE_CREATE } from "./files.ts";
 * console.log(KVP_FILE_CREATE); // 1
 * ```
 */
export const KVP_FILE_CREATE = 1;
/**
 * `kvp_file_open` flag: O_DIRECT (dropped where the file system refuses it).
 *
 * @example
 * ```ts
 * import { KVP_FILE_DIRECT } from "./files.ts";
 * console.log(KVP_FILE_DIRECT); // 2
 * ```
 */
export const KVP_FILE_DIRECT = 2;
/**
 * `kvp_file_open` flag: truncate to 0 first.
 *
 * @example
 * ```ts
 * import { KVP_FILE_TRUNCATE } from "./files.ts";
 * console.log(KVP_FILE_TRUNCATE); // 4
 * ```
 */
export const KVP_FILE_TRUNCATE = 4;

/**
 * How {@linkcode openFile} opens a file.
 *
 * @example
 * ```ts
 * import type { OpenFileOptions } from "./files.ts";
 * const o: OpenFileOptions = { create: true, direct: true, size: 1 << 20 };
 * ```
 */
export interface OpenFileOptions {
  /** Create it when missing. */
  create?: boolean;
  /** Ask for O_DIRECT; see {@linkcode NativeFile.direct} for what was granted. */
  direct?: boolean;
  /** Truncate it to 0 first. */
  truncate?: boolean;
  /** Make it at least this many bytes (fallocate, else ftruncate). */
  size?: number | bigint;
}

/**
 * A file opened by the shim, for FILE registration.
 *
 * @example
 * ```ts
 * import { type NativeFile, openFile } from "./files.ts";
 * import type { NixlAgent } from "../agent.ts";
 * declare const agent: NixlAgent;
 * const f: NativeFile = openFile(agent, "/tmp/x.bin", { create: true });
 * ```
 */
export interface NativeFile {
  /** The shim's handle of the file (`kvp_file_sync`, `kvp_file_close`). */
  readonly handle: bigint;
  /** The file descriptor (the `fd` of a FILE region). */
  readonly fd: number;
  /** Whether it is open with O_DIRECT (false when not asked, or refused). */
  readonly direct: boolean;
  /** The path it was opened at. */
  readonly path: string;
}

function libOf(agent: NixlAgent, fn: string): NativeLib {
  const lib = agentLibraries.get(agent);
  if (!lib || lib.closed || agent.closed) {
    throw new NixlError(Status.ERR_NOT_FOUND, fn, `agent "${agent.name}" is closed`);
  }
  return lib;
}

/**
 * Opens a file through the shim (`kvp_file_open`). A full disk, a denied permission and
 * the like fail `NIXL_ERR_BACKEND` with the path and the system's reason.
 *
 * @example
 * ```ts
 * import { NixlAgent } from "../agent.ts";
 * import { openFile } from "./files.ts";
 * declare const agent: NixlAgent;
 * const f = openFile(agent, "/data/slot-0.bin", { create: true, direct: true, size: 1 << 21 });
 * console.log(f.fd, f.direct);
 * ```
 */
export function openFile(
  agent: NixlAgent,
  path: string,
  options: OpenFileOptions = {},
): NativeFile {
  const lib = libOf(agent, "openFile");
  const flags = (options.create ? KVP_FILE_CREATE : 0) | (options.direct ? KVP_FILE_DIRECT : 0) |
    (options.truncate ? KVP_FILE_TRUNCATE : 0);
  const size = BigInt(options.size ?? 0);
  check(
    lib,
    lib.symbols.kvp_file_open(cString(path, "path"), flags, size, OUT_U64, OUT_I32, OUT_I32_B),
    "kvp_file_open",
    `opening ${path}`,
  );
  return { handle: OUT_U64[0], fd: OUT_I32[0], direct: OUT_I32_B[0] !== 0, path };
}

/**
 * `fdatasync` of a file from {@linkcode openFile} (blocks the calling thread).
 *
 * @example
 * ```ts
 * import { NixlAgent } from "../agent.ts";
 * import { type NativeFile, syncFile } from "./files.ts";
 * declare const agent: NixlAgent;
 * declare const f: NativeFile;
 * syncFile(agent, f);
 * ```
 */
export function syncFile(agent: NixlAgent, file: NativeFile): void {
  const lib = libOf(agent, "syncFile");
  check(lib, lib.symbols.kvp_file_sync(file.handle), "kvp_file_sync", `syncing ${file.path}`);
}

/**
 * Closes a file from {@linkcode openFile}. A file still registered is refused
 * (`NIXL_ERR_NOT_ALLOWED`: deregister it first); a second close is `NIXL_ERR_NOT_FOUND`.
 *
 * @example
 * ```ts
 * import { NixlAgent } from "../agent.ts";
 * import { closeFile, type NativeFile } from "./files.ts";
 * declare const agent: NixlAgent;
 * declare const f: NativeFile;
 * closeFile(agent, f);
 * ```
 */
export function closeFile(agent: NixlAgent, file: NativeFile): void {
  const lib = libOf(agent, "closeFile");
  check(lib, lib.symbols.kvp_file_close(file.handle), "kvp_file_close", `closing ${file.path}`);
}
