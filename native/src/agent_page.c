/* agent_page.c - the shared control page of an agent (see agent_page.h). */
#include "agent_page.h"

#include <fcntl.h>
#include <stdio.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "errors.h"
#include "hostid.h"

#define AP_PAGE 4096u

static uint64_t page_up(uint64_t n) { return (n + AP_PAGE - 1) / AP_PAGE * AP_PAGE; }

/* Geometry from the two capacities (owner and peer compute the same). */
static void geometry(uint32_t reg_cap, uint32_t grant_cap, uint64_t *slots_off,
                     uint64_t *g0, uint64_t *g1, uint64_t *pins_off, uint64_t *size) {
    *slots_off = page_up(sizeof(ap_header));
    *g0 = page_up(*slots_off + (uint64_t)reg_cap * sizeof(ap_slot));
    *g1 = page_up(*g0 + (uint64_t)grant_cap * sizeof(ap_grant));
    *pins_off = page_up(*g1 + (uint64_t)grant_cap * sizeof(ap_grant));
    *size = page_up(*pins_off + (uint64_t)reg_cap * sizeof(uint32_t));
}

int32_t ap_create(ap_page *p, const uint8_t token[16], uint32_t reg_cap, uint32_t grant_cap) {
    memset(p, 0, sizeof *p);
    p->fd = -1;
    uint64_t so, g0, g1, po, size;
    geometry(reg_cap, grant_cap, &so, &g0, &g1, &po, &size);
    p->quarantined = calloc(reg_cap ? reg_cap : 1, sizeof *p->quarantined);
    if (!p->quarantined) return kvp_err(KVP_ERR_BACKEND, "out of memory");
    int fd = memfd_create("kvport-agent-page", MFD_CLOEXEC);
    struct stat st;
    if (fd < 0 || ftruncate(fd, (off_t)size) != 0 || fstat(fd, &st) != 0) {
        int e = errno;
        kvp_close(fd);
        free(p->quarantined);
        p->quarantined = NULL;
        return kvp_err(KVP_ERR_BACKEND, "cannot create the agent page (%llu bytes): %s",
                       (unsigned long long)size, strerror(e));
    }
    void *m = mmap(NULL, (size_t)size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (m == MAP_FAILED) {
        int e = errno;
        kvp_close(fd);
        free(p->quarantined);
        p->quarantined = NULL;
        return kvp_err(KVP_ERR_BACKEND, "cannot map the agent page: %s", strerror(e));
    }
    p->fd = fd;
    p->ino = (uint64_t)st.st_ino;
    p->size = size;
    p->base = m;
    p->h = m;
    p->slots = (ap_slot *)(p->base + so);
    p->pins = (_Atomic uint32_t *)(p->base + po);
    ap_header *h = p->h;
    h->version = AP_VERSION;
    memcpy(h->token, token, 16);
    kvp_random_bytes(h->secret, sizeof h->secret);
    h->size = size;
    h->reg_cap = reg_cap;
    h->grant_cap = grant_cap;
    h->slots_off = so;
    h->grants_off[0] = g0;
    h->grants_off[1] = g1;
    h->pins_off = po;
    atomic_store(&h->reg_seq, 0);
    /* Magic last: a peer that sees it sees a complete header. */
    atomic_thread_fence(memory_order_release);
    h->magic = AP_MAGIC;
    return KVP_SUCCESS;
}

void ap_destroy(ap_page *p) {
    if (p->base) munmap(p->base, (size_t)p->size);
    kvp_close(p->fd);
    free(p->quarantined);
    memset(p, 0, sizeof *p);
    p->fd = -1;
}

int32_t ap_slot_add(ap_page *p, const kvp_md_region *r, uint64_t gen) {
    if (!p->base) return -1;
    ap_header *h = p->h;
    for (uint32_t i = 0; i < h->reg_cap; i++) {
        ap_slot *s = &p->slots[i];
        if (atomic_load(&s->gen) != 0 || p->quarantined[i]) continue;
        atomic_fetch_add(&h->reg_seq, 1); /* odd: changing */
        s->flags = r->flags;
        s->mem_type = r->mem_type;
        s->memfd = r->memfd;
        s->addr = r->addr;
        s->len = r->len;
        s->dev = r->dev;
        s->memfd_ino = r->memfd_ino;
        s->memfd_off = r->memfd_off;
        s->memfd_size = r->memfd_size;
        memcpy(s->ipc, r->ipc, sizeof s->ipc);
        s->ipc_off = r->ipc_off;
        atomic_store(&s->dying, 0);
        if (i + 1 > atomic_load(&h->reg_hwm)) atomic_store(&h->reg_hwm, i + 1);
        atomic_store(&s->gen, gen); /* seq_cst: the slot's fields are visible first */
        atomic_fetch_add(&h->reg_seq, 1);
        return (int32_t)i;
    }
    return -1;
}

bool ap_slot_retire(ap_page *p, int32_t i, uint32_t timeout_ms) {
    if (!p->base || i < 0 || (uint32_t)i >= p->h->reg_cap) return true;
    ap_slot *s = &p->slots[i];
    atomic_store(&s->dying, 1);
    uint64_t deadline = kvp_now_ns() + (uint64_t)timeout_ms * 1000000ull;
    bool drained = true;
    /* Pins are held for the length of one copy (microseconds to a few hundred ms):
     * poll with a short sleep rather than a futex across processes. */
    while (atomic_load(&p->pins[i]) != 0) {
        if (kvp_now_ns() >= deadline) {
            drained = false;
            break;
        }
        struct timespec ts = {0, 200000}; /* 0.2 ms */
        nanosleep(&ts, NULL);
    }
    atomic_fetch_add(&p->h->reg_seq, 1);
    atomic_store(&s->gen, 0);
    atomic_fetch_add(&p->h->reg_seq, 1);
    if (!drained) p->quarantined[i] = true;
    return drained;
}

void ap_grants_enforce(ap_page *p, bool on) {
    if (p->base) atomic_store(&p->h->grants_on, on ? 1u : 0u);
}

void ap_grants_publish(ap_page *p, const ap_grant *t, uint64_t n) {
    if (!p->base) return;
    ap_header *h = p->h;
    if (n > h->grant_cap) n = 0; /* cannot happen (max_grants <= grant_cap): refuse all */
    uint32_t next = atomic_load(&h->grant_active) ^ 1u;
    atomic_fetch_add(&h->grant_seq, 1); /* odd: publishing */
    if (n) memcpy(p->base + h->grants_off[next], t, (size_t)n * sizeof *t);
    atomic_store(&h->grant_n[next], n);
    atomic_store(&h->grant_active, next);
    atomic_fetch_add(&h->grant_seq, 1);
}

/* ------------------------------------------------------------------ peer ---- */

int32_t ap_peer_open(ap_peer *pp, uint32_t pid, int32_t fd, uint64_t ino, uint64_t size,
                     const uint8_t token[16], const char *who) {
    memset(pp, 0, sizeof *pp);
    char path[64];
    snprintf(path, sizeof path, "/proc/%u/fd/%d", pid, fd);
    int f = open(path, O_RDWR | O_CLOEXEC);
    if (f < 0)
        return kvp_err(KVP_ERR_NOT_ALLOWED, "cannot open the agent page of %s (%s): %s", who,
                       path, strerror(errno));
    struct stat st;
    int32_t st_ = KVP_SUCCESS;
    if (fstat(f, &st) != 0 || (uint64_t)st.st_ino != ino || (uint64_t)st.st_size != size ||
        size < AP_PAGE || size > (1ull << 36)) {
        st_ = kvp_err(KVP_ERR_MISMATCH, "%s of %s is not the agent page its metadata describes",
                      path, who);
        kvp_close(f);
        return st_;
    }
    /* Header first, to learn (and check) the geometry. */
    ap_header hc;
    if (pread(f, &hc, sizeof hc, 0) != (ssize_t)sizeof hc) {
        kvp_close(f);
        return kvp_err(KVP_ERR_MISMATCH, "cannot read the agent page of %s", who);
    }
    uint64_t so, g0, g1, po, sz;
    bool ok = hc.magic == AP_MAGIC && hc.version == AP_VERSION &&
              memcmp(hc.token, token, 16) == 0 && hc.reg_cap <= (1u << 20) &&
              hc.grant_cap <= AP_GRANT_CAP_MAX;
    if (ok) {
        geometry(hc.reg_cap, hc.grant_cap, &so, &g0, &g1, &po, &sz);
        ok = sz == size && hc.size == size && hc.slots_off == so && hc.grants_off[0] == g0 &&
             hc.grants_off[1] == g1 && hc.pins_off == po;
    }
    if (!ok) {
        kvp_close(f);
        return kvp_err(KVP_ERR_MISMATCH,
                       "the agent page of %s has a bad header (not this agent's, or another "
                       "library version)", who);
    }
    void *ro = mmap(NULL, (size_t)po, PROT_READ, MAP_SHARED, f, 0);
    void *rw = ro == MAP_FAILED ? MAP_FAILED
                                : mmap(NULL, (size_t)(size - po), PROT_READ | PROT_WRITE,
                                       MAP_SHARED, f, (off_t)po);
    int e = errno;
    kvp_close(f);
    if (ro == MAP_FAILED || rw == MAP_FAILED) {
        if (ro != MAP_FAILED) munmap(ro, (size_t)po);
        return kvp_err(KVP_ERR_BACKEND, "cannot map the agent page of %s: %s", who, strerror(e));
    }
    pp->ro = ro;
    pp->ro_len = po;
    pp->pins = rw;
    pp->pins_len = size - po;
    pp->reg_cap = hc.reg_cap;
    pp->grant_cap = hc.grant_cap;
    pp->grants_off[0] = g0;
    pp->grants_off[1] = g1;
    pp->size = size;
    pp->h = (const ap_header *)pp->ro;
    pp->slots = (const ap_slot *)(pp->ro + so);
    return KVP_SUCCESS;
}

void ap_peer_close(ap_peer *pp) {
    if (pp->ro) munmap(pp->ro, (size_t)pp->ro_len);
    if (pp->pins) munmap((void *)pp->pins, (size_t)pp->pins_len);
    memset(pp, 0, sizeof *pp);
}

int64_t ap_peer_snapshot(const ap_peer *pp, kvp_md_region *regs, uint64_t *gens, int32_t *idx,
                         uint32_t cap, uint64_t *seq_out) {
    for (int attempt = 0; attempt < 1000; attempt++) {
        uint64_t s1 = atomic_load(&((ap_header *)pp->h)->reg_seq);
        if (s1 & 1) continue;
        uint32_t n = 0, hwm = atomic_load(&((ap_header *)pp->h)->reg_hwm);
        for (uint32_t i = 0; i < pp->reg_cap && i < hwm && n < cap; i++) {
            ap_slot *s = (ap_slot *)&pp->slots[i];
            uint64_t g = atomic_load(&s->gen);
            if (g == 0 || atomic_load(&s->dying)) continue;
            kvp_md_region *r = &regs[n];
            memset(r, 0, sizeof *r);
            r->mem_type = s->mem_type;
            r->flags = s->flags & (KVP_MDR_MEMFD | KVP_MDR_IPC);
            r->memfd = s->memfd;
            r->addr = s->addr;
            r->len = s->len;
            r->dev = s->dev;
            r->memfd_ino = s->memfd_ino;
            r->memfd_off = s->memfd_off;
            r->memfd_size = s->memfd_size;
            memcpy(r->ipc, s->ipc, sizeof r->ipc);
            r->ipc_off = s->ipc_off;
            /* A buggy owner must not make us read or map out of range. */
            if ((r->mem_type != KVP_DRAM && r->mem_type != KVP_VRAM) || r->len == 0 ||
                r->addr + r->len < r->addr ||
                ((r->flags & KVP_MDR_MEMFD) &&
                 (r->memfd < 0 || !kvp_range_ok(r->memfd_off, r->len, 0, r->memfd_size))))
                continue;
            gens[n] = g;
            idx[n] = (int32_t)i;
            n++;
        }
        uint64_t s2 = atomic_load(&((ap_header *)pp->h)->reg_seq);
        if (s1 == s2) {
            *seq_out = s1;
            return n;
        }
    }
    return -1;
}

bool bi_grants_cover(const ap_grant *tab, uint64_t n, const uint8_t token[16], int32_t mt,
                     uint64_t dev, uint64_t addr, uint64_t len, uint32_t access,
                     uint64_t now_ns);

int ap_peer_grants_allow(const ap_peer *pp, const uint8_t token[16], int32_t mem_type,
                         uint64_t dev, uint64_t addr, uint64_t len, uint32_t access,
                         uint64_t now_ns) {
    ap_header *h = (ap_header *)pp->h;
    if (!atomic_load(&h->grants_on)) return 1;
    /* Double-buffered: the owner writes the table not in use, then flips. The table read
     * was left alone if at most one publication (even start) or none (odd start: one in
     * progress, writing the other table) began meanwhile. */
    for (int attempt = 0; attempt < 100; attempt++) {
        uint64_t s1 = atomic_load(&h->grant_seq);
        uint32_t act = atomic_load(&h->grant_active) & 1u;
        uint64_t n = atomic_load(&h->grant_n[act]);
        if (n > pp->grant_cap) n = 0;
        const ap_grant *t = (const ap_grant *)(pp->ro + pp->grants_off[act]);
        bool ok = bi_grants_cover(t, n, token, mem_type, dev, addr, len, access, now_ns);
        uint64_t s2 = atomic_load(&h->grant_seq);
        if (s2 - s1 <= ((s1 & 1) ? 1u : 2u)) return ok ? 1 : 0;
    }
    return -1;
}

bool ap_peer_pin(const ap_peer *pp, int32_t i, uint64_t gen) {
    if (i < 0 || (uint32_t)i >= pp->reg_cap) return false;
    atomic_fetch_add(&pp->pins[i], 1);
    ap_slot *s = (ap_slot *)&pp->slots[i];
    if (atomic_load(&s->gen) == gen && !atomic_load(&s->dying)) return true;
    atomic_fetch_sub(&pp->pins[i], 1);
    return false;
}

void ap_peer_unpin(const ap_peer *pp, int32_t i) {
    if (i < 0 || (uint32_t)i >= pp->reg_cap) return;
    atomic_fetch_sub(&pp->pins[i], 1);
}
