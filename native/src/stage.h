/*
 * stage.h - VRAM staged through pinned host memory, with the copies overlapped with
 * the I/O that consumes or produces the bytes (a socket, a file).
 *
 * Two pipelines, each a ring of KVP_STAGE_SLOTS slots of slot_bytes of pinned memory
 * with one completion event per slot:
 *
 *   kvp_stx (device -> host -> consumer): the owner feeds source ranges (in the order
 *   they will be consumed); each slot-sized chunk becomes an asynchronous device-to-host
 *   copy at once, so while the consumer sends chunk k the copies of chunks k+1.. run.
 *   kvp_stx_front waits for the head chunk's copy and gives its bytes; kvp_stx_consume
 *   frees them, which lets the owner feed the next chunk into that slot.
 *
 *   kvp_srx (producer -> host -> device): the producer receives into kvp_srx_space (the
 *   current slot; waits for that slot's previous copy first), kvp_srx_commit counts the
 *   bytes and, when the slot is full or the payload ends, queues its host-to-device copy
 *   and moves to the next slot, so the producer fills slot k+1 while slot k is copied.
 *   kvp_srx_drain waits for every copy (before a WRITE is acknowledged or a READ piece
 *   counted as landed).
 *
 * The copy functions are a table (kvp_stage_ops) so that the pipelining is tested
 * without a GPU (tests/test_stage.c uses host memory and copies deferred until their
 * event is waited on, which catches a slot read or reused too early). Neither pipeline
 * locks: its owner serialises calls (tcp_*.c: the connection's tx_mu / the progress
 * thread; copy.c: one job at a time).
 */
#ifndef KVP_STAGE_H
#define KVP_STAGE_H
#include "common.h"

#define KVP_STAGE_SLOTS 4
#define KVP_STAGE_SLOT_BYTES (4u << 20)

/* Direction of a pipeline's copies (which queue they run on). */
enum { KVP_STAGE_D2H = 0, KVP_STAGE_H2D = 1 };

typedef struct kvp_stage_ops {
    /* Pinned host memory of size bytes. */
    int32_t (*host_alloc)(uint64_t size, void **out);
    void (*host_free)(void *p);
    /* A completion event usable with copies on device dev. */
    int32_t (*event_create)(int32_t dev, void **ev);
    void (*event_destroy)(int32_t dev, void *ev);
    /* Queues an asynchronous copy of len bytes (dst <- src) for device dev in direction
     * dir, then records ev after it. */
    int32_t (*copy)(int32_t dev, int dir, uint64_t dst, uint64_t src, uint64_t len, void *ev);
    /* Blocks until ev (and so every copy queued before it) has completed. */
    int32_t (*wait)(int32_t dev, void *ev);
} kvp_stage_ops;

/* The CUDA runtime's functions (through cuda_loader.c). */
extern const kvp_stage_ops kvp_stage_cuda_ops;

typedef struct kvp_stage_ring {
    const kvp_stage_ops *ops;
    int32_t dev;          /* device the events belong to, -1 before the first use */
    uint32_t nslots;
    uint64_t slot_bytes;
    uint8_t *buf[KVP_STAGE_SLOTS];
    void *ev[KVP_STAGE_SLOTS];
    bool busy[KVP_STAGE_SLOTS]; /* a copy was queued on the slot and not waited for */
    char msg[400];        /* first error, kept for the owner's messages */
} kvp_stage_ring;

/* ------------------------------------------------------------ device -> host ---- */

typedef struct kvp_stx_chunk {
    const void *key;      /* the owner's source (e.g. a frame) */
    uint64_t off, len;    /* range of that source held by the slot */
} kvp_stx_chunk;

typedef struct kvp_stx {
    kvp_stage_ring r;
    uint32_t head, count; /* chunk i of the ring lives in slot (head + i) % nslots */
    kvp_stx_chunk c[KVP_STAGE_SLOTS];
    uint64_t used;        /* bytes of the head chunk already consumed */
} kvp_stx;

/* Initialises (allocates nothing: memory and events come with the first feed).
 * slot_bytes 0 = KVP_STAGE_SLOT_BYTES; nslots 0 = KVP_STAGE_SLOTS. */
void kvp_stx_init(kvp_stx *s, const kvp_stage_ops *ops, uint32_t nslots, uint64_t slot_bytes);
/* Waits for queued copies and frees the slots. */
void kvp_stx_fini(kvp_stx *s);
/* Queues copies of [off, off+len) of the device range src (the source's byte 0 is at
 * device address src) into free slots, one slot-sized chunk each; *taken = bytes queued
 * (less than len when the ring is full). An error leaves nothing half-queued. */
int32_t kvp_stx_feed(kvp_stx *s, const void *key, int32_t dev, uint64_t src, uint64_t off,
                     uint64_t len, uint64_t *taken);
/* True when no slot is free. */
bool kvp_stx_full(const kvp_stx *s);
/* Last chunk fed: its key and where it ends (false when the ring is empty). */
bool kvp_stx_tail(const kvp_stx *s, const void **key, uint64_t *end);
/* True when any chunk of key is in the ring. */
bool kvp_stx_holds(const kvp_stx *s, const void *key);
/* The head chunk's next bytes, which must be key at offset off (else KVP_ERR_NOT_FOUND:
 * reset and feed again); waits for its copy. *p, *n: ready bytes (n > 0). */
int32_t kvp_stx_front(kvp_stx *s, const void *key, uint64_t off, const uint8_t **p,
                      uint64_t *n);
/* n bytes of the head chunk were consumed (n <= what kvp_stx_front gave). */
void kvp_stx_consume(kvp_stx *s, uint64_t n);
/* Empties the ring, waiting for copies still queued (sources going away). */
void kvp_stx_reset(kvp_stx *s);

/* ------------------------------------------------------------ host -> device ---- */

typedef struct kvp_srx {
    kvp_stage_ring r;
    uint32_t cur;         /* slot being filled */
    uint64_t fill;        /* bytes in it */
    uint64_t dst;         /* device address of the slot's first byte */
    int32_t pdev;         /* device of the current payload */
} kvp_srx;

void kvp_srx_init(kvp_srx *s, const kvp_stage_ops *ops, uint32_t nslots, uint64_t slot_bytes);
void kvp_srx_fini(kvp_srx *s);
/* Starts a payload that lands at device address dst of device dev (bytes of an earlier
 * payload not committed are dropped). Allocates the slots on first use. */
int32_t kvp_srx_begin(kvp_srx *s, int32_t dev, uint64_t dst);
/* Where the next bytes go: the current slot's free part (waits for that slot's previous
 * copy). */
int32_t kvp_srx_space(kvp_srx *s, uint8_t **p, uint64_t *n);
/* n bytes were written at kvp_srx_space; end: the payload is complete. Queues the
 * slot's copy when it is full or at the end. */
int32_t kvp_srx_commit(kvp_srx *s, uint64_t n, bool end);
/* Waits for every queued copy; returns the first error. */
int32_t kvp_srx_drain(kvp_srx *s);

#endif
