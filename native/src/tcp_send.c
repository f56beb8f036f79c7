/*
 * tcp_send.c - a connection's send queue: control frames, request frames and served
 * READ data, sent straight from their memory (sendmsg over header + payload iovecs)
 * as far as the socket takes; the progress thread continues on EPOLLOUT (see tcp.h).
 */
#include <stdio.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#include "errors.h"
#include "tcp.h"

static const uint8_t g_zeros[SCRATCH];

void tcp_serve_put(bi_serve *s) {
    if (s && atomic_fetch_sub(&s->refs, 1) == 1) free(s);
}

void tcp_txi_dispose(bi_txi *t) {
    if (t->req) {
        t->req->txq--;
        return; /* belongs to the request */
    }
    if (t->batch) {
        bi_batch *b = t->batch;
        if (b->conn && b->conn->served_q > 0) b->conn->served_q--;
        if (--b->left == 0) {
            tcp_serve_put(b->serve);
            free(b);
        }
        return;
    }
    if (t->owned) {
        tcp_serve_put(t->end);
        free(t->hdyn);
        free(t);
    }
}

/* READ_END: its header and message are written when it is about to be sent, after
 * every data frame of the request before it (so a failure while sending them is in
 * it). tx_mu held. */
static bool end_build(bi_conn *c, bi_txi *t) {
    bi_serve *s = t->end;
    uint32_t ml = s->err != KVP_SUCCESS ? (uint32_t)strlen(s->msg) : 0;
    t->hdyn = malloc(W_HDR + ml);
    if (!t->hdyn) return false;
    w_hdr wh = {W_READ_END, 0, ml, s->err, s->req_id, 0};
    w_hdr_put(t->hdyn, &wh);
    memcpy(t->hdyn + W_HDR, s->msg, ml);
    t->hlen = W_HDR + ml;
    TRACE("READ_END of %llu to %s: %d", (unsigned long long)s->req_id, c->peer, s->err);
    return true;
}

void tcp_conn_events_locked(bi_conn *c) {
    if (c->fd < 0 || atomic_load(&c->dead)) return;
    struct epoll_event ev = {.events = (c->rx_paused ? 0 : EPOLLIN) | (c->out_armed ? EPOLLOUT : 0),
                             .data.ptr = &c->ev};
    (void)epoll_ctl(c->a->epfd, EPOLL_CTL_MOD, c->fd, &ev);
}

static void arm_out(bi_conn *c, bool on) {
    if (c->out_armed == on) return;
    c->out_armed = on;
    tcp_conn_events_locked(c);
}

/* Served pieces went out: a client paused for its queue is read again at half. */
static void readq_drained(bi_conn *c) {
    if ((c->rx_paused & PAUSE_READQ) && c->served_q <= c->a->max_read_queue / 2) {
        c->rx_paused &= ~(uint32_t)PAUSE_READQ;
        tcp_conn_events_locked(c);
    }
}

/* Served payloads (target READ): make sure the range is still registered; otherwise the
 * rest of that payload is sent as zeros (the stream must keep its framing). Caller holds
 * reg_rw for reading. */
void tcp_revalidate_served(bi_conn *c, bi_txi *t) {
    bi_agent *a = c->a;
    if (!t->served || t->zero) return;
    uint64_t ge = atomic_load(&a->grant_epoch);
    if (t->epoch == a->reg_epoch && (!a->page_grants || t->gepoch == ge)) return;
    int32_t mt = t->vram ? KVP_VRAM : KVP_DRAM;
    uint64_t dev = t->vram ? (uint64_t)(t->vram - 1) : 0;
    bool reg = bi_index_find(&a->lidx, mt, dev, t->saddr, t->plen) != NULL;
    /* grant_rw is held (read) by the caller when grants are enforced. */
    bool granted = !a->page_grants || bi_grants_cover(a->gtab, a->gn, c->peer_token, mt, dev,
                                                      t->saddr, t->plen, KVP_GRANT_READ,
                                                      kvp_now_ns());
    if (reg && granted) {
        t->epoch = a->reg_epoch;
        t->gepoch = ge;
        return;
    }
    /* Zeros keep the stream framed; the request's READ_END says it failed. */
    t->zero = true;
    bi_serve *s = t->batch ? t->batch->serve : NULL;
    if (s && s->err == KVP_SUCCESS) {
        s->err = reg ? KVP_ERR_NOT_ALLOWED : KVP_ERR_NOT_FOUND;
        snprintf(s->msg, sizeof s->msg,
                 "agent %.200s %s 0x%llx (+%llu bytes) while serving a READ of it: the data of "
                 "that piece is lost",
                 a->base.name, reg ? "revoked the grant of" : "deregistered",
                 (unsigned long long)t->saddr, (unsigned long long)t->plen);
    }
}


static void tx_unlock(bi_agent *a) {
    if (a->page_grants) pthread_rwlock_unlock(&a->grant_rw);
    pthread_rwlock_unlock(&a->reg_rw);
}

/* Sends as much as the socket takes. Caller holds c->tx_mu. */
void tcp_tx_flush_locked(bi_conn *c) {
    bi_agent *a = c->a;
    while (c->th && !atomic_load(&c->dead) && !atomic_load(&c->broken)) {
        struct iovec iov[TX_IOV];
        int n = 0;
        bool locked = false;
        if (c->inbound) {
            pthread_rwlock_rdlock(&a->reg_rw);
            if (a->page_grants) pthread_rwlock_rdlock(&a->grant_rw);
            locked = true;
        }
        if (c->stx && !tcp_stage_prefetch(c, locked)) {
            if (locked) tx_unlock(a);
            tcp_stage_tx_fail(c);
            return;
        }
        bool failed = false, oom = false;
        for (bi_txi *t = c->th; t && n < TX_IOV - 1; t = t->next) {
            if (t->end) {
                /* Only once every frame before it is on the wire: a failure while
                 * sending them must be in it. */
                if (t != c->th) break;
                if (!t->hdyn && !end_build(c, t)) {
                    oom = true;
                    break;
                }
            }
            if (t->hoff < t->hlen) {
                uint8_t *h = t->hdyn ? t->hdyn : t->hbuf;
                iov[n].iov_base = h + t->hoff;
                iov[n].iov_len = t->hlen - t->hoff;
                n++;
            }
            if (t->poff < t->plen) {
                if (locked) tcp_revalidate_served(c, t);
                if (t->zero && t->vram && c->stx && kvp_stx_holds(c->stx, t))
                    kvp_stx_reset(c->stx); /* its staged chunks will not be sent */
                uint64_t left = t->plen - t->poff;
                if (t->zero) {
                    iov[n].iov_base = (void *)g_zeros;
                    iov[n].iov_len = (size_t)KVP_MIN(left, (uint64_t)SCRATCH);
                    n++;
                    break; /* the item is not done after this entry */
                }
                if (t->vram) {
                    /* The staged copy of the next bytes (waits for its copy). */
                    const uint8_t *sp = NULL;
                    uint64_t sn = 0;
                    int32_t st = c->stx ? kvp_stx_front(c->stx, t, t->poff, &sp, &sn)
                                        : KVP_ERR_BACKEND;
                    if (st == KVP_ERR_NOT_FOUND) {
                        kvp_stx_reset(c->stx);
                        st = tcp_stage_prefetch(c, locked)
                                 ? kvp_stx_front(c->stx, t, t->poff, &sp, &sn)
                                 : KVP_ERR_BACKEND;
                    }
                    if (st != KVP_SUCCESS) {
                        failed = true;
                        break;
                    }
                    iov[n].iov_base = (void *)sp;
                    iov[n].iov_len = (size_t)sn;
                    n++;
                    break; /* one staged chunk per send */
                }
                iov[n].iov_base = (void *)(t->pay + t->poff);
                iov[n].iov_len = (size_t)KVP_MIN(left, IOV_CAP);
                n++;
                if (left > IOV_CAP) break;
            }
        }
        if (failed || oom) {
            if (locked) tx_unlock(a);
            if (failed) {
                tcp_stage_tx_fail(c);
            } else {
                snprintf(c->stage_err, sizeof c->stage_err, "out of memory sending READ_END");
                atomic_store(&c->broken, true);
                (void)shutdown(c->fd, SHUT_RDWR);
            }
            return;
        }
        struct msghdr mh;
        memset(&mh, 0, sizeof mh);
        mh.msg_iov = iov;
        mh.msg_iovlen = (size_t)n;
        ssize_t got = sendmsg(c->fd, &mh, MSG_DONTWAIT | MSG_NOSIGNAL);
        int e = errno;
        if (locked) tx_unlock(a);
        if (got < 0) {
            if (e == EINTR) continue;
            if (e == EAGAIN || e == EWOULDBLOCK) {
                arm_out(c, true);
                return;
            }
            atomic_store(&c->broken, true);
            (void)shutdown(c->fd, SHUT_RDWR); /* the progress thread closes and fails it */
            return;
        }
        uint64_t left = (uint64_t)got;
        while (c->th && left > 0) {
            bi_txi *t = c->th;
            uint64_t hl = t->hlen - t->hoff;
            uint64_t take = KVP_MIN(hl, left);
            t->hoff += (uint32_t)take;
            left -= take;
            if (left > 0 || t->hoff == t->hlen) {
                uint64_t pl = t->plen - t->poff;
                take = KVP_MIN(pl, left);
                t->poff += take;
                left -= take;
                if (t->vram && !t->zero && take > 0) kvp_stx_consume(c->stx, take);
            }
            if (t->hoff == t->hlen && t->poff == t->plen) {
                c->th = t->next;
                if (!c->th) c->tt = NULL;
                tcp_txi_dispose(t);
            } else {
                break;
            }
        }
        /* Items of zero payload fully covered by the header bytes are popped above; an
         * item whose header was just finished with no payload left also pops here. */
        while (c->th && c->th->hoff == c->th->hlen && c->th->poff == c->th->plen) {
            bi_txi *t = c->th;
            c->th = t->next;
            if (!c->th) c->tt = NULL;
            tcp_txi_dispose(t);
        }
    }
    if (c->rx_paused & PAUSE_READQ) readq_drained(c);
    if (!c->th && c->fd >= 0 && !atomic_load(&c->dead)) arm_out(c, false);
}

void tcp_tx_append_locked(bi_conn *c, bi_txi *t) {
    t->next = NULL;
    if (c->tt) c->tt->next = t;
    else c->th = t;
    c->tt = t;
}

/* Queues an owned control frame (header + body, no payload) and flushes. */
int32_t tcp_send_ctrl(bi_conn *c, uint8_t op, int32_t status, uint64_t req_id,
                         const void *body, uint32_t blen) {
    bi_txi *t = calloc(1, sizeof *t);
    if (!t) return kvp_err(KVP_ERR_BACKEND, "out of memory");
    t->owned = true;
    uint8_t *h = t->hbuf;
    if (W_HDR + blen > sizeof t->hbuf) {
        t->hdyn = malloc(W_HDR + blen);
        if (!t->hdyn) {
            free(t);
            return kvp_err(KVP_ERR_BACKEND, "out of memory");
        }
        h = t->hdyn;
    }
    w_hdr wh = {op, 0, blen, status, req_id, 0};
    w_hdr_put(h, &wh);
    if (blen) memcpy(h + W_HDR, body, blen);
    t->hlen = W_HDR + blen;
    pthread_mutex_lock(&c->tx_mu);
    if (atomic_load(&c->dead) || atomic_load(&c->broken)) {
        pthread_mutex_unlock(&c->tx_mu);
        free(t->hdyn);
        free(t);
        return kvp_err(KVP_ERR_REMOTE_DISCONNECT, "connection to %s is closed",
                       c->peer[0] ? c->peer : "peer");
    }
    tcp_tx_append_locked(c, t);
    tcp_tx_flush_locked(c);
    pthread_mutex_unlock(&c->tx_mu);
    return KVP_SUCCESS;
}

int32_t bi_tcp_send_notif(bi_conn *c, const uint8_t *msg, uint32_t len) {
    return tcp_send_ctrl(c, W_NOTIF, 0, 0, msg, len);
}


void tcp_tx_purge(bi_conn *c, bi_req *r) {
    /* Send side: unlink r's frames. A frame already partly on the wire is replaced by
     * a filler carrying the rest of its header and zeros for the rest of its payload,
     * so the stream stays well framed and r's memory is no longer referenced. */
    pthread_mutex_lock(&c->tx_mu);
    /* The ring may hold chunks of r's frames (or, after them, of others): start over. */
    if (r->txq > 0 && c->stx) kvp_stx_reset(c->stx);
    if (r->txq > 0) {
        bi_txi *prev = NULL;
        for (bi_txi *t = c->th; t;) {
            bi_txi *next = t->next;
            if (t->req != r) {
                prev = t;
                t = next;
                continue;
            }
            bi_txi *fill = NULL;
            TRACE("purge frame of post %llu: head=%d hoff=%u/%u poff=%llu/%llu",
                  (unsigned long long)kvp_get_u64((t->hdyn ? t->hdyn : t->hbuf) + 16),
                  t == c->th, t->hoff, t->hlen, (unsigned long long)t->poff,
                  (unsigned long long)t->plen);
            if (t == c->th && (t->hoff > 0 || t->poff > 0)) {
                fill = calloc(1, sizeof *fill);
                uint32_t hl = t->hlen - t->hoff;
                if (fill && hl > 0) {
                    fill->hdyn = malloc(hl);
                    if (!fill->hdyn) {
                        free(fill);
                        fill = NULL;
                    } else {
                        memcpy(fill->hdyn, (t->hdyn ? t->hdyn : t->hbuf) + t->hoff, hl);
                    }
                }
                if (fill) {
                    fill->owned = true;
                    fill->hlen = hl;
                    fill->plen = t->plen - t->poff;
                    fill->zero = true;
                } else if (!atomic_load(&c->dead)) {
                    /* Cannot keep the stream framed: close the connection instead. */
                    atomic_store(&c->broken, true);
                    (void)shutdown(c->fd, SHUT_RDWR);
                }
            }
            if (fill) {
                fill->next = next;
                if (prev) prev->next = fill;
                else c->th = fill;
                if (c->tt == t) c->tt = fill;
                prev = fill;
            } else {
                if (prev) prev->next = next;
                else c->th = next;
                if (c->tt == t) c->tt = prev;
            }
            r->txq--;
            t = next;
        }
    }
    pthread_mutex_unlock(&c->tx_mu);
}
