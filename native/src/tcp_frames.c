/*
 * tcp_frames.c - an initiator's TCP requests: frames prebuilt at request creation,
 * queued on post, unlinked on cancel (see tcp.h).
 */
#include <stdio.h>
#include <unistd.h>

#include "errors.h"
#include "tcp.h"

void bi_tcp_free_frames(bi_req *r) {
    for (uint32_t i = 0; i < r->ntx; i++) free(r->tx[i].hdyn);
    free(r->tx);
    r->tx = NULL;
    r->ntx = 0;
}

/* READ_REQ frames: at most W_READ_PIECES_PER_FRAME pieces each, and, when the peer's
 * side is VRAM, one device per frame (the device travels in the header). */
static uint64_t read_frames(const bi_req *r, bool build, bi_txi *tx, int32_t *st) {
    bool vram = r->rtype == KVP_VRAM;
    uint64_t n = 0, first = 0;
    while (first < r->np) {
        uint64_t cnt = 1;
        while (first + cnt < r->np && cnt < W_READ_PIECES_PER_FRAME &&
               (!vram || r->p[first + cnt].rdev == r->p[first].rdev))
            cnt++;
        if (build) {
            uint32_t blen = (uint32_t)(8 + 16 * cnt);
            bi_txi *t = &tx[n];
            t->hdyn = malloc(W_HDR + blen);
            if (!t->hdyn) {
                *st = kvp_err(KVP_ERR_BACKEND, "out of memory preparing frames");
                return n;
            }
            w_hdr wh = {W_READ_REQ, (uint16_t)((first + cnt == r->np ? W_FLAG_ACK : 0) |
                                               (vram ? W_FLAG_VRAM : 0)),
                        blen, vram ? (int32_t)r->p[first].rdev : 0, 0, 0};
            w_hdr_put(t->hdyn, &wh);
            kvp_put_u32(t->hdyn + W_HDR, (uint32_t)first);
            kvp_put_u32(t->hdyn + W_HDR + 4, (uint32_t)cnt);
            for (uint64_t i = 0; i < cnt; i++) {
                uint8_t *q = t->hdyn + W_HDR + 8 + 16 * i;
                kvp_put_u64(q, r->p[first + i].other);
                kvp_put_u64(q + 8, r->p[first + i].len);
            }
            t->hlen = W_HDR + blen;
            t->req = (bi_req *)r;
        }
        n++;
        first += cnt;
    }
    return n;
}

int32_t bi_tcp_prepare(bi_req *r) {
    if (r->np == 0) return KVP_SUCCESS;
    if (r->np > UINT32_MAX) return kvp_err(KVP_ERR_INVALID_PARAM, "too many pieces");
    int32_t st = KVP_SUCCESS;
    uint64_t n = r->op == KVP_WRITE ? r->np : read_frames(r, false, NULL, &st);
    r->tx = calloc((size_t)n, sizeof *r->tx);
    if (!r->tx) return kvp_err(KVP_ERR_BACKEND, "out of memory preparing frames");
    r->ntx = (uint32_t)n;
    if (r->op == KVP_WRITE) {
        bool vram = r->rtype == KVP_VRAM;
        for (uint64_t i = 0; i < n; i++) {
            bi_txi *t = &r->tx[i];
            const bi_piece *p = &r->p[i];
            w_hdr wh = {W_WRITE,
                        (uint16_t)((i + 1 == n ? W_FLAG_ACK : 0) | (vram ? W_FLAG_VRAM : 0)), 8,
                        vram ? (int32_t)p->rdev : 0, 0, p->len};
            w_hdr_put(t->hbuf, &wh);
            kvp_put_u64(t->hbuf + W_HDR, p->other);
            t->hlen = W_HDR + 8;
            t->pay = (const uint8_t *)(uintptr_t)p->mem;
            t->plen = p->len;
            t->vram = p->ldev >= 0 ? p->ldev + 1 : 0; /* staged out of our VRAM */
            t->req = r;
        }
        return KVP_SUCCESS;
    }
    (void)read_frames(r, true, r->tx, &st);
    if (st != KVP_SUCCESS) bi_tcp_free_frames(r);
    return st;
}

void tcp_pend_free(bi_pend *p) {
    kvp_obj_put(&p->req->obj);
    free(p->got);
    free(p);
}

int32_t bi_tcp_post(bi_conn *c, bi_req *r, uint64_t post_id) {
    bi_pend *p = calloc(1, sizeof *p);
    if (!p) return kvp_err(KVP_ERR_BACKEND, "out of memory");
    if (r->op == KVP_READ && !(p->got = calloc((size_t)((r->np + 7) / 8), 1))) {
        free(p);
        return kvp_err(KVP_ERR_BACKEND, "out of memory");
    }
    p->post_id = post_id;
    p->req = r;
    kvp_obj_ref(&r->obj);
    p->left = r->op == KVP_READ ? r->np : 0;
    pthread_mutex_lock(&c->rx_mu);
    p->next = c->pend;
    c->pend = p;
    pthread_mutex_unlock(&c->rx_mu);
    pthread_mutex_lock(&c->tx_mu);
    if (atomic_load(&c->dead) || atomic_load(&c->broken)) {
        pthread_mutex_unlock(&c->tx_mu);
        bi_tcp_cancel(c, r);
        return kvp_err(KVP_ERR_REMOTE_DISCONNECT, "connection to %s is closed", c->peer);
    }
    if (r->op == KVP_WRITE && r->ltype == KVP_VRAM && !tcp_stage_tx_ensure(c)) {
        pthread_mutex_unlock(&c->tx_mu);
        bi_tcp_cancel(c, r);
        return kvp_err(KVP_ERR_BACKEND, "out of memory staging VRAM for %s", c->peer);
    }
    TRACE("post %llu: %u frames to %s (queue %s)", (unsigned long long)post_id, r->ntx, c->peer,
          c->th ? "busy" : "empty");
    for (uint32_t i = 0; i < r->ntx; i++) {
        bi_txi *t = &r->tx[i];
        uint8_t *h = t->hdyn ? t->hdyn : t->hbuf;
        kvp_put_u64(h + 16, post_id);
        t->hoff = 0;
        t->poff = 0;
        t->zero = false;
        tcp_tx_append_locked(c, t);
        r->txq++;
    }
    tcp_tx_flush_locked(c);
    pthread_mutex_unlock(&c->tx_mu);
    return KVP_SUCCESS;
}


void bi_tcp_cancel(bi_conn *c, bi_req *r) {
    /* Receive side first: after this the progress thread writes no byte into r's
     * memory (it checks c->cur under rx_mu around every recv). */
    bi_pend *drop = NULL;
    pthread_mutex_lock(&c->rx_mu);
    /* Copies staged into r's VRAM may still be queued: wait for them (the progress
     * thread queues them under rx_mu, so none starts after this). */
    if (c->srx && r->ltype == KVP_VRAM) (void)kvp_srx_drain(c->srx);
    for (bi_pend **pp = &c->pend; *pp;) {
        bi_pend *p = *pp;
        if (p->req == r) {
            if (c->cur == p) c->cur = NULL;
            *pp = p->next;
            p->next = drop;
            drop = p;
        } else {
            pp = &p->next;
        }
    }
    pthread_mutex_unlock(&c->rx_mu);
    while (drop) {
        bi_pend *p = drop;
        drop = p->next;
        tcp_pend_free(p);
    }
    tcp_tx_purge(c, r);
}
