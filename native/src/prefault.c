/*
 * prefault.c - faulting a peer's memfd into this process before requests touch it.
 *
 * A same-host WRITE into a peer's page that this process never touched first pays for
 * the page table of that page (bi_remote_prefault at request creation): 3.7-7 ms per
 * 28 MiB page on the 2-core VM (read / write faults), two to four times the copy, on the
 * thread that creates the request. A decoder hands out its pages in turn (credits,
 * AllocResponses), so a fresh sender meets only such pages until it went once through
 * the decoder's buffer (issue 15: PD 1 x 28 MiB at 0.17-0.39 of memcpy where warm pages
 * read 0.7-1.8).
 *
 * So a request that faults in pages of its own tells a thread of the remote to fault in
 * the peer_prefault_ahead bytes after them (512 MiB by default: a credit stock's first
 * round of 28 MiB pages), where the next requests go: a pool hands out the pages it
 * never gave in ascending order (LeasePool), and those it got back first, which are
 * mapped here already. Only pages that exist in the memfd are done (mincore: resident
 * in its page cache): this never allocates a sparse buffer's holes, so the machine
 * still needs only what is written, and the sender maps at most peer_prefault_ahead
 * bytes more than its requests touched, not the peer's whole buffer. Done extents are
 * marked in the mapping's bitmap, so requests skip them; a request that comes first
 * does its own pages, as before, and the thread skips those.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "builtin.h"

/* Bytes looked at per step (a multiple of BI_POP_EXTENT): short enough that the mmap
 * lock is held for little (about 30-60 us on the 2-core VM) and a stop waits for
 * little, long enough that mincore and our lock cost nothing next to the page-table
 * work. */
#define AHEAD_STEP (256u << 10)

bool bi_prefault_range(uint64_t addr, uint64_t len, bool write) {
    long pg = sysconf(_SC_PAGESIZE);
    uint64_t ps = pg > 0 ? (uint64_t)pg : 4096;
    uint64_t s = addr / ps * ps, e = (addr + len + ps - 1) / ps * ps;
#if defined(MADV_POPULATE_WRITE) && defined(MADV_POPULATE_READ)
    return madvise((void *)(uintptr_t)s, (size_t)(e - s),
                   write ? MADV_POPULATE_WRITE : MADV_POPULATE_READ) == 0;
#else
    KVP_UNUSED(s);
    KVP_UNUSED(e);
    KVP_UNUSED(write);
    return false;
#endif
}

/* One step of mapping m: extents of [s, t) that no request did, whose pages are all
 * resident in the memfd, faulted in (writable) and marked. Returns the bytes done. */
static uint64_t ahead_step(bi_remote *rm, uint8_t *base, uint64_t size, uint64_t *popw,
                           uint64_t s, uint64_t t, unsigned char *vec, uint64_t ps) {
    uint64_t e0 = s / BI_POP_EXTENT, e1 = (t - 1) / BI_POP_EXTENT;
    bool todo[AHEAD_STEP / BI_POP_EXTENT + 1];
    pthread_mutex_lock(&rm->map_mu);
    for (uint64_t k = e0; k <= e1; k++) todo[k - e0] = !BI_POP_HAS(popw, k);
    pthread_mutex_unlock(&rm->map_mu);
    bool any = false;
    for (uint64_t k = e0; k <= e1; k++) any = any || todo[k - e0];
    if (!any) return 0;
    /* mincore of a shared file mapping says what the file holds, mapped here or not. */
    if (mincore(base + s, (size_t)(t - s), vec) != 0) return 0;
    uint64_t done = 0;
    for (uint64_t k = e0; k <= e1; k++) {
        if (!todo[k - e0]) continue;
        uint64_t ks = k * BI_POP_EXTENT, ke = KVP_MIN(ks + BI_POP_EXTENT, size);
        bool resident = true;
        for (uint64_t o = ks; o < ke && resident; o += ps) resident = (vec[(o - s) / ps] & 1) != 0;
        todo[k - e0] = resident;
    }
    /* Runs of consecutive extents to do: one madvise each. */
    for (uint64_t k = e0; k <= e1;) {
        if (!todo[k - e0]) {
            k++;
            continue;
        }
        uint64_t r = k;
        while (k <= e1 && todo[k - e0]) k++;
        uint64_t rs = r * BI_POP_EXTENT, re = KVP_MIN(k * BI_POP_EXTENT, size);
        /* Read faults: see bi_remote_prefault (the pages come out writable). */
        /* A kernel without MADV_POPULATE_* (before 5.14) does nothing: neither counted
         * nor marked, so requests try again (and the copy faults pages in itself). */
        if (!bi_prefault_range((uint64_t)(uintptr_t)(base + rs), re - rs, false)) continue;
        pthread_mutex_lock(&rm->map_mu);
        for (uint64_t j = r; j < k; j++) BI_POP_MARK(popw, j);
        pthread_mutex_unlock(&rm->map_mu);
        done += re - rs;
    }
    return done;
}

/* The next step of the remote's mappings (map_mu held): the first mapping with pages
 * left in its window, from its cursor. False: nothing left. */
static bool ahead_next(bi_remote *rm, uint8_t **base, uint64_t *size, uint64_t **popw,
                       uint64_t *s, uint64_t *t) {
    for (size_t i = 0; i < rm->nmaps; i++) {
        bi_map *m = &rm->maps[i];
        if (!m->popw || m->ahead_at >= m->ahead_end) continue;
        /* base, size and the bitmap stay until bi_remote_unmap_all, which stops this
         * thread first; the array of maps may move. */
        *base = m->base;
        *size = m->size;
        *popw = m->popw;
        *s = m->ahead_at;
        *t = KVP_MIN(*s + AHEAD_STEP, m->ahead_end);
        m->ahead_at = *t;
        return true;
    }
    return false;
}

static void *ahead_main(void *arg) {
    bi_remote *rm = arg;
    /* The priority of the process, not lower: madvise holds the mmap lock for reading
     * while it works, and a thread preempted there for the others would stall every
     * thread of the process that maps or faults behind it (the runtime's JIT and GC map
     * all the time). The work is what the requests would do anyway; steps are short. */
    long pg = sysconf(_SC_PAGESIZE);
    uint64_t ps = pg > 0 ? (uint64_t)pg : 4096;
    unsigned char *vec = malloc(AHEAD_STEP / ps + 1);
    for (;;) {
        uint8_t *base = NULL;
        uint64_t size = 0, *popw = NULL, s = 0, t = 0;
        pthread_mutex_lock(&rm->map_mu);
        bool more = vec && !rm->ahead_stop && ahead_next(rm, &base, &size, &popw, &s, &t);
        if (!more) rm->ahead_running = false;
        pthread_mutex_unlock(&rm->map_mu);
        if (!more) break;
        uint64_t done = ahead_step(rm, base, size, popw, s, t, vec, ps);
        if (done) atomic_fetch_add(&rm->a->prefault_ahead_bytes, done);
    }
    free(vec);
    return NULL;
}

/* Starts the thread if it is not running (rm->map_mu held). */
static void ahead_start_locked(bi_remote *rm) {
    if (rm->ahead_stop || rm->ahead_running) return;
    /* An earlier thread that ran out of work has left the lock for good: join it. */
    if (rm->ahead_joinable) (void)pthread_join(rm->ahead, NULL);
    rm->ahead_joinable = false;
    int rc = kvp_thread_start(&rm->ahead, ahead_main, rm);
    /* Without the thread requests prefault their own pages, as before: only slower. */
    if (rc == 0) rm->ahead_running = rm->ahead_joinable = true;
}

void bi_prefault_ahead_hint_locked(bi_remote *rm, bi_map *m, uint64_t end) {
    uint64_t w = rm->a->prefault_ahead;
    if (w == 0 || !m->popw || end >= m->size) return;
    /* Both ends on extents (or the mapping's end): a step then covers whole extents,
     * and mincore has looked at every page of each one it does. */
    uint64_t at = (end + BI_POP_EXTENT - 1) / BI_POP_EXTENT * BI_POP_EXTENT;
    uint64_t until = end + KVP_MIN(w, m->size - end);
    until = KVP_MIN(m->size, (until + BI_POP_EXTENT - 1) / BI_POP_EXTENT * BI_POP_EXTENT);
    /* Never back: what lies behind the cursor was done, or jumped by requests. */
    if (at > m->ahead_at) m->ahead_at = at;
    if (until > m->ahead_end) m->ahead_end = until;
    if (m->ahead_at < m->ahead_end) ahead_start_locked(rm);
}

void bi_prefault_ahead_stop(bi_remote *rm) {
    pthread_mutex_lock(&rm->map_mu);
    rm->ahead_stop = true;
    bool join = rm->ahead_joinable;
    rm->ahead_joinable = false;
    pthread_t th = rm->ahead;
    pthread_mutex_unlock(&rm->map_mu);
    if (join) (void)pthread_join(th, NULL);
}
