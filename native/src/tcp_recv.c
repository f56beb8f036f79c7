/*
 * tcp_recv.c - the receive state machine of a connection (header, body, payload; run
 * by the progress thread) and the answers to our own requests (WRITE_ACK, READ_DATA
 * received straight into our memory, READ_ERR) (see tcp.h).
 */
#include <stdio.h>
#include <sys/socket.h>
#include <unistd.h>

#include "errors.h"
#include "tcp.h"

void tcp_sanitize_msg(const uint8_t *b, uint32_t n, char *out, size_t cap) {
    size_t k = 0;
    for (uint32_t i = 0; i < n && k + 1 < cap; i++) out[k++] = (b[i] < 0x20 || b[i] == 0x7f) ? ' ' : (char)b[i];
    out[k] = '\0';
}

static bi_pend *pend_take(bi_conn *c, uint64_t post_id) {
    for (bi_pend **pp = &c->pend; *pp; pp = &(*pp)->next) {
        if ((*pp)->post_id == post_id) {
            bi_pend *p = *pp;
            *pp = p->next;
            p->next = NULL;
            return p;
        }
    }
    return NULL;
}

/* A READ that cannot land (staging into VRAM failed): the request fails, the rest of
 * its data is dropped. Progress thread; rx_mu NOT held. */
static void read_fail_with(bi_conn *c, uint64_t post_id, int32_t status, const char *m) {
    pthread_mutex_lock(&c->rx_mu);
    bi_pend *p = pend_take(c, post_id);
    if (p && c->cur == p) c->cur = NULL;
    if (c->srx) (void)kvp_srx_drain(c->srx);
    pthread_mutex_unlock(&c->rx_mu);
    if (!p) return;
    tcp_tx_purge(c, p->req);
    bi_req_finish(p->req, p->post_id, status, m);
    tcp_pend_free(p);
}

static void read_fail(bi_conn *c, uint64_t post_id, const char *what) {
    char m[600];
    snprintf(m, sizeof m, "%s: %.400s", what,
             c->srx && c->srx->r.msg[0] ? c->srx->r.msg : kvp_err_text());
    if (c->srx) c->srx->r.msg[0] = '\0';
    read_fail_with(c, post_id, KVP_ERR_BACKEND, m);
}

/* READ_END: the target served the whole request; it completes if every piece came. */
static void read_end(bi_conn *c, const w_hdr *h, const uint8_t *b) {
    pthread_mutex_lock(&c->rx_mu);
    bi_pend *p = pend_take(c, h->req_id);
    int32_t st = KVP_SUCCESS;
    char m[W_MAX_MSG + 200] = "";
    if (p && h->status != KVP_SUCCESS) {
        st = h->status < 0 && h->status >= KVP_ERR_NO_TELEMETRY ? h->status : KVP_ERR_BACKEND;
        tcp_sanitize_msg(b, h->body_len, m, W_MAX_MSG + 1);
    } else if (p && p->left > 0) {
        st = KVP_ERR_BACKEND;
        snprintf(m, sizeof m, "agent %s ended a READ with %llu of its pieces missing", c->peer,
                 (unsigned long long)p->left);
    }
    /* Staged into VRAM: complete once the copies to the device are done. */
    if (p && c->srx && p->req->ltype == KVP_VRAM) {
        int32_t ds = kvp_srx_drain(c->srx);
        if (ds != KVP_SUCCESS && st == KVP_SUCCESS) {
            st = ds;
            snprintf(m, sizeof m, "copying READ data into VRAM failed: %.400s",
                     c->srx->r.msg[0] ? c->srx->r.msg : kvp_err_text());
        }
        c->srx->r.msg[0] = '\0';
    }
    pthread_mutex_unlock(&c->rx_mu);
    if (!p) return; /* cancelled meanwhile */
    if (st == KVP_SUCCESS) bi_req_complete(p->req, p->post_id);
    else bi_req_finish(p->req, p->post_id, st, m);
    tcp_pend_free(p);
}

/* An answer to one of our requests (outbound connection), header and body complete. May
 * switch the receiver to payload mode (READ_DATA). */
static bool initiator_dispatch(bi_conn *c, const char **why) {
    w_hdr *h = &c->h;
    const uint8_t *b = c->body;
    switch (h->op) {
    case W_WRITE_ACK: {
        pthread_mutex_lock(&c->rx_mu);
        bi_pend *p = pend_take(c, h->req_id);
        pthread_mutex_unlock(&c->rx_mu);
        if (!p) return true; /* cancelled meanwhile */
        if (h->status == KVP_SUCCESS) {
            bi_req_complete(p->req, p->post_id);
        } else {
            char m[W_MAX_MSG + 1];
            tcp_sanitize_msg(b, h->body_len, m, sizeof m);
            int32_t st = h->status < 0 && h->status >= KVP_ERR_NO_TELEMETRY ? h->status
                                                                            : KVP_ERR_BACKEND;
            bi_req_finish(p->req, p->post_id, st, m);
        }
        tcp_pend_free(p);
        return true;
    }
    case W_READ_ERR: {
        pthread_mutex_lock(&c->rx_mu);
        bi_pend *p = pend_take(c, h->req_id);
        pthread_mutex_unlock(&c->rx_mu);
        if (!p) return true;
        /* Later READ_REQ frames of the request may still be queued: unlink them before
         * the request can finish (and be posted again). */
        tcp_tx_purge(c, p->req);
        char m[W_MAX_MSG + 1];
        tcp_sanitize_msg(b, h->body_len, m, sizeof m);
        int32_t st = h->status < 0 && h->status >= KVP_ERR_NO_TELEMETRY ? h->status
                                                                        : KVP_ERR_BACKEND;
        bi_req_finish(p->req, p->post_id, st, m);
        tcp_pend_free(p);
        return true;
    }
    case W_READ_END:
        read_end(c, h, b);
        return true;
    case W_READ_DATA: {
        if (h->body_len != 8) {
            *why = "malformed READ_DATA";
            return false;
        }
        uint32_t idx = kvp_get_u32(b);
        c->rx = RX_PAY;
        c->left = h->payload_len;
        c->pay = PAY_DISCARD;
        pthread_mutex_lock(&c->rx_mu);
        bi_pend *p = NULL;
        for (bi_pend *q = c->pend; q; q = q->next)
            if (q->post_id == h->req_id) p = q;
        c->rx_vdev = -1;
        uint64_t fail_post = 0;
        bi_req *fail_req = NULL;
        if (p) {
            bi_req *r = p->req;
            if (idx >= r->np || r->p[idx].len != h->payload_len) {
                pthread_mutex_unlock(&c->rx_mu);
                *why = "READ_DATA does not match the request";
                return false;
            }
            if (p->got[idx / 8] & (1u << (idx % 8))) {
                /* A piece already received: never counted twice, never landed twice. */
                uint64_t post = p->post_id;
                pthread_mutex_unlock(&c->rx_mu);
                char m[400];
                snprintf(m, sizeof m,
                         "agent %s sent piece %u of a READ twice; the request is failed and "
                         "the duplicate dropped",
                         c->peer, idx);
                read_fail_with(c, post, KVP_ERR_MISMATCH, m);
                return true;
            }
            p->got[idx / 8] |= (uint8_t)(1u << (idx % 8));
            c->cur = p;
            c->dst = (uint8_t *)(uintptr_t)r->p[idx].mem;
            c->pay = PAY_READ;
            if (r->p[idx].ldev >= 0) {
                /* Lands in our VRAM: staged through pinned slots. */
                int32_t st = tcp_stage_rx_ensure(c)
                                 ? kvp_srx_begin(c->srx, r->p[idx].ldev, r->p[idx].mem)
                                 : kvp_err(KVP_ERR_BACKEND, "out of memory");
                if (st == KVP_SUCCESS) {
                    c->rx_vdev = r->p[idx].ldev;
                } else {
                    fail_post = p->post_id;
                    fail_req = r;
                    c->cur = NULL;
                    c->pay = PAY_DISCARD;
                }
            }
        }
        pthread_mutex_unlock(&c->rx_mu);
        if (fail_req) read_fail(c, fail_post, "staging READ data into VRAM failed");
        return true;
    }
    default:
        *why = "frame not expected from a target";
        return false;
    }
}

/* Handles a complete header+body. Returns false when the connection must close (why
 * set). */
static bool dispatch(bi_conn *c, const char **why) {
    w_hdr *h = &c->h;
    TRACE("rx %s op %u req %llu flags %u body %u payload %llu", c->inbound ? "in" : "out",
          h->op, (unsigned long long)h->req_id, h->flags, h->body_len,
          (unsigned long long)h->payload_len);
    c->rx = RX_HDR;
    c->hgot = 0;
    return c->inbound ? tcp_target_dispatch(c, why) : initiator_dispatch(c, why);
}

/* End of a payload: acks and completions. */
static bool payload_done(bi_conn *c, const char **why) {
    c->rx = RX_HDR;
    c->hgot = 0;
    if (c->h.op == W_WRITE) return tcp_target_write_done(c, why);
    /* READ_DATA: one piece more has landed (the request completes on READ_END). */
    pthread_mutex_lock(&c->rx_mu);
    bi_pend *p = c->cur;
    c->cur = NULL;
    if (p && c->pay == PAY_READ && p->left > 0) p->left--;
    c->rx_vdev = -1;
    pthread_mutex_unlock(&c->rx_mu);
    return true;
}

static void rx_unlock(bi_agent *a) {
    if (a->page_grants) pthread_rwlock_unlock(&a->grant_rw);
    pthread_rwlock_unlock(&a->reg_rw);
}

/* Backpressure at a frame boundary of an inbound connection: no new frame is read while
 * its served READ pieces wait in the send queue beyond max_read_queue (a client that
 * never reads cannot grow us), or while the notification queue is full. */
static bool rx_should_pause(bi_conn *c) {
    bi_agent *a = c->a;
    uint32_t why = 0;
    pthread_mutex_lock(&c->tx_mu);
    if (c->served_q >= a->max_read_queue) why |= PAUSE_READQ;
    pthread_mutex_unlock(&c->tx_mu);
    if (bi_notif_full(a)) why |= PAUSE_NOTIF;
    if (!why) return false;
    pthread_mutex_lock(&c->tx_mu);
    if ((why & PAUSE_READQ) && !(c->rx_paused & PAUSE_READQ))
        atomic_fetch_add(&a->n_read_queue_full, 1);
    c->rx_paused |= why;
    tcp_conn_events_locked(c);
    pthread_mutex_unlock(&c->tx_mu);
    if (why & PAUSE_NOTIF) {
        pthread_mutex_lock(&a->mu);
        a->notif_paused = true; /* kvp_notif_take wakes the progress thread to resume */
        pthread_mutex_unlock(&a->mu);
        /* It may have drained meanwhile: check once more, so no pause outlives it. */
        if (!bi_notif_full(a)) tcp_resume_notif_paused(a);
    }
    return true;
}

/* Reads what is available. Returns false when the connection must close. */
bool tcp_conn_rx(bi_conn *c, uint8_t *scratch, int32_t *status, const char **why) {
    bi_agent *a = c->a;
    uint64_t budget = RX_BUDGET;
    *status = KVP_ERR_REMOTE_DISCONNECT;
    while (budget > 0) {
        ssize_t n;
        if (c->inbound && c->rx == RX_HDR && c->hgot == 0 && rx_should_pause(c)) return true;
        if (c->rx == RX_HDR) {
            n = recv(c->fd, c->hdr + c->hgot, W_HDR - c->hgot, 0);
        } else if (c->rx == RX_BODY) {
            n = recv(c->fd, c->body + c->bgot, c->h.body_len - c->bgot, 0);
        } else {
            if (c->left == 0) {
                if (!payload_done(c, why)) return false;
                continue;
            }
            size_t want = (size_t)KVP_MIN(c->left, KVP_MIN(budget, (uint64_t)1 << 30));
            if (c->pay == PAY_WRITE) {
                pthread_rwlock_rdlock(&a->reg_rw);
                /* Held around the recv like reg_rw, so kvp_revoke waits for it. */
                if (a->page_grants) pthread_rwlock_rdlock(&a->grant_rw);
                if (a->page_grants && c->gepoch != atomic_load(&a->grant_epoch)) {
                    /* A grant changed since the frame was checked. */
                    int32_t mt = c->rx_vdev >= 0 ? KVP_VRAM : KVP_DRAM;
                    uint64_t dv = c->rx_vdev >= 0 ? (uint64_t)c->rx_vdev : 0;
                    if (bi_grants_cover(a->gtab, a->gn, c->peer_token, mt, dv,
                                        (uint64_t)(uintptr_t)c->dst, c->left, KVP_GRANT_WRITE,
                                        kvp_now_ns())) {
                        c->gepoch = atomic_load(&a->grant_epoch);
                    } else {
                        c->pay = PAY_DISCARD;
                        if (c->w_err == KVP_SUCCESS) {
                            c->w_err = KVP_ERR_NOT_ALLOWED;
                            snprintf(c->w_msg, sizeof c->w_msg,
                                     "agent %.200s revoked the grant of 0x%llx (+%llu bytes) during "
                                     "a write of agent %.200s into it",
                                     a->base.name, (unsigned long long)(uintptr_t)c->dst,
                                     (unsigned long long)c->left, c->peer);
                        }
                        rx_unlock(a);
                        continue;
                    }
                }
                if (c->epoch != a->reg_epoch) {
                    /* Something was deregistered since the frame was validated. */
                    if (bi_index_find(&a->lidx, c->rx_vdev >= 0 ? KVP_VRAM : KVP_DRAM,
                                      c->rx_vdev >= 0 ? (uint64_t)c->rx_vdev : 0,
                                      (uint64_t)(uintptr_t)c->dst, c->left)) {
                        c->epoch = a->reg_epoch;
                    } else {
                        c->pay = PAY_DISCARD;
                        if (c->w_err == KVP_SUCCESS) {
                            c->w_err = KVP_ERR_NOT_FOUND;
                            snprintf(c->w_msg, sizeof c->w_msg,
                                     "agent %s deregistered the destination during the write",
                                     a->base.name);
                        }
                        rx_unlock(a);
                        continue;
                    }
                }
                if (c->rx_vdev >= 0) {
                    /* Into a pinned slot; full slots are copied to the device meanwhile. */
                    uint8_t *sp = NULL;
                    uint64_t room = 0;
                    int32_t st = kvp_srx_space(c->srx, &sp, &room);
                    n = st == KVP_SUCCESS ? recv(c->fd, sp, (size_t)KVP_MIN((uint64_t)want, room), 0)
                                          : -2;
                    if (n > 0) st = kvp_srx_commit(c->srx, (uint64_t)n, (uint64_t)n == c->left);
                    if (st != KVP_SUCCESS) {
                        if (c->w_err == KVP_SUCCESS) {
                            c->w_err = st;
                            snprintf(c->w_msg, sizeof c->w_msg,
                                     "agent %s: staging a write into VRAM failed: %.150s",
                                     a->base.name,
                                     c->srx->r.msg[0] ? c->srx->r.msg : kvp_err_text());
                        }
                        c->pay = PAY_DISCARD;
                        if (n == -2) {
                            rx_unlock(a);
                            continue;
                        }
                    }
                } else {
                    n = recv(c->fd, c->dst, want, 0);
                }
                rx_unlock(a);
            } else if (c->pay == PAY_READ) {
                pthread_mutex_lock(&c->rx_mu);
                if (!c->cur) {
                    c->pay = PAY_DISCARD; /* request cancelled */
                    pthread_mutex_unlock(&c->rx_mu);
                    continue;
                }
                uint64_t fail_post = 0;
                if (c->rx_vdev >= 0) {
                    uint8_t *sp = NULL;
                    uint64_t room = 0;
                    int32_t st = kvp_srx_space(c->srx, &sp, &room);
                    n = st == KVP_SUCCESS ? recv(c->fd, sp, (size_t)KVP_MIN((uint64_t)want, room), 0)
                                          : -2;
                    if (n > 0) st = kvp_srx_commit(c->srx, (uint64_t)n, (uint64_t)n == c->left);
                    if (st != KVP_SUCCESS) {
                        fail_post = c->cur->post_id;
                        c->pay = PAY_DISCARD;
                    }
                } else {
                    n = recv(c->fd, c->dst, want, 0);
                }
                pthread_mutex_unlock(&c->rx_mu);
                if (fail_post) read_fail(c, fail_post, "staging READ data into VRAM failed");
                if (n == -2) continue;
            } else {
                n = recv(c->fd, scratch, KVP_MIN(want, (size_t)SCRATCH), 0);
            }
        }
        if (n == 0) {
            *why = c->rx == RX_HDR && c->hgot == 0 ? "peer closed the connection"
                                                    : "peer closed the connection mid-frame";
            return false;
        }
        if (n < 0) {
            if (errno == EINTR) continue;
            if (errno == EAGAIN || errno == EWOULDBLOCK) return true;
            *why = strerror(errno);
            return false;
        }
        budget = (uint64_t)n >= budget ? 0 : budget - (uint64_t)n;
        if (c->rx == RX_HDR) {
            c->hgot += (uint32_t)n;
            if (c->hgot < W_HDR) continue;
            if (!w_hdr_get(c->hdr, &c->h, why)) return false;
            if (c->h.body_len > 0) {
                if (c->bcap < c->h.body_len) {
                    uint8_t *nb = realloc(c->body, c->h.body_len);
                    if (!nb) {
                        *why = "out of memory";
                        return false;
                    }
                    c->body = nb;
                    c->bcap = c->h.body_len;
                }
                c->bgot = 0;
                c->rx = RX_BODY;
                continue;
            }
            if (!dispatch(c, why)) return false;
        } else if (c->rx == RX_BODY) {
            c->bgot += (uint32_t)n;
            if (c->bgot < c->h.body_len) continue;
            if (!dispatch(c, why)) return false;
        } else {
            c->dst += n;
            c->left -= (uint64_t)n;
        }
        /* A payload that is complete (or empty) is finished now, not on the next event:
         * no more bytes may come to trigger one. */
        if (c->rx == RX_PAY && c->left == 0 && !payload_done(c, why)) return false;
    }
    return true;
}
