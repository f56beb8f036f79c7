/* notif.c - notification queue of an agent (filled by the progress thread as frames
 * arrive, or directly for loopback) and kvp_notif_send/take/wait. */
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "builtin.h"
#include "errors.h"

bool bi_notif_full(bi_agent *a) { return atomic_load(&a->nq_full); }

static void update_full_locked(bi_agent *a) {
    atomic_store(&a->nq_full, a->nq_count >= a->max_notifs || a->nq_bytes >= a->max_notif_bytes);
}

bool bi_notif_push(bi_agent *a, const char *from, uint32_t from_len, const uint8_t *msg,
                   uint32_t len, bool wire) {
    if (!wire && bi_notif_full(a)) {
        atomic_fetch_add(&a->n_notifs_refused, 1);
        return false;
    }
    bi_notif *n = malloc(sizeof *n + from_len + len);
    if (!n) return false; /* out of memory: the notification is lost, nothing else breaks */
    n->next = NULL;
    n->name_len = from_len;
    n->msg_len = len;
    memcpy(n->data, from, from_len);
    if (len) memcpy(n->data + from_len, msg, len);
    pthread_mutex_lock(&a->mu);
    if (a->nq_tail) a->nq_tail->next = n;
    else a->nq_head = n;
    a->nq_tail = n;
    a->nq_count++;
    a->nq_bytes += sizeof *n + from_len + len;
    update_full_locked(a);
    pthread_cond_broadcast(&a->nq_cv);
    pthread_mutex_unlock(&a->mu);
    atomic_store_explicit(&a->last_notif_in_ns, kvp_now_ns(), memory_order_relaxed);
    bi_event(a);
    return true;
}

/* The event of the agent whose a->mu this thread held (bi_event_locked), for a direct
 * notifier, which is called only once the lock is gone (bi_event_flush). */
static _Thread_local bi_agent *t_deferred;

static void event_byte(bi_agent *a) {
    int fd = atomic_load_explicit(&a->event_w, memory_order_acquire);
    if (fd < 0) return;
    /* Full (the reader is behind: it will wake for the bytes already there), or the
     * reader closed its end: nothing to do. MSG_NOSIGNAL: never SIGPIPE. */
    (void)send(fd, "", 1, MSG_DONTWAIT | MSG_NOSIGNAL);
}

void bi_event(bi_agent *a) {
    kvp_notifier *n = atomic_load_explicit(&a->notifier, memory_order_acquire);
    if (n) kvp_notifier_signal(n);
    event_byte(a);
}

void bi_event_locked(bi_agent *a) {
    kvp_notifier *n = atomic_load_explicit(&a->notifier, memory_order_acquire);
    if (n && kvp_notifier_direct(n)) t_deferred = a;
    else if (n) kvp_notifier_signal(n); /* a leaf lock: fine under a->mu */
    event_byte(a);
}

void bi_event_flush(void) {
    bi_agent *a = t_deferred;
    if (!a) return;
    t_deferred = NULL;
    kvp_notifier *n = atomic_load_explicit(&a->notifier, memory_order_acquire);
    if (n) kvp_notifier_signal(n);
}

int32_t bi_event_ack(kvp_agent *ka) {
    kvp_notifier *n = atomic_load_explicit(&bi_of(ka)->notifier, memory_order_acquire);
    if (n) kvp_notifier_ack(n);
    return KVP_SUCCESS;
}

bool bi_events_wanted(bi_agent *a) {
    return atomic_load(&a->event_w) >= 0 || atomic_load(&a->notifier) != NULL;
}

int32_t bi_event_notify(kvp_agent *ka, kvp_event_fn fn, uint64_t ctx, uint32_t flags) {
    bi_agent *a = bi_of(ka);
    pthread_mutex_lock(&a->mu);
    int32_t st = KVP_SUCCESS;
    if (atomic_load(&a->notifier) != NULL) {
        st = kvp_err(KVP_ERR_NOT_ALLOWED, "kvp_event_notify: agent %s has a notifier already",
                     a->base.name);
    } else {
        kvp_notifier *n = NULL;
        st = kvp_notifier_start(fn, ctx, flags, a->base.name, &n);
        if (st == KVP_SUCCESS) atomic_store_explicit(&a->notifier, n, memory_order_release);
    }
    pthread_mutex_unlock(&a->mu);
    return st;
}

int32_t bi_event_fd(kvp_agent *ka, int32_t *out) {
    bi_agent *a = bi_of(ka);
    int sv[2];
    pthread_mutex_lock(&a->mu);
    int32_t st = KVP_SUCCESS;
    if (atomic_load(&a->event_w) >= 0) {
        st = kvp_err(KVP_ERR_NOT_ALLOWED,
                     "kvp_event_fd: agent %s has handed out its event descriptor already",
                     a->base.name);
    } else if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, sv) != 0) {
        st = kvp_err(KVP_ERR_BACKEND, "kvp_event_fd: socketpair failed: %s", strerror(errno));
    } else {
        /* Only our end writes, only theirs reads. */
        (void)shutdown(sv[0], SHUT_WR);
        (void)shutdown(sv[1], SHUT_RD);
        atomic_store_explicit(&a->event_w, sv[1], memory_order_release);
        *out = sv[0];
    }
    pthread_mutex_unlock(&a->mu);
    return st;
}

void bi_notif_free_all(bi_agent *a) {
    while (a->nq_head) {
        bi_notif *n = a->nq_head;
        a->nq_head = n->next;
        free(n);
    }
    a->nq_tail = NULL;
    a->nq_count = 0;
    a->nq_bytes = 0;
}

int32_t bi_notif_send(kvp_agent *ka, const char *remote, const uint8_t *msg, uint64_t len) {
    bi_agent *a = bi_of(ka);
    if (strcmp(remote, a->base.name) == 0) {
        if (!bi_notif_push(a, a->base.name, (uint32_t)strlen(a->base.name), msg, (uint32_t)len,
                           false))
            return kvp_err(KVP_ERR_BACKEND,
                           "kvp_notif_send: the notification queue of agent %s is full "
                           "(max_notifs=%u, max_notif_bytes=%llu): take notifications",
                           a->base.name, a->max_notifs, (unsigned long long)a->max_notif_bytes);
        return KVP_SUCCESS;
    }
    pthread_mutex_lock(&a->mu);
    bi_remote *rm = bi_remote_find(a, remote);
    if (rm) bi_remote_ref(rm); /* it cannot leave the table during the call */
    pthread_mutex_unlock(&a->mu);
    if (!rm)
        return kvp_err(KVP_ERR_NOT_FOUND,
                       "kvp_notif_send: agent %s is not loaded in %s (load its metadata first)",
                       remote, a->base.name);
    bi_conn *c = NULL;
    int32_t st = bi_tcp_conn_get(a, rm, &c);
    if (st == KVP_SUCCESS) {
        st = bi_tcp_send_notif(c, msg, (uint32_t)len);
        bi_conn_put(c);
    }
    bi_remote_unref(rm);
    return st;
}

int32_t bi_notif_take(kvp_agent *ka, uint8_t *buf, uint64_t cap, uint64_t *len,
                      uint64_t *count) {
    bi_agent *a = bi_of(ka);
    uint64_t used = 0, k = 0;
    pthread_mutex_lock(&a->mu);
    while (a->nq_head) {
        bi_notif *n = a->nq_head;
        uint64_t need = 8ull + n->name_len + n->msg_len;
        if (!buf || need > cap - used) {
            if (k == 0) used = need; /* report the size of the first record */
            break;
        }
        uint8_t *q = buf + used;
        kvp_put_u32(q, n->name_len);
        memcpy(q + 4, n->data, n->name_len);
        kvp_put_u32(q + 4 + n->name_len, n->msg_len);
        if (n->msg_len) memcpy(q + 8 + n->name_len, n->data + n->name_len, n->msg_len);
        used += need;
        k++;
        a->nq_head = n->next;
        if (!a->nq_head) a->nq_tail = NULL;
        a->nq_count--;
        a->nq_bytes -= sizeof *n + n->name_len + n->msg_len;
        free(n);
    }
    update_full_locked(a);
    /* Connections paused for room are read again: the progress thread resumes them. */
    bool wake = k > 0 && a->notif_paused && !bi_notif_full(a);
    pthread_mutex_unlock(&a->mu);
    if (wake && a->wakefd >= 0) {
        uint64_t one = 1;
        ssize_t w = write(a->wakefd, &one, sizeof one);
        KVP_UNUSED(w);
    }
    *len = used;
    *count = k;
    return KVP_SUCCESS;
}

int32_t bi_notif_wait(kvp_agent *ka, int64_t timeout_ms) {
    bi_agent *a = bi_of(ka);
    struct timespec dl = kvp_deadline_ms(timeout_ms);
    int32_t st;
    pthread_mutex_lock(&a->mu);
    while (a->nq_count == 0 && !a->dying) {
        if (pthread_cond_timedwait(&a->nq_cv, &a->mu, &dl) == ETIMEDOUT) break;
    }
    if (a->dying) st = kvp_err(KVP_ERR_CANCELED, "agent %s is being destroyed", a->base.name);
    else st = a->nq_count > 0 ? KVP_SUCCESS : KVP_IN_PROG;
    pthread_mutex_unlock(&a->mu);
    return st;
}
