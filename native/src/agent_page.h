/*
 * agent_page.h - an agent's shared control page: a memfd that same-host peers map to
 * learn, at the moment they copy, what the agent has registered right now.
 *
 * Why: same-host paths (a peer memfd mapped here, cross-memory attach, CUDA IPC) copy
 * straight into the peer's memory, with no code of the peer on the way that could
 * refuse. The metadata blob says what was registered when it was written; the page
 * says what is registered now, and lets a deregistration wait for copies in flight.
 *
 * Layout (all offsets page-aligned; the owner writes everything except the pins):
 *   header       magic, version, the owner's token, a locality secret (see
 *                bi_locality in tcp_connect.c: a peer proves it is on this host by
 *                echoing it), table geometry, reg_seq (bumped around slot changes)
 *   slots        reg_cap region slots: gen (0 = free, else the registration's
 *                generation, never reused), dying, and the region as in metadata
 *   grants       two grant tables (double-buffered, see grants.c), active one in
 *                the header
 *   pins         reg_cap 32-bit counters; the only part peers write
 *
 * Pin protocol (race-free with sequentially consistent atomics on shared memory):
 *   peer:   fetch_add(pins[i], 1); then gen[i] == expected && !dying[i] ? copy : back off
 *   owner:  store(dying[i], 1); then wait until pins[i] == 0 (bounded), then free the slot
 * Either the peer sees dying (and never copies) or the owner sees its pin (and waits
 * for the copy to end). The wait is bounded by dereg_timeout_ms: a peer frozen (or
 * dead) while holding a pin does not block the owner for longer; a slot whose pins did
 * not drain is never reused. Remaining window: a peer stopped for longer than that
 * timeout in the middle of a copy can still complete it after the deregistration.
 *
 * Peers map the header, slots and grants read-only and only the pins read-write. A
 * process that can open the page through /proc/<pid>/fd already has ptrace-level
 * access to the owner (the kernel's check), so the page protects against buggy peers,
 * not hostile local ones (docs/SECURITY.md).
 */
#ifndef KVP_AGENT_PAGE_H
#define KVP_AGENT_PAGE_H
#include "common.h"
#include "metadata.h"

#define AP_MAGIC 0x4150564Bu /* "KVPA" */
#define AP_VERSION 1
#define AP_GRANT_CAP_MAX (1u << 20)

typedef struct ap_slot {
    _Atomic uint64_t gen;
    _Atomic uint32_t dying;
    uint32_t flags;      /* KVP_MDR_* */
    int32_t mem_type;
    int32_t memfd;
    uint64_t addr, len, dev;
    uint64_t memfd_ino, memfd_off, memfd_size;
    uint8_t ipc[KVP_CUDA_IPC_BYTES];
    uint64_t ipc_off;
} ap_slot;

/* One grant as published to peers (grants.c keeps the owner's copy). */
typedef struct ap_grant {
    uint8_t token[16];   /* the peer it is for */
    int32_t mem_type;
    uint32_t access;     /* KVP_GRANT_READ | KVP_GRANT_WRITE */
    uint64_t dev, addr, len;
    uint64_t expires_ns; /* CLOCK_MONOTONIC (host-wide); 0: never */
    uint64_t maxend;     /* largest end of its (token, type, device) group so far */
} ap_grant;

typedef struct ap_header {
    uint32_t magic, version;
    uint8_t token[16];
    uint8_t secret[16];
    uint64_t size;
    uint32_t reg_cap, grant_cap;
    uint64_t slots_off, grants_off[2], pins_off;
    _Atomic uint64_t reg_seq;
    _Atomic uint32_t reg_hwm;       /* slots [0, reg_hwm) may be in use: readers stop there */
    _Atomic uint32_t grants_on;     /* page_grants=on: peers may touch granted ranges only */
    _Atomic uint32_t grant_active;  /* which grant table is current (0 or 1) */
    _Atomic uint64_t grant_seq;     /* bumped on every publication */
    _Atomic uint64_t grant_n[2];    /* entries of each table */
} ap_header;

/* The owner's page. */
typedef struct ap_page {
    int fd;
    uint64_t ino, size;
    uint8_t *base;
    ap_header *h;
    ap_slot *slots;
    _Atomic uint32_t *pins;
    bool *quarantined;   /* slots whose pins did not drain (owner memory, not shared) */
} ap_page;

/* Creates the page (memfd, sparse). token: the agent's. */
int32_t ap_create(ap_page *p, const uint8_t token[16], uint32_t reg_cap, uint32_t grant_cap);
void ap_destroy(ap_page *p);
/* Publishes a region with generation gen; returns its slot, or -1 when the table is
 * full (the region is then reachable over TCP only). */
int32_t ap_slot_add(ap_page *p, const kvp_md_region *r, uint64_t gen);
/* Stops granting pins on slot i and waits up to timeout_ms for the pins held to
 * drain, then frees it. Returns false when pins were still held at the timeout (the
 * slot is then never reused). */
bool ap_slot_retire(ap_page *p, int32_t i, uint32_t timeout_ms);

/* Publishes the sorted grant table (grants.c) for same-host peers, and whether grants
 * are enforced at all. */
void ap_grants_publish(ap_page *p, const ap_grant *t, uint64_t n);
void ap_grants_enforce(ap_page *p, bool on);

/* A peer's page mapped here. */
typedef struct ap_peer {
    uint8_t *ro;          /* header, slots and grants, read-only */
    uint64_t ro_len;
    _Atomic uint32_t *pins; /* the pins, read-write */
    uint64_t pins_len;
    uint32_t reg_cap, grant_cap;
    uint64_t size;
    uint64_t grants_off[2]; /* checked at open: never taken from the page afterwards */
    const ap_header *h;
    const ap_slot *slots;
} ap_peer;

/* Opens /proc/<pid>/fd/<fd>, checks inode, size and header, maps it. */
int32_t ap_peer_open(ap_peer *pp, uint32_t pid, int32_t fd, uint64_t ino, uint64_t size,
                     const uint8_t token[16], const char *who);
void ap_peer_close(ap_peer *pp);
/* Copies the live slots into regions (owner = slot index + 1 cast to a pointer, gen in
 * ipc_off's place is not used: gens[] gets them). Consistent snapshot (seqlock);
 * returns the number of regions, or -1 when the page kept changing. */
int64_t ap_peer_snapshot(const ap_peer *pp, kvp_md_region *regs, uint64_t *gens,
                         int32_t *idx, uint32_t cap, uint64_t *seq_out);
/* Whether the owner lets the peer with token reach [addr, addr+len) with access: 1 yes
 * (or grants not enforced), 0 no, -1 the table kept changing while read. */
int ap_peer_grants_allow(const ap_peer *pp, const uint8_t token[16], int32_t mem_type,
                         uint64_t dev, uint64_t addr, uint64_t len, uint32_t access,
                         uint64_t now_ns);
/* Pin protocol (peer side). */
bool ap_peer_pin(const ap_peer *pp, int32_t i, uint64_t gen);
void ap_peer_unpin(const ap_peer *pp, int32_t i);

#endif
