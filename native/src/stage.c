/* stage.c - pipelined staging of VRAM through pinned host memory (see stage.h). */
#include "stage.h"

#include <stdio.h>

#include "cuda_loader.h"
#include "errors.h"

/* ------------------------------------------------------------------- CUDA ---- */

static int32_t cu_copy(int32_t dev, int dir, uint64_t dst, uint64_t src, uint64_t len,
                       void *ev) {
    return kvp_cuda_copy_async(dev, dir == KVP_STAGE_D2H ? KVP_CUDA_Q_D2H : KVP_CUDA_Q_H2D,
                               dst, src, len, ev);
}

const kvp_stage_ops kvp_stage_cuda_ops = {
    .host_alloc = kvp_cuda_host_alloc,
    .host_free = kvp_cuda_host_free,
    .event_create = kvp_cuda_event_create,
    .event_destroy = kvp_cuda_event_destroy,
    .copy = cu_copy,
    .wait = kvp_cuda_event_wait,
};

/* ------------------------------------------------------------------- ring ---- */

static void ring_init(kvp_stage_ring *r, const kvp_stage_ops *ops, uint32_t nslots,
                      uint64_t slot_bytes) {
    memset(r, 0, sizeof *r);
    r->ops = ops;
    r->dev = -1;
    r->nslots = nslots == 0 || nslots > KVP_STAGE_SLOTS ? KVP_STAGE_SLOTS : nslots;
    r->slot_bytes = slot_bytes ? slot_bytes : KVP_STAGE_SLOT_BYTES;
}

static int32_t ring_fail(kvp_stage_ring *r, int32_t st) {
    if (!r->msg[0]) snprintf(r->msg, sizeof r->msg, "%s", kvp_err_text());
    return st;
}

/* Waits for slot i's copy when one is queued. */
static int32_t ring_wait(kvp_stage_ring *r, uint32_t i) {
    if (!r->busy[i]) return KVP_SUCCESS;
    r->busy[i] = false;
    int32_t st = r->ops->wait(r->dev, r->ev[i]);
    return st == KVP_SUCCESS ? st : ring_fail(r, st);
}

static int32_t ring_wait_all(kvp_stage_ring *r) {
    int32_t first = KVP_SUCCESS;
    for (uint32_t i = 0; i < r->nslots; i++) {
        int32_t st = ring_wait(r, i);
        if (first == KVP_SUCCESS) first = st;
    }
    return first;
}

static void ring_drop_events(kvp_stage_ring *r) {
    for (uint32_t i = 0; i < r->nslots; i++) {
        if (r->ev[i]) r->ops->event_destroy(r->dev, r->ev[i]);
        r->ev[i] = NULL;
    }
    r->dev = -1;
}

/* Slots allocated and events for device dev (no copy may be queued when dev changes). */
static int32_t ring_ensure(kvp_stage_ring *r, int32_t dev) {
    if (!r->buf[0]) {
        for (uint32_t i = 0; i < r->nslots; i++) {
            void *p = NULL;
            int32_t st = r->ops->host_alloc(r->slot_bytes, &p);
            if (st != KVP_SUCCESS) {
                for (uint32_t j = 0; j < i; j++) {
                    r->ops->host_free(r->buf[j]);
                    r->buf[j] = NULL;
                }
                return ring_fail(r, kvp_err_wrap(st, "allocating %u x %llu bytes of pinned "
                                                 "staging memory", r->nslots,
                                                 (unsigned long long)r->slot_bytes));
            }
            r->buf[i] = p;
        }
    }
    if (r->dev == dev) return KVP_SUCCESS;
    (void)ring_wait_all(r);
    ring_drop_events(r);
    for (uint32_t i = 0; i < r->nslots; i++) {
        int32_t st = r->ops->event_create(dev, &r->ev[i]);
        if (st != KVP_SUCCESS) {
            r->dev = dev;
            ring_drop_events(r);
            return ring_fail(r, st);
        }
    }
    r->dev = dev;
    return KVP_SUCCESS;
}

static void ring_fini(kvp_stage_ring *r) {
    (void)ring_wait_all(r);
    ring_drop_events(r);
    for (uint32_t i = 0; i < r->nslots; i++) {
        if (r->buf[i]) r->ops->host_free(r->buf[i]);
        r->buf[i] = NULL;
    }
}

/* --------------------------------------------------------- device -> host ---- */

void kvp_stx_init(kvp_stx *s, const kvp_stage_ops *ops, uint32_t nslots, uint64_t slot_bytes) {
    memset(s, 0, sizeof *s);
    ring_init(&s->r, ops, nslots, slot_bytes);
}

void kvp_stx_fini(kvp_stx *s) {
    ring_fini(&s->r);
    s->count = s->head = 0;
    s->used = 0;
}

bool kvp_stx_full(const kvp_stx *s) { return s->count == s->r.nslots; }

int32_t kvp_stx_feed(kvp_stx *s, const void *key, int32_t dev, uint64_t src, uint64_t off,
                     uint64_t len, uint64_t *taken) {
    kvp_stage_ring *r = &s->r;
    *taken = 0;
    if (len == 0 || kvp_stx_full(s)) return KVP_SUCCESS;
    /* Events belong to one device: switch only once the ring is empty. */
    if (r->dev >= 0 && r->dev != dev && s->count > 0) return KVP_SUCCESS;
    int32_t st = ring_ensure(r, dev);
    if (st != KVP_SUCCESS) return st;
    while (*taken < len && s->count < r->nslots) {
        uint32_t slot = (s->head + s->count) % r->nslots;
        /* A free slot's last copy was waited for when it was consumed (or reset). */
        uint64_t n = KVP_MIN(r->slot_bytes, len - *taken);
        st = r->ops->copy(dev, KVP_STAGE_D2H, (uint64_t)(uintptr_t)r->buf[slot],
                          src + off + *taken, n, r->ev[slot]);
        if (st != KVP_SUCCESS) return ring_fail(r, st);
        r->busy[slot] = true;
        s->c[slot] = (kvp_stx_chunk){key, off + *taken, n};
        s->count++;
        *taken += n;
    }
    return KVP_SUCCESS;
}

bool kvp_stx_tail(const kvp_stx *s, const void **key, uint64_t *end) {
    if (s->count == 0) return false;
    const kvp_stx_chunk *c = &s->c[(s->head + s->count - 1) % s->r.nslots];
    *key = c->key;
    *end = c->off + c->len;
    return true;
}

bool kvp_stx_holds(const kvp_stx *s, const void *key) {
    for (uint32_t i = 0; i < s->count; i++)
        if (s->c[(s->head + i) % s->r.nslots].key == key) return true;
    return false;
}

int32_t kvp_stx_front(kvp_stx *s, const void *key, uint64_t off, const uint8_t **p,
                      uint64_t *n) {
    if (s->count == 0) return KVP_ERR_NOT_FOUND;
    uint32_t slot = s->head;
    const kvp_stx_chunk *c = &s->c[slot];
    if (c->key != key || c->off + s->used != off) return KVP_ERR_NOT_FOUND;
    int32_t st = ring_wait(&s->r, slot);
    if (st != KVP_SUCCESS) return st;
    *p = s->r.buf[slot] + s->used;
    *n = c->len - s->used;
    return KVP_SUCCESS;
}

void kvp_stx_consume(kvp_stx *s, uint64_t n) {
    if (s->count == 0) return;
    s->used += n;
    if (s->used >= s->c[s->head].len) {
        s->head = (s->head + 1) % s->r.nslots;
        s->count--;
        s->used = 0;
    }
}

void kvp_stx_reset(kvp_stx *s) {
    (void)ring_wait_all(&s->r);
    s->head = s->count = 0;
    s->used = 0;
}

/* --------------------------------------------------------- host -> device ---- */

void kvp_srx_init(kvp_srx *s, const kvp_stage_ops *ops, uint32_t nslots, uint64_t slot_bytes) {
    memset(s, 0, sizeof *s);
    ring_init(&s->r, ops, nslots, slot_bytes);
    s->pdev = -1;
}

void kvp_srx_fini(kvp_srx *s) { ring_fini(&s->r); }

int32_t kvp_srx_begin(kvp_srx *s, int32_t dev, uint64_t dst) {
    int32_t st = ring_ensure(&s->r, dev); /* waits for queued copies if dev changes */
    if (st != KVP_SUCCESS) return st;
    s->fill = 0;
    s->dst = dst;
    s->pdev = dev;
    return KVP_SUCCESS;
}

int32_t kvp_srx_space(kvp_srx *s, uint8_t **p, uint64_t *n) {
    int32_t st = ring_wait(&s->r, s->cur);
    if (st != KVP_SUCCESS) return st;
    *p = s->r.buf[s->cur] + s->fill;
    *n = s->r.slot_bytes - s->fill;
    return KVP_SUCCESS;
}

int32_t kvp_srx_commit(kvp_srx *s, uint64_t n, bool end) {
    kvp_stage_ring *r = &s->r;
    s->fill += n;
    if (s->fill < r->slot_bytes && !(end && s->fill > 0)) return KVP_SUCCESS;
    int32_t st = r->ops->copy(s->pdev, KVP_STAGE_H2D, s->dst, (uint64_t)(uintptr_t)r->buf[s->cur],
                              s->fill, r->ev[s->cur]);
    if (st != KVP_SUCCESS) {
        s->fill = 0;
        return ring_fail(r, st);
    }
    r->busy[s->cur] = true;
    s->dst += s->fill;
    s->fill = 0;
    s->cur = (s->cur + 1) % r->nslots;
    return KVP_SUCCESS;
}

int32_t kvp_srx_drain(kvp_srx *s) { return ring_wait_all(&s->r); }
