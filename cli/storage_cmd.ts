/**
 * `kvport storage put|get|ls|stats`: the NIXL storage backend of a configuration from the
 * command line (put a file's bytes as a chunk, get a chunk to a file or stdout, list the
 * keys, print statistics).
 *
 * @module
 */
import * as fs from "node:fs";
import process from "node:process";
import { parseArgs } from "node:util";
import { ConfigError, loadConfig, type LoadConfigOptions } from "../src/config/mod.ts";
import { NixlStorageBackend, StorageError, type StorageStats } from "../src/storage/mod.ts";
import type { Command } from "./commands.ts";
import { err, out } from "./io.ts";

/**
 * The help of `kvport storage`.
 *
 * @example
 * ```ts
 * import { storageHelp } from "./storage_cmd.ts";
 * console.log(storageHelp());
 * ```
 */
export function storageHelp(): string {
  return [
    "Usage: kvport storage put   --config F --key K --file PATH",
    "       kvport storage get   --config F --key K [--file PATH]",
    "       kvport storage ls    --config F [--json]",
    "       kvport storage stats --config F [--json]",
    "",
    "Opens the NIXL storage backend that the configuration describes (extra_config:",
    "enable_nixl_storage, nixl_backend, nixl_pool_size, nixl_path, ...; nixl_buffer_size,",
    "nixl_buffer_device) and runs one operation on it. A static pool is locked while the",
    "command runs: stop the process that uses it first.",
    "",
    "  put    stores the bytes of PATH (at most one chunk) under key K",
    "  get    writes the chunk of key K to PATH, or to stdout; exit 1 when K is not stored",
    "  ls     lists the keys (static pool: least recently used first)",
    "  stats  slots used/free/pinned, bytes, hits/misses, index size",
    "",
    "Options:",
    "  -c, --config F        YAML configuration file (default: $LMCACHE_CONFIG_FILE);",
    "                        LMCACHE_* variables apply as usual",
    "  -k, --key K           the chunk's key",
    "  -f, --file PATH       input (put) or output (get) file",
    "      --chunk-bytes N   bytes of one chunk, needed when nixl_path holds no pool yet",
    "      --engine E        auto (default), builtin or nixl",
    "      --json            machine-readable output (ls, stats)",
    "  -h, --help            this help",
    "",
    "Exit codes: 0 success, 1 failure (or key not found), 2 usage or configuration error.",
  ].join("\n");
}

const OPS = ["put", "get", "ls", "stats"] as const;
type Op = (typeof OPS)[number];

function usageError(message: string): number {
  err(`kvport storage: ${message}\nRun "kvport storage --help" for the options.`);
  return 2;
}

async function runStorage(args: string[]): Promise<number> {
  let values;
  let positionals: string[];
  try {
    ({ values, positionals } = parseArgs({
      args,
      strict: true,
      allowPositionals: true,
      options: {
        config: { type: "string", short: "c" },
        key: { type: "string", short: "k" },
        file: { type: "string", short: "f" },
        "chunk-bytes": { type: "string" },
        engine: { type: "string" },
        json: { type: "boolean", default: false },
        help: { type: "boolean", short: "h", default: false },
      },
    }));
  } catch (e) {
    return usageError((e as Error).message);
  }
  if (values.help) {
    out(storageHelp());
    return 0;
  }
  const op = positionals[0] as Op | undefined;
  if (!op || !OPS.includes(op) || positionals.length > 1) {
    return usageError(
      `expected one of ${OPS.join(", ")}, got ${JSON.stringify(positionals.join(" ") || "(none)")}`,
    );
  }
  if ((op === "put" || op === "get") && !values.key) return usageError(`${op} needs --key K`);
  if (op === "put" && !values.file) return usageError("put needs --file PATH");
  let pageSize: number | undefined;
  if (values["chunk-bytes"] !== undefined) {
    pageSize = Number(values["chunk-bytes"]);
    if (!Number.isSafeInteger(pageSize) || pageSize <= 0) {
      return usageError(`--chunk-bytes expects an integer > 0, got ${values["chunk-bytes"]}`);
    }
  }
  const engine = values.engine ?? "auto";
  if (engine !== "auto" && engine !== "builtin" && engine !== "nixl") {
    return usageError(`--engine expects auto, builtin or nixl, got ${JSON.stringify(engine)}`);
  }

  const options: LoadConfigOptions = {};
  if (values.config !== undefined) options.file = values.config;
  let config;
  try {
    const loaded = loadConfig(options);
    for (const w of loaded.warnings) err(`warning: ${w.message}`);
    config = loaded.config;
  } catch (e) {
    if (!(e instanceof ConfigError)) throw e;
    err(`error: ${e.message}`);
    return 2;
  }

  let data: Uint8Array | undefined;
  if (op === "put") {
    try {
      data = new Uint8Array(fs.readFileSync(values.file!));
    } catch (e) {
      err(`error: cannot read ${values.file}: ${(e as Error).message}`);
      return 1;
    }
  }

  let store: NixlStorageBackend;
  try {
    store = await NixlStorageBackend.fromConfig(config, { pageSize, engine });
  } catch (e) {
    if (e instanceof StorageError) {
      err(`error: ${e.message}`);
      return e.code === "CONFIG" ? 2 : 1;
    }
    throw e;
  }
  try {
    for (const w of store.warnings) err(`warning: ${w}`);
    switch (op) {
      case "put": {
        const r = await store.put(values.key!, data!);
        if (!r.stored) {
          err(`error: ${values.key} not stored: ${r.reason}`);
          return 1;
        }
        out(`stored ${values.key} (${data!.length} bytes) in ${store.path}`);
        return 0;
      }
      case "get": {
        const bytes = await store.get(values.key!);
        if (!bytes) {
          err(`error: key ${JSON.stringify(values.key)} is not stored in ${store.path}`);
          return 1;
        }
        if (values.file) {
          fs.writeFileSync(values.file, bytes);
          out(`wrote ${bytes.length} bytes of ${values.key} to ${values.file}`);
        } else {
          await new Promise<void>((resolve, reject) =>
            process.stdout.write(bytes, (e) => (e ? reject(e) : resolve()))
          );
        }
        return 0;
      }
      case "ls": {
        const keys = await store.keys();
        if (values.json) out(JSON.stringify(keys));
        else if (keys.length) out(keys.join("\n"));
        return 0;
      }
      case "stats": {
        const s = await store.stats();
        out(values.json ? JSON.stringify(s, null, 2) : renderStats(s));
        return 0;
      }
    }
  } catch (e) {
    if (e instanceof StorageError) {
      err(`error: ${e.message}`);
      return 1;
    }
    throw e;
  } finally {
    await store.close().catch((e) => err(`error: closing: ${e}`));
  }
  return 0;
}

function renderStats(s: StorageStats): string {
  const mib = (n: number) => `${(n / (1 << 20)).toFixed(1)} MiB`;
  const lines = [
    `mode      ${s.mode} (${s.backend}, ${s.direct ? "O_DIRECT" : "buffered"})`,
    `path      ${s.path}`,
    `chunk     ${s.pageSize} bytes`,
    s.slots === null
      ? `keys      ${s.used}`
      : `slots     ${s.slots}: ${s.used} used, ${s.free} free, ${s.pinned} pinned`,
    `bytes     ${s.bytes} (${mib(s.bytes)})`,
    `hits      ${s.hits}, misses ${s.misses}`,
  ];
  for (const [k, v] of Object.entries(s.details)) lines.push(`${k.padEnd(9)} ${v}`);
  return lines.join("\n");
}

/**
 * The `kvport storage` command.
 *
 * @example
 * ```ts
 * import { storageCommand } from "./storage_cmd.ts";
 * const code = await storageCommand.run(["stats", "--config", "lmcache.yaml"]);
 * ```
 */
export const storageCommand: Command = {
  name: "storage",
  summary: "put, get, list and count KV chunks of the NIXL storage backend (put|get|ls|stats)",
  run: runStorage,
};
