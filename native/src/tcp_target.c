/*
 * tcp_target.c - the target side of the TCP transport: frames an initiator sends us
 * (HELLO, WRITE, READ_REQ, NOTIF), each range checked against our registrations before
 * a byte lands or leaves, and the WRITE acknowledgement (see tcp.h).
 */
#include <stdio.h>
#include <sys/socket.h>
#include <unistd.h>

#include "errors.h"
#include "tcp.h"

/* An initiator's frame on an inbound connection, header and body complete. May switch
 * the receiver to payload mode (WRITE). */
bool tcp_target_dispatch(bi_conn *c, const char **why) {
    bi_agent *a = c->a;
    w_hdr *h = &c->h;
    const uint8_t *b = c->body;
    if (!c->hello_done && h->op != W_HELLO) {
        *why = "frame before HELLO";
        return false;
    }
    switch (h->op) {
    case W_HELLO: {
        if (c->hello_done || h->body_len < 33 || h->body_len != 33u + b[32] || b[32] == 0) {
            *why = "malformed HELLO";
            return false;
        }
        if (memcmp(b, a->token, 16) != 0) {
            static const char m[] = "token mismatch: you hold metadata of an earlier "
                                    "incarnation of this agent";
            uint8_t f[W_HDR + sizeof m];
            w_hdr wh = {W_HELLO_ERR, 0, sizeof m - 1, KVP_ERR_NOT_ALLOWED, 0, 0};
            w_hdr_put(f, &wh);
            memcpy(f + W_HDR, m, sizeof m - 1);
            (void)send(c->fd, f, W_HDR + sizeof m - 1, MSG_DONTWAIT | MSG_NOSIGNAL);
            *why = "stale HELLO refused";
            return false;
        }
        c->peer_len = b[32];
        memcpy(c->peer_token, b + 16, 16); /* who it says it is: grants are keyed by it */
        pthread_mutex_lock(&a->mu);
        if (a->n_unhello > 0) a->n_unhello--;
        pthread_mutex_unlock(&a->mu);
        memcpy(c->peer, b + 33, c->peer_len);
        c->peer[c->peer_len] = '\0';
        c->hello_done = true;
        return tcp_send_ctrl(c, W_HELLO_OK, 0, 0, NULL, 0) == KVP_SUCCESS ||
               (*why = "cannot answer HELLO", false);
    }
    case W_WRITE: {
        if (h->body_len != 8) {
            *why = "malformed WRITE";
            return false;
        }
        uint64_t addr = kvp_get_u64(b);
        if (h->req_id != c->w_req) {
            c->w_req = h->req_id;
            c->w_err = KVP_SUCCESS;
            c->w_msg[0] = '\0';
        }
        int32_t vdev = (h->flags & W_FLAG_VRAM) ? h->status : -1;
        if ((h->flags & W_FLAG_VRAM) && vdev < 0) {
            *why = "malformed WRITE (VRAM device)";
            return false;
        }
        pthread_rwlock_rdlock(&a->reg_rw);
        bool ok = bi_index_find(&a->lidx, vdev >= 0 ? KVP_VRAM : KVP_DRAM,
                                vdev >= 0 ? (uint64_t)vdev : 0, addr, h->payload_len) != NULL;
        c->epoch = a->reg_epoch;
        pthread_rwlock_unlock(&a->reg_rw);
        if (!ok && c->w_err == KVP_SUCCESS) {
            c->w_err = KVP_ERR_INVALID_PARAM;
            snprintf(c->w_msg, sizeof c->w_msg,
                     "agent %s refused a write of %llu bytes at 0x%llx%s: not inside its "
                     "registered memory",
                     a->base.name, (unsigned long long)h->payload_len,
                     (unsigned long long)addr, vdev >= 0 ? " (VRAM)" : "");
        }
        c->gepoch = atomic_load(&a->grant_epoch);
        if (ok && !bi_grant_allows(a, c->peer_token, vdev >= 0 ? KVP_VRAM : KVP_DRAM,
                                   vdev >= 0 ? (uint64_t)vdev : 0, addr, h->payload_len,
                                   KVP_GRANT_WRITE)) {
            ok = false;
            if (c->w_err == KVP_SUCCESS) {
                c->w_err = KVP_ERR_NOT_ALLOWED;
                snprintf(c->w_msg, sizeof c->w_msg,
                         "agent %.200s refused a write of %llu bytes at 0x%llx%s from agent %.200s: not "
                         "granted to it (page grants)",
                         a->base.name, (unsigned long long)h->payload_len,
                         (unsigned long long)addr, vdev >= 0 ? " (VRAM)" : "", c->peer);
            }
        }
        c->rx_vdev = -1;
        if (ok && vdev >= 0) {
            /* Lands in our VRAM: received into pinned slots, copied to the device. */
            int32_t st = tcp_stage_rx_ensure(c) ? kvp_srx_begin(c->srx, vdev, addr)
                                            : kvp_err(KVP_ERR_BACKEND, "out of memory");
            if (st == KVP_SUCCESS) {
                c->rx_vdev = vdev;
            } else {
                ok = false;
                if (c->w_err == KVP_SUCCESS) {
                    c->w_err = st;
                    snprintf(c->w_msg, sizeof c->w_msg,
                             "agent %s cannot stage a write into VRAM of device %d: %.150s",
                             a->base.name, vdev, kvp_err_text());
                }
            }
        }
        c->rx = RX_PAY;
        c->pay = ok ? PAY_WRITE : PAY_DISCARD;
        c->dst = (uint8_t *)(uintptr_t)addr;
        c->left = h->payload_len;
        return true;
    }
    case W_READ_REQ: {
        if (h->body_len < 8) {
            *why = "malformed READ_REQ";
            return false;
        }
        uint32_t first = kvp_get_u32(b), cnt = kvp_get_u32(b + 4);
        if (cnt > W_READ_PIECES_PER_FRAME || h->body_len != 8u + 16u * cnt) {
            *why = "malformed READ_REQ";
            return false;
        }
        if (c->r_err_req == h->req_id && h->req_id != 0) return true; /* already failed */
        int32_t vdev = (h->flags & W_FLAG_VRAM) ? h->status : -1;
        if ((h->flags & W_FLAG_VRAM) && vdev < 0) {
            *why = "malformed READ_REQ (VRAM device)";
            return false;
        }
        pthread_rwlock_rdlock(&a->reg_rw);
        uint64_t epoch = a->reg_epoch;
        uint32_t bad = UINT32_MAX;
        for (uint32_t i = 0; i < cnt && bad == UINT32_MAX; i++) {
            const uint8_t *q = b + 8 + 16 * i;
            if (!bi_index_find(&a->lidx, vdev >= 0 ? KVP_VRAM : KVP_DRAM,
                               vdev >= 0 ? (uint64_t)vdev : 0, kvp_get_u64(q),
                               kvp_get_u64(q + 8)))
                bad = i;
        }
        pthread_rwlock_unlock(&a->reg_rw);
        uint64_t gepoch = atomic_load(&a->grant_epoch);
        uint32_t ungranted = UINT32_MAX;
        for (uint32_t i = 0; i < cnt && bad == UINT32_MAX && ungranted == UINT32_MAX; i++) {
            const uint8_t *q = b + 8 + 16 * i;
            if (!bi_grant_allows(a, c->peer_token, vdev >= 0 ? KVP_VRAM : KVP_DRAM,
                                 vdev >= 0 ? (uint64_t)vdev : 0, kvp_get_u64(q),
                                 kvp_get_u64(q + 8), KVP_GRANT_READ))
                ungranted = i;
        }
        if (bad != UINT32_MAX || ungranted != UINT32_MAX) {
            char m[600];
            uint32_t at = bad != UINT32_MAX ? bad : ungranted;
            const uint8_t *q = b + 8 + 16 * at;
            int ml = snprintf(m, sizeof m,
                              "agent %s refused a read of %llu bytes at 0x%llx (piece %u)%s%s: %s",
                              a->base.name, (unsigned long long)kvp_get_u64(q + 8),
                              (unsigned long long)kvp_get_u64(q), first + at,
                              bad != UINT32_MAX ? "" : " from agent ",
                              bad != UINT32_MAX ? "" : c->peer,
                              bad != UINT32_MAX ? "not inside its registered memory"
                                                : "not granted to it (page grants)");
            c->r_err_req = h->req_id;
            return tcp_send_ctrl(c, W_READ_ERR,
                                 bad != UINT32_MAX ? KVP_ERR_INVALID_PARAM : KVP_ERR_NOT_ALLOWED,
                                 h->req_id, m, (uint32_t)KVP_MIN((size_t)ml, sizeof m - 1)) ==
                       KVP_SUCCESS ||
                   (*why = "cannot answer READ_REQ", false);
        }
        /* One serve state per request, shared by its batches and its READ_END. */
        if (!c->serve || c->serve->req_id != h->req_id) {
            tcp_serve_put(c->serve);
            c->serve = calloc(1, sizeof *c->serve);
            if (!c->serve) {
                *why = "out of memory serving a read";
                return false;
            }
            atomic_init(&c->serve->refs, 1);
            c->serve->req_id = h->req_id;
        }
        bi_batch *bt = NULL;
        if (cnt > 0) {
            bt = calloc(1, sizeof *bt + (size_t)cnt * sizeof(bi_txi));
            if (!bt) {
                *why = "out of memory serving a read";
                return false;
            }
            bt->left = cnt;
            bt->serve = c->serve;
            bt->conn = c;
            atomic_fetch_add(&c->serve->refs, 1);
        }
        for (uint32_t i = 0; i < cnt; i++) {
            const uint8_t *q = b + 8 + 16 * i;
            bi_txi *t = &bt->items[i];
            uint64_t addr = kvp_get_u64(q), len = kvp_get_u64(q + 8);
            w_hdr wh = {W_READ_DATA, 0, 8, 0, h->req_id, len};
            w_hdr_put(t->hbuf, &wh);
            kvp_put_u32(t->hbuf + W_HDR, first + i);
            kvp_put_u32(t->hbuf + W_HDR + 4, 0);
            t->hlen = W_HDR + 8;
            t->pay = (const uint8_t *)(uintptr_t)addr;
            t->plen = len;
            t->served = true;
            t->saddr = addr;
            t->epoch = epoch;
            t->gepoch = gepoch;
            t->batch = bt;
            t->vram = vdev >= 0 ? vdev + 1 : 0; /* staged out of our VRAM */
        }
        /* The last frame of the request: its READ_END goes after all of its data. */
        bi_txi *end = NULL;
        if (h->flags & W_FLAG_ACK) {
            end = calloc(1, sizeof *end);
            if (!end) {
                if (bt) {
                    tcp_serve_put(bt->serve);
                    free(bt);
                }
                *why = "out of memory serving a read";
                return false;
            }
            end->owned = true;
            end->hlen = W_HDR; /* not empty: never popped before end_build writes it */
            end->end = c->serve; /* takes the connection's reference */
            c->serve = NULL;
        }
        pthread_mutex_lock(&c->tx_mu);
        if (vdev >= 0 && !tcp_stage_tx_ensure(c)) {
            pthread_mutex_unlock(&c->tx_mu);
            if (bt) {
                tcp_serve_put(bt->serve);
                free(bt);
            }
            if (end) tcp_txi_dispose(end);
            *why = "out of memory serving a read of VRAM";
            return false;
        }
        for (uint32_t i = 0; i < cnt; i++) tcp_tx_append_locked(c, &bt->items[i]);
        c->served_q += cnt;
        if (end) tcp_tx_append_locked(c, end);
        tcp_tx_flush_locked(c);
        pthread_mutex_unlock(&c->tx_mu);
        return true;
    }
    case W_NOTIF:
        (void)bi_notif_push(a, c->peer, c->peer_len, b, h->body_len, true);
        return true;
    case W_PROVE: {
        /* Locality challenge: answer with the keyed hash under our page's secret (never
         * the secret itself). Without a page, an answer nobody can verify. */
        if (h->body_len != 16) {
            *why = "malformed PROVE";
            return false;
        }
        uint8_t tag[16];
        int32_t st = KVP_SUCCESS;
        if (a->page.base) bi_prove_tag(a->page.h->secret, b, c->peer_token, a->token, tag);
        else {
            memset(tag, 0, sizeof tag);
            st = KVP_ERR_NOT_SUPPORTED;
        }
        return tcp_send_ctrl(c, W_PROVE_ACK, st, 0, tag, 16) == KVP_SUCCESS ||
               (*why = "cannot answer PROVE", false);
    }
    default:
        *why = "frame not expected from an initiator";
        return false;
    }
}

/* End of a WRITE payload: the acknowledgement after the last frame of a request. */
bool tcp_target_write_done(bi_conn *c, const char **why) {
    bi_agent *a = c->a;
    c->rx_vdev = -1;
    if (!(c->h.flags & W_FLAG_ACK)) return true;
    /* Staged VRAM: acknowledge only once the last copies to the device are done (the
     * initiator then notifies the peer, which may read the pages at once). */
    if (c->srx) {
        int32_t st = kvp_srx_drain(c->srx);
        if (st != KVP_SUCCESS && c->w_err == KVP_SUCCESS) {
            c->w_err = st;
            snprintf(c->w_msg, sizeof c->w_msg,
                     "agent %s: copying a staged write into VRAM failed: %.150s", a->base.name,
                     c->srx->r.msg[0] ? c->srx->r.msg : kvp_err_text());
        }
        c->srx->r.msg[0] = '\0';
    }
    if (tcp_send_ctrl(c, W_WRITE_ACK, c->w_err, c->h.req_id, c->w_msg,
                      (uint32_t)strlen(c->w_msg)) != KVP_SUCCESS) {
        *why = "cannot send WRITE_ACK";
        return false;
    }
    return true;
}
