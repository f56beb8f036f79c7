/*
 * kvport.h - the whole C surface of the @kvport/nixl native shim.
 *
 * One flat C ABI that both Deno (Deno.dlopen) and Bun (bun:ffi) can call, shaped after
 * NIXL's agent model so that an engine over libnixl and the built-in engine sit behind
 * the same functions.
 *
 * Rules of this ABI (they exist because of FFI limits, see shared/reference/ffi.md):
 *  - every function returns an int32_t status equal to NIXL's nixl_status_t, or a plain
 *    value where noted; results go through out-parameters;
 *  - no struct by value, no callbacks, no optional symbols: capabilities are queried;
 *  - objects are opaque uint64_t handles from a handle table, never raw pointers, so a
 *    released or foreign handle is an error (NIXL_ERR_NOT_FOUND), never a crash;
 *  - strings in are NUL-terminated UTF-8; byte blobs in are (pointer, length);
 *  - blobs and strings out use the "sized out" convention: (uint8_t *buf, uint64_t cap,
 *    uint64_t *len). *len always receives the full size; the bytes are copied only when
 *    cap >= *len (no NUL is written). A caller with too small a buffer retries with *len.
 *  - after a failing call, kvp_last_error() gives the calling thread's message. The
 *    waits (kvp_xfer_wait, kvp_notif_wait), which a runtime may run on a thread of its
 *    own, also hand their message back with the call: (msg, cap, msg_len), msg
 *    NUL-terminated and truncated to cap - 1 bytes, *msg_len its full length (0 when
 *    the call did not fail); msg may be NULL. A request's own failure is also kept on
 *    it: kvp_xfer_message().
 *  - every blocking function takes a timeout in milliseconds; none blocks forever.
 */
#ifndef KVPORT_H
#define KVPORT_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/** Bumped on any incompatible change of this header. */
#define KVP_ABI_VERSION 5

/* Status codes: the values of NIXL's nixl_status_t. */
#define KVP_IN_PROG 1
#define KVP_SUCCESS 0
#define KVP_ERR_NOT_POSTED (-1)
#define KVP_ERR_INVALID_PARAM (-2)
#define KVP_ERR_BACKEND (-3)
#define KVP_ERR_NOT_FOUND (-4)
#define KVP_ERR_MISMATCH (-5)
#define KVP_ERR_NOT_ALLOWED (-6)
#define KVP_ERR_REPOST_ACTIVE (-7)
#define KVP_ERR_UNKNOWN (-8)
#define KVP_ERR_NOT_SUPPORTED (-9)
#define KVP_ERR_REMOTE_DISCONNECT (-10)
#define KVP_ERR_CANCELED (-11)
#define KVP_ERR_NO_TELEMETRY (-12)

/* Memory types: NIXL's nixl_mem_t values. One memory type per descriptor list. */
#define KVP_DRAM 0
#define KVP_VRAM 1
#define KVP_BLK 2
#define KVP_OBJ 3
#define KVP_FILE 4

/* Transfer operations: NIXL's nixl_xfer_op_t values. */
#define KVP_READ 0
#define KVP_WRITE 1

/* ---------------------------------------------------------------- library ---- */

/** KVP_ABI_VERSION of the compiled library. */
uint32_t kvp_abi_version(void);

/** Static name of a status, e.g. "NIXL_ERR_NOT_FOUND"; "NIXL_ERR_UNKNOWN_STATUS" for a
 *  value outside the table. Never NULL. */
const char *kvp_status_name(int32_t status);

/** Copies the calling thread's last error message (NUL-terminated, truncated to cap-1
 *  bytes) into buf and returns its full length; 0 when there is none. */
uint64_t kvp_last_error(char *buf, uint64_t cap);

/** Comma-separated engines compiled into this library: "builtin" or "builtin,nixl". */
int32_t kvp_engines(uint8_t *buf, uint64_t cap, uint64_t *len);

/** A report on one engine ("builtin", "nixl", "auto") as "key=value\n" lines:
 *  available=0|1, reason=... (why not), plugins=UCX,POSIX,... (backends it serves),
 *  searched=... (paths looked at for NIXL), version=... */
int32_t kvp_engine_probe(const char *engine, uint8_t *buf, uint64_t cap, uint64_t *len);

/** Number of CUDA devices. Without libcudart (or without a GPU) returns
 *  KVP_ERR_NOT_SUPPORTED, *count = 0, and a last error saying what was tried. */
int32_t kvp_cuda_device_count(int32_t *count);

/* ----------------------------------------------------------------- memory ---- */

/** Allocates size bytes of mem_type on device dev (DRAM: dev holds KVP_DRAM_* flags, 0
 *  for the default; VRAM: CUDA ordinal). DRAM comes from a shared-memory file mapped
 *  MAP_SHARED and page-aligned, so a same-host peer can map it directly; VRAM from
 *  cudaMalloc. DRAM is pre-faulted. Freed only by kvp_mem_free (never by an agent). */
int32_t kvp_mem_alloc(int32_t mem_type, int32_t dev, uint64_t size, uint64_t *out_addr);

/* Flags of kvp_mem_alloc for DRAM (in dev). */
#define KVP_DRAM_PRIVATE 1 /* private anonymous memory with transparent huge pages advised,
                              for buffers never shared with a peer (e.g. storage staging:
                              O_DIRECT and copies are faster on huge pages where shared
                              memory gets none). Same-host peers still reach it, through
                              cross-memory attach instead of a shared mapping. */
#define KVP_DRAM_SPARSE 2  /* not pre-faulted: pages are allocated when first touched (a
                              large receive buffer that is filled over time, or a
                              benchmark of peers' footprints) */

/** Frees memory from kvp_mem_alloc. Unknown addresses: KVP_ERR_NOT_FOUND. */
int32_t kvp_mem_free(uint64_t addr);

/** Copies len bytes between any two DRAM/VRAM addresses (memcpy or cudaMemcpy). */
int32_t kvp_mem_copy(int32_t dst_type, int32_t dst_dev, uint64_t dst, int32_t src_type,
                     int32_t src_dev, uint64_t src, uint64_t len);

/** 64-bit FNV-1a checksum of len bytes at addr (VRAM is staged through host memory). */
int32_t kvp_mem_checksum(int32_t mem_type, int32_t dev, uint64_t addr, uint64_t len,
                         uint64_t *out_sum);

/* ------------------------------------------------------------------ agent ---- */

/** Creates an agent.
 *  name:     unique agent name (1..255 bytes).
 *  engine:   "auto" | "builtin" | "nixl". "nixl" without NIXL fails KVP_ERR_NOT_SUPPORTED
 *            with "NIXL is not available" and the paths searched.
 *  backends: comma-separated backend names, e.g. "UCX", "TCP", "POSIX". The builtin
 *            engine serves UCX (same host: shared memory or cross-memory attach; other
 *            hosts: TCP), TCP (always TCP) and POSIX (files); anything else is
 *            KVP_ERR_NOT_SUPPORTED naming the engine that would serve it.
 *  params:   "key=value" lines ("" or NULL for none). Builtin keys: listen_host
 *            (default 127.0.0.1; 0.0.0.0 only when asked), listen_port (0 = ephemeral),
 *            advertise_host (address put in metadata; default listen_host when specific,
 *            else the first non-loopback IPv4, else 127.0.0.1), io_threads, and the
 *            limits of native/README.md. "BACKEND.key=value" lines go to that backend. */
int32_t kvp_agent_create(const char *name, const char *engine, const char *backends,
                         const char *params, uint64_t *out_agent);

/** Destroys an agent: cancels and releases its requests, lists, registrations, remote
 *  agents and connections; wakes any thread blocked in a wait on it (KVP_ERR_CANCELED)
 *  and returns only after they have left. A second destroy: KVP_ERR_NOT_FOUND. */
int32_t kvp_agent_destroy(uint64_t agent);

/** "key=value\n" facts: name, engine, backends, listen (host:port). */
int32_t kvp_agent_info(uint64_t agent, uint8_t *buf, uint64_t cap, uint64_t *len);

/* ----------------------------------------------------------- registration ---- */

/** Registers count regions of one memory type with the agent, in one call.
 *  DRAM: addr = host address; VRAM: addr = device address, dev = CUDA ordinal;
 *  FILE: addr = offset, len = bytes (0: up to the file's size), dev = open fd.
 *  meta: for OBJ, '\n'-separated object keys (one per region); NULL otherwise.
 *  Memory must stay valid until kvp_deregister. */
int32_t kvp_register(uint64_t agent, int32_t mem_type, const uint64_t *addrs,
                     const uint64_t *lens, const uint64_t *devs, uint64_t count,
                     const char *meta, uint64_t *out_reg);

/** Deregisters what one kvp_register call registered. */
int32_t kvp_deregister(uint64_t agent, uint64_t reg);

/* --------------------------------------------------------------- metadata ---- */

/** This agent's metadata blob (name, how to reach it, registered regions). */
int32_t kvp_local_metadata(uint64_t agent, uint8_t *buf, uint64_t cap, uint64_t *len);

/** Loads a peer's metadata blob; writes the peer's name (sized out). Loading a name that
 *  is already loaded with different connection info (a restarted peer) fails
 *  KVP_ERR_NOT_ALLOWED until kvp_invalidate_remote; identical info is a no-op. A blob
 *  that does not parse is KVP_ERR_MISMATCH, never a crash. */
int32_t kvp_load_remote_metadata(uint64_t agent, const uint8_t *blob, uint64_t len,
                                 uint8_t *name_buf, uint64_t cap, uint64_t *name_len);

/** Forgets a peer: its connection is closed and its prepared lists and requests fail
 *  with KVP_ERR_NOT_FOUND from then on. */
int32_t kvp_invalidate_remote(uint64_t agent, const char *remote_name);

/* ------------------------------------------------------- descriptor lists ---- */

/** Builds a descriptor list of count (addr, len, dev) of one memory type, in one call. */
int32_t kvp_dlist_create(int32_t mem_type, const uint64_t *addrs, const uint64_t *lens,
                         const uint64_t *devs, uint64_t count, uint64_t *out_dlist);

/** Serialized form of a list (to send to a peer). */
int32_t kvp_dlist_serialize(uint64_t dlist, uint8_t *buf, uint64_t cap, uint64_t *len);

/** Rebuilds a list from bytes; malformed bytes are KVP_ERR_MISMATCH. */
int32_t kvp_dlist_deserialize(const uint8_t *buf, uint64_t len, uint64_t *out_dlist);

/** Number of descriptors and memory type of a list. */
int32_t kvp_dlist_info(uint64_t dlist, uint64_t *count, int32_t *mem_type);

/** Releases a list built by kvp_dlist_create or kvp_dlist_deserialize. */
int32_t kvp_dlist_release(uint64_t dlist);

/** Prepares a list for transfers (NIXL prepXferDlist). remote: "" for the local side, a
 *  loaded peer's name for its side, this agent's own name for loopback (e.g. DRAM <->
 *  FILE). Every descriptor must lie inside memory registered by that side:
 *  otherwise KVP_ERR_INVALID_PARAM naming the first descriptor that does not. */
int32_t kvp_prep_dlist(uint64_t agent, const char *remote, uint64_t dlist,
                       uint64_t *out_prepped);

/** Releases a prepared list. */
int32_t kvp_prepped_release(uint64_t agent, uint64_t prepped);

/* -------------------------------------------------------------- transfers ---- */

/** Makes a transfer request (NIXL makeXferReq): local_idx[i] of local_prepped pairs with
 *  remote_idx[i] of remote_prepped; lengths must match pairwise (KVP_ERR_MISMATCH).
 *  Consecutive descriptors are merged. notif/notif_len: optional notification delivered
 *  to the remote after all the data has landed (NULL/0 for none). */
int32_t kvp_xfer_create(uint64_t agent, int32_t op, uint64_t local_prepped,
                        const uint32_t *local_idx, uint64_t remote_prepped,
                        const uint32_t *remote_idx, uint64_t count, const uint8_t *notif,
                        uint64_t notif_len, uint64_t *out_req);

/** Posts a request: KVP_IN_PROG, KVP_SUCCESS (completed inline) or an error. A done
 *  request may be posted again; an active one is KVP_ERR_REPOST_ACTIVE. */
int32_t kvp_xfer_post(uint64_t agent, uint64_t req);

/** Current state without blocking: KVP_IN_PROG, KVP_SUCCESS or the error. */
int32_t kvp_xfer_status(uint64_t agent, uint64_t req);

/** Blocks up to timeout_ms (>= 0) for the request to finish: KVP_SUCCESS, its error, or
 *  KVP_IN_PROG when the time ran out. KVP_ERR_CANCELED when the request or agent is
 *  released meanwhile. The message of a failure comes back in msg (see the rules). */
int32_t kvp_xfer_wait(uint64_t agent, uint64_t req, int64_t timeout_ms, uint8_t *msg,
                      uint64_t cap, uint64_t *msg_len);

/** The message of a failed request (sized out; empty when none). */
int32_t kvp_xfer_message(uint64_t agent, uint64_t req, uint8_t *buf, uint64_t cap,
                         uint64_t *len);

/** Releases a request. An active request is cancelled first; no byte is touched after
 *  this returns. */
int32_t kvp_xfer_release(uint64_t agent, uint64_t req);

/* ---------------------------------------------------------- notifications ---- */

/** Sends a notification (any bytes, at most 64 KiB) to a loaded peer. */
int32_t kvp_notif_send(uint64_t agent, const char *remote, const uint8_t *msg,
                       uint64_t len);

/** Takes queued notifications as records: u32le name_len, name, u32le msg_len, msg.
 *  Only whole records that fit in cap are taken; *count records, *len bytes written.
 *  When even the first does not fit: nothing is taken, *count = 0, *len = its size. */
int32_t kvp_notif_take(uint64_t agent, uint8_t *buf, uint64_t cap, uint64_t *len,
                       uint64_t *count);

/** Blocks up to timeout_ms until at least one notification is queued: KVP_SUCCESS, or
 *  KVP_IN_PROG when the time ran out, KVP_ERR_CANCELED when the agent is destroyed. The
 *  message of a failure comes back in msg (see the rules). */
int32_t kvp_notif_wait(uint64_t agent, int64_t timeout_ms, uint8_t *msg, uint64_t cap,
                       uint64_t *msg_len);

/** An event descriptor for event loops that cannot block in kvp_xfer_wait or
 *  kvp_notif_wait (Bun has no nonblocking FFI): *fd becomes readable whenever one of
 *  this agent's requests finishes (done, failed or cancelled) or a notification is
 *  queued, and at kvp_agent_destroy. Each event is one byte, written without blocking
 *  and coalesced (when the reader is behind, the bytes already there wake it): read
 *  and discard whatever is there, then check kvp_xfer_status / kvp_notif_take. The
 *  caller owns *fd (a nonblocking, close-on-exec UNIX stream socket) and closes it;
 *  kvp_agent_destroy closes the other end, so a reader sees end of file. Once per agent
 *  (again: KVP_ERR_NOT_ALLOWED). Builtin engine only (else KVP_ERR_NOT_SUPPORTED: the nixl
 *  engine has kvp_event_notify, for both runtimes). With it handed out, GPU copies of a
 *  request complete on a worker thread (which signals) rather than in the waiter's status
 *  poll. */
int32_t kvp_event_fd(uint64_t agent, int32_t *fd);

/** What kvp_event_notify calls: ctx is the value given there. */
typedef void (*kvp_event_fn)(uint64_t ctx);

/* Flags of kvp_event_notify. */
/** fn returns at once and never calls this library (Bun's threadsafe callbacks queue
 *  the call to the event loop): call it from the thread where the event happens, once
 *  that thread holds no lock of the library, and no notifier thread. Events coalesce
 *  until kvp_event_ack: after a call, none is made until the caller acknowledged it. */
#define KVP_EVENT_DIRECT 1u

/** Calls fn(ctx) after this agent's requests finish or notifications are queued (the
 *  events of kvp_event_fd), for runtimes whose thread-safe callbacks wake their event
 *  loop (Deno, Bun). By default on a thread of the agent's own (its notifier, started
 *  here), and events coalesce: the notifier sleeps (condition variable, no spinning)
 *  until one is signalled, then makes one call for all that came before it; events
 *  during a call make one more call after it. fn runs with no lock of the library held
 *  and may block (Deno's thread-safe callbacks block until the event loop ran them):
 *  nothing else waits for this thread. With KVP_EVENT_DIRECT in flags (fn never
 *  blocks): no notifier thread, see the flag. kvp_agent_destroy only tells the notifier
 *  to stop: it never waits for a call in progress, and no call starts once it returned
 *  (one in progress finishes). Check kvp_xfer_status / kvp_notif_take after each call.
 *  Once per agent (again: KVP_ERR_NOT_ALLOWED); fn must not be NULL, flags only
 *  KVP_EVENT_DIRECT. Both engines. On the nixl engine (NIXL has no completion callback) a
 *  watcher thread of the engine polls the agent's posted requests (from 50 us after the
 *  post) and NIXL's notifications (at least every 1 ms) and signals; a direct call then
 *  runs on that thread, and a request whose end a kvp_xfer_status call saw first makes no
 *  call (that caller knows). On the builtin engine, like kvp_event_fd, it makes GPU copies
 *  complete on a worker thread. Before fn's code goes away (the callback is closed, the
 *  library unloaded), call kvp_event_quiesce(fn). */
int32_t kvp_event_notify(uint64_t agent, kvp_event_fn fn, uint64_t ctx, uint32_t flags);

/** KVP_EVENT_DIRECT: the call of fn was run (call it there, before checking statuses):
 *  the next event calls fn again. A no-op for other notifiers (and before
 *  kvp_event_notify). Both engines. */
int32_t kvp_event_ack(uint64_t agent);

/** Stops every notifier that calls fn (of live agents too: they get no more calls) and
 *  waits up to timeout_ms for their threads to exit (KVP_EVENT_DIRECT: for the calls in
 *  progress to return): KVP_SUCCESS once none is left (no call of fn is running or will
 *  start), else KVP_IN_PROG (a call still running: keep fn's code loaded). Deno must run
 *  it as a nonblocking call: a notifier blocked in a Deno callback returns only once the
 *  event loop ran it. */
int32_t kvp_event_quiesce(kvp_event_fn fn, int64_t timeout_ms);

/* ----------------------------------------------------------------- grants ---- */

/* Access of kvp_grant. */
#define KVP_GRANT_READ 1u  /* the peer may READ the ranges */
#define KVP_GRANT_WRITE 2u /* the peer may WRITE into them */

/** Page grants: with the agent param page_grants=on (off by default, so that agents
 *  that never grant keep working), a remote agent may WRITE or READ only the ranges
 *  granted to it, until revoked or expired; anything else fails that request with
 *  KVP_ERR_NOT_ALLOWED and a message naming the agent, address and length (the
 *  connection and other peers go on). Checked in C when each piece is served, on every
 *  path: TCP target (WRITE frames, READ_REQ pieces, and again while their bytes move
 *  once a grant changed), same-process peers (under the target's lock), same-host
 *  peers (the initiator's engine checks the grants the target publishes in its agent
 *  page, at every post).
 *
 *  Grants count: count ranges (mem_type DRAM or VRAM; dev: CUDA ordinal for VRAM, NULL
 *  devs = 0) inside this agent's registered memory, for the loaded remote agent named
 *  remote (bound to its token: a restarted peer needs new grants), with access
 *  KVP_GRANT_READ | KVP_GRANT_WRITE, for expires_ms milliseconds (0: until revoked).
 *  One handle covers them all. A grant dies with the registration it lies in. At most
 *  max_grants ranges (agent param, default 65536) are held: beyond, KVP_ERR_NOT_ALLOWED.
 *  An agent without page_grants=on: KVP_ERR_INVALID_PARAM. The nixl engine enforces no
 *  grants: KVP_ERR_NOT_SUPPORTED (and kvp_agent_info says page_grants=unsupported). */
int32_t kvp_grant(uint64_t agent, const char *remote, int32_t mem_type, const uint64_t *addrs,
                  const uint64_t *lens, const uint64_t *devs, uint64_t count, uint32_t access,
                  int64_t expires_ms, uint64_t *out_grant);

/** Revokes a grant: once this returns, no byte lands in or leaves its ranges over TCP
 *  or from a peer of this process; a same-host peer's post that started before it may
 *  finish (one post). A second revoke: KVP_ERR_NOT_FOUND. */
int32_t kvp_revoke(uint64_t agent, uint64_t grant);

/** kvp_grant for each range on its own (ABI 5): range i becomes grant out_grants[i], to
 *  be revoked alone (kvp_revoke) or with others (kvp_revoke_each), with the arguments,
 *  limits and refusals of kvp_grant (count ranges count against max_grants before any
 *  is made). One table rebuild for the whole call (kvp_grant once per range rebuilds
 *  and republishes the agent's whole grant table each time). All or nothing: on any
 *  failure no grant of the call exists, out_grants is all 0, and the message names the
 *  index of the range at fault ("range 3 (0x..., 4096 bytes, dev 0) does not lie ...").
 *  out_grants has room for count handles. nixl engine: KVP_ERR_NOT_SUPPORTED. */
int32_t kvp_grant_each(uint64_t agent, const char *remote, int32_t mem_type,
                       const uint64_t *addrs, const uint64_t *lens, const uint64_t *devs,
                       uint64_t count, uint32_t access, int64_t expires_ms,
                       uint64_t *out_grants);

/** Revokes count grants (ABI 5) with one table rebuild, as kvp_revoke each would: once
 *  it returns, no byte lands in or leaves any of their ranges (TCP, same process).
 *  Every valid handle is revoked whatever the others are, so a caller releasing pages
 *  never keeps a revocable grant alive by a bad neighbour. KVP_SUCCESS when all were;
 *  else the status of the first handle (lowest index) that was not, with a message
 *  naming it ("handles[2] (0x...): grant 0x... was already revoked; ..."):
 *  KVP_ERR_NOT_FOUND for one unknown, stale or already revoked (also a handle given
 *  twice: the second), KVP_ERR_INVALID_PARAM for one of another type or another agent.
 *  nixl engine: KVP_ERR_NOT_SUPPORTED. */
int32_t kvp_revoke_each(uint64_t agent, const uint64_t *grants, uint64_t count);

/* ------------------------------------------------------------------ files ---- */

/* Flags of kvp_file_open. */
#define KVP_FILE_CREATE 1u /* create when missing (mode 0644) */
#define KVP_FILE_DIRECT 2u /* O_DIRECT; where the file system refuses it the file is
                              opened without it and *out_direct is 0 */
#define KVP_FILE_TRUNCATE 4u

/** Opens a file for FILE registration and returns it as a handle (*out_file) with its
 *  descriptor (*out_fd: the dev of FILE regions and descriptors; addr = offset) and
 *  whether it has O_DIRECT. size > 0 makes the file at least that long (fallocate, else
 *  ftruncate). ENOSPC/EACCES and the like are KVP_ERR_BACKEND with the path and the
 *  system's reason in the last error. FILE registrations accept only descriptors opened
 *  here: the file stays open until kvp_file_close, so no transfer can reach a
 *  descriptor that was closed and reused. */
int32_t kvp_file_open(const char *path, uint32_t flags, uint64_t size, uint64_t *out_file,
                      int32_t *out_fd, int32_t *out_direct);

/** fdatasync of a file from kvp_file_open. */
int32_t kvp_file_sync(uint64_t file);

/** Closes a file from kvp_file_open. While a registration (of any agent) uses it:
 *  KVP_ERR_NOT_ALLOWED (deregister first); a second close: KVP_ERR_NOT_FOUND. */
int32_t kvp_file_close(uint64_t file);

#ifdef __cplusplus
}
#endif

#endif /* KVPORT_H */
