// The entry point Node.js resolves (package.json "exports", condition "node"): the
// package drives its native library through Deno.dlopen or bun:ffi, and Node.js has no
// FFI, so importing it there stops here with one sentence instead of a loader error.
throw new Error(
  "@kvport/nixl runs on Deno and Bun only: it calls its native library through Deno.dlopen or bun:ffi, and Node.js has no FFI.",
);
