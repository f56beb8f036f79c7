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
import { ConfigError } from "../src/config/mod.ts";
import { NixlStorageBackend, StorageError, type StorageStats } from "../src/storage/mod.ts";
import { load, UsageError } from "./args.ts";
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
    ...Object.values(USAGE).map((u, i) => `${i === 0 ? "Usage: " : "       "}${u}`),
    "",
    "Opens the NIXL storage backend that the configuration describes (extra_config:",
    "enable_nixl_storage, nixl_backend, nixl_pool_size, nixl_path, ...; nixl_buffer_size,",
    "nixl_buffer_device) and runs one operation on it. A static pool is locked while the",
    "command runs: stop the process that uses it first.",
    "",
    "The key and the file may also be given in place: `kvport storage get --config F KEY`,",
    "`kvport storage put --config F KEY PATH`.",
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

/** The usage line of each operation. */
const USAGE: Readonly<Record<Op, string>> = {
  put: "kvport storage put   --config F [--key] K [--file] PATH [--chunk-bytes N]",
  get: "kvport storage get   --config F [--key] K [--file PATH]",
  ls: "kvport storage ls    --config F [--json]",
  stats: "kvport storage stats --config F [--json]",
};

function usageError(message: string, op?: Op): number {
  err(
    `kvport storage${op ? ` ${op}` : ""}: ${message}\n` +
      (op ? `Usage: ${USAGE[op]}` : `Run "kvport storage --help" for the options.`),
  );
  return 2;
}

/**
 * Library terms in a storage error, as the command line says them: the chunk size the
 * library calls `pageSize` is `--chunk-bytes` here.
 *
 * @example
 * ```ts
 * import { inCliTerms } from "./storage_cmd.ts";
 * console.log(inCliTerms("Pass pageSize (bytes of one KV chunk)", false));
 * // Pass --chunk-bytes N (bytes of one KV chunk)
 * ```
 */
export function inCliTerms(message: string, chunkBytesGiven: boolean): string {
  let m = message.replace(/\bPass pageSize\b/g, "Pass --chunk-bytes N")
    .replace(/\bpageSize\b/g, "--chunk-bytes");
  if (chunkBytesGiven) {
    m = m.replace(
      /this backend uses (\d+) \((\d+)\)/g,
      "--chunk-bytes is $1 (slot files of $2 bytes)",
    )
      .replace(/this backend uses (\d+)/g, "--chunk-bytes is $1");
  }
  return m;
}

/** A positional that looks like the configuration file, given where the key goes. */
function looksLikeConfig(arg: string): boolean {
  return /\.ya?ml$/i.test(arg);
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
  const [first, ...rest] = positionals;
  if (first === undefined) {
    return usageError(`expected an operation: ${OPS.join(", ")}`);
  }
  if (!OPS.includes(first as Op)) {
    return usageError(
      `unknown operation ${JSON.stringify(first)}: expected one of ${OPS.join(", ")}` +
        (looksLikeConfig(first) ? ` (the configuration goes after --config)` : ""),
    );
  }
  const op = first as Op;
  const places = op === "put" ? ["key", "file"] : op === "get" ? ["key"] : [];
  const given: Record<string, string | undefined> = { key: values.key, file: values.file };
  for (const [i, arg] of rest.entries()) {
    const place = places[i];
    if (place === undefined || given[place] !== undefined) {
      const why = looksLikeConfig(arg)
        ? ` (a configuration file? it goes after --config: --config ${arg})`
        : place === undefined
        ? ""
        : ` (--${place} is given already)`;
      return usageError(`unexpected argument ${JSON.stringify(arg)}${why}`, op);
    }
    if (place === "key" && looksLikeConfig(arg) && values.config === undefined) {
      return usageError(
        `${JSON.stringify(arg)} looks like a configuration file, not a key: ` +
          `--config ${arg}`,
        op,
      );
    }
    given[place] = arg;
  }
  const key = given.key;
  const file = given.file;
  if ((op === "put" || op === "get") && !key) return usageError(`${op} needs a key`, op);
  if (op === "put" && !file) return usageError("put needs the file to store", op);
  let pageSize: number | undefined;
  if (values["chunk-bytes"] !== undefined) {
    pageSize = Number(values["chunk-bytes"]);
    if (
      !/^\d+$/.test(values["chunk-bytes"].trim()) || !Number.isSafeInteger(pageSize) ||
      pageSize <= 0
    ) {
      return usageError(
        `--chunk-bytes expects an integer > 0, got ${JSON.stringify(values["chunk-bytes"])}`,
        op,
      );
    }
  }
  const engine = values.engine ?? "auto";
  if (engine !== "auto" && engine !== "builtin" && engine !== "nixl") {
    return usageError(`--engine expects auto, builtin or nixl, got ${JSON.stringify(engine)}`, op);
  }

  let config;
  try {
    config = load(values.config);
  } catch (e) {
    if (e instanceof UsageError) return usageError(e.message, op);
    if (!(e instanceof ConfigError)) throw e;
    err(`kvport storage: ${e.message}`);
    return 2;
  }

  let data: Uint8Array | undefined;
  if (op === "put") {
    try {
      data = new Uint8Array(fs.readFileSync(file!));
    } catch (e) {
      err(`kvport storage put: cannot read ${file}: ${(e as Error).message}`);
      return 1;
    }
  }
  const chunkBytesGiven = pageSize !== undefined;

  let store: NixlStorageBackend;
  try {
    store = await NixlStorageBackend.fromConfig(config, { pageSize, engine });
  } catch (e) {
    if (e instanceof StorageError) {
      err(`kvport storage ${op}: ${inCliTerms(e.message, chunkBytesGiven)}`);
      return e.code === "CONFIG" ? 2 : 1;
    }
    throw e;
  }
  try {
    for (const w of store.warnings) err(`warning: ${inCliTerms(w, chunkBytesGiven)}`);
    switch (op) {
      case "put": {
        const r = await store.put(key!, data!);
        if (!r.stored) {
          err(`kvport storage put: ${key} not stored: ${r.reason}`);
          return 1;
        }
        out(`stored ${key} (${data!.length} bytes) in ${store.path}`);
        return 0;
      }
      case "get": {
        const bytes = await store.get(key!);
        if (!bytes) {
          err(`kvport storage get: key ${JSON.stringify(key)} is not stored in ${store.path}`);
          return 1;
        }
        if (file) {
          fs.writeFileSync(file, bytes);
          out(`wrote ${bytes.length} bytes of ${key} to ${file}`);
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
      err(`kvport storage ${op}: ${inCliTerms(e.message, chunkBytesGiven)}`);
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
