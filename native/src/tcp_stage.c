/*
 * tcp_stage.c - glue between the TCP transport and stage.c: VRAM payloads staged
 * through pinned host memory, the device-to-host copies of the next payloads queued
 * while earlier bytes are on the wire (see tcp.h).
 */
#include <stdio.h>
#include <sys/socket.h>
#include <unistd.h>

#include "errors.h"
#include "tcp.h"

bool tcp_stage_tx_ensure(bi_conn *c) {
    if (c->stx) return true;
    c->stx = malloc(sizeof *c->stx);
    if (!c->stx) return false;
    kvp_stx_init(c->stx, &kvp_stage_cuda_ops, 0, 0);
    return true;
}

bool tcp_stage_rx_ensure(bi_conn *c) {
    if (c->srx) return true;
    c->srx = malloc(sizeof *c->srx);
    if (!c->srx) return false;
    kvp_srx_init(c->srx, &kvp_stage_cuda_ops, 0, 0);
    return true;
}

/* Staging out of VRAM failed: nothing sensible can go on the wire for that frame, so
 * the connection is shut down (what was pending on it fails with this message). */
void tcp_stage_tx_fail(bi_conn *c) {
    snprintf(c->stage_err, sizeof c->stage_err, "staging VRAM through host memory failed: %.300s",
             c->stx && c->stx->r.msg[0] ? c->stx->r.msg : kvp_err_text());
    atomic_store(&c->broken, true);
    (void)shutdown(c->fd, SHUT_RDWR);
}

/* Queues device-to-host copies of the VRAM payloads next in the send queue, as far as
 * the ring has room, so that they run while earlier bytes are on the wire. Continues
 * after the last chunk fed (whose frame is still queued: a frame leaves the queue only
 * once its chunks were consumed, and removals reset the ring). tx_mu held; on inbound
 * connections reg_rw too (locked). */
bool tcp_stage_prefetch(bi_conn *c, bool locked) {
    kvp_stx *s = c->stx;
    if (!s || kvp_stx_full(s)) return true;
    const void *tk;
    uint64_t tend;
    bi_txi *t;
    uint64_t from;
    if (kvp_stx_tail(s, &tk, &tend)) {
        t = (bi_txi *)(uintptr_t)tk;
        from = tend;
    } else {
        t = c->th;
        from = t ? t->poff : 0;
    }
    int idle = 0; /* items looked at since the last VRAM one (bounded walk) */
    while (t && !kvp_stx_full(s) && idle < 64) {
        if (t->vram && locked) tcp_revalidate_served(c, t);
        if (t->vram && !t->zero && from < t->plen) {
            uint64_t taken = 0;
            int32_t st = kvp_stx_feed(s, t, t->vram - 1, (uint64_t)(uintptr_t)t->pay, from,
                                      t->plen - from, &taken);
            if (st != KVP_SUCCESS) return false;
            if (taken < t->plen - from) break; /* ring full (or another device next) */
            idle = 0;
        } else {
            idle++;
        }
        t = t->next;
        from = t ? t->poff : 0;
    }
    return true;
}
