/* notify.c - kvp_event_notify's notifier threads and kvp_event_quiesce.
 *
 * Lifetimes: a notifier has two references, the agent's (dropped by kvp_notifier_stop)
 * and the list's (dropped once its thread was joined). Its thread touches only the
 * notifier, never the agent, so an agent can be destroyed while the thread is inside
 * fn (blocked in a Deno callback until the JavaScript thread, the one destroying the
 * agent, returns to its event loop): destroy never joins, it only sets `stop`. Threads
 * that have exited are joined by the next start or stop (they are past fn, so a join
 * returns at once) and by kvp_event_quiesce, which waits (bounded) for every notifier
 * of one fn and joins them before the caller unloads fn's code.
 *
 * A direct notifier (KVP_EVENT_DIRECT, for callbacks that never block: Bun's) has no
 * thread: the signalling thread calls fn itself, counted in `running`, and quiesce
 * waits for that count to drop to zero once `stop` is set. */
#include "notify.h"

#include <stdio.h>

#include "errors.h"

struct kvp_notifier {
    pthread_mutex_t mu; /* leaf lock: pending, stop, calls */
    pthread_cond_t cv;
    bool pending;
    bool stop;
    uint64_t calls;
    uint64_t call_ns; /* kvp_now_ns() when the last call started (mu) */
    int running; /* direct calls in progress (mu) */
    bool queued; /* direct: a call was made and not acknowledged yet (mu) */
    bool direct; /* set at start */
    kvp_event_fn fn;
    uint64_t ctx;
    /* Under g_mu. */
    pthread_t th;
    bool exited; /* no call runs or starts any more (a thread: about to return) */
    bool joined; /* its thread was joined (by notify_fini) */
    int refs;    /* agent + list */
    kvp_notifier *next;
};

static pthread_mutex_t g_mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t g_cv; /* an exit; CLOCK_MONOTONIC (initialised once) */
static pthread_once_t g_once = PTHREAD_ONCE_INIT;
static int g_cv_rc;
static kvp_notifier *g_list;

static void g_init(void) { g_cv_rc = kvp_cond_init(&g_cv); }

static void notifier_free(kvp_notifier *n) {
    pthread_cond_destroy(&n->cv);
    pthread_mutex_destroy(&n->mu);
    free(n);
}

/* g_mu held. Drops one reference; frees at zero (the thread is joined by then). */
static void put_locked(kvp_notifier *n) {
    if (--n->refs == 0) notifier_free(n);
}

/* g_mu held. Joins the exited threads (of fn, or all when fn is NULL) and unlinks them:
 * each is past its last call, so the join returns as soon as it has returned. */
static void reap_locked(kvp_event_fn fn) {
    for (kvp_notifier **pp = &g_list; *pp;) {
        kvp_notifier *n = *pp;
        if (n->exited && (!fn || n->fn == fn)) {
            *pp = n->next;
            int rc = n->direct || n->joined ? 0 : pthread_join(n->th, NULL);
            if (rc != 0) fprintf(stderr, "kvport: joining a notifier failed: %s\n", strerror(rc));
            put_locked(n);
        } else {
            pp = &n->next;
        }
    }
}

static void *notifier_main(void *arg) {
    kvp_notifier *n = arg;
    pthread_mutex_lock(&n->mu);
    for (;;) {
        while (!n->pending && !n->stop) pthread_cond_wait(&n->cv, &n->mu);
        if (n->stop) break;
        n->pending = false; /* what comes during the call makes the next one */
        n->calls++;
        n->call_ns = kvp_now_ns();
        pthread_mutex_unlock(&n->mu);
        n->fn(n->ctx);
        pthread_mutex_lock(&n->mu);
    }
    pthread_mutex_unlock(&n->mu);
    pthread_mutex_lock(&g_mu);
    n->exited = true;
    pthread_cond_broadcast(&g_cv);
    pthread_mutex_unlock(&g_mu);
    return NULL;
}

int32_t kvp_notifier_start(kvp_event_fn fn, uint64_t ctx, uint32_t flags,
                           const char *agent_name, kvp_notifier **out) {
    *out = NULL;
    int rc = pthread_once(&g_once, g_init);
    if (rc == 0) rc = g_cv_rc;
    if (rc != 0)
        return kvp_err(KVP_ERR_BACKEND, "kvp_event_notify: condition variable: %s", strerror(rc));
    kvp_notifier *n = calloc(1, sizeof *n);
    if (!n) return kvp_err(KVP_ERR_BACKEND, "kvp_event_notify: out of memory");
    rc = pthread_mutex_init(&n->mu, NULL);
    if (rc != 0) {
        free(n);
        return kvp_err(KVP_ERR_BACKEND, "kvp_event_notify: mutex: %s", strerror(rc));
    }
    rc = kvp_cond_init(&n->cv); /* CLOCK_MONOTONIC: quiesce waits on it with a deadline */
    if (rc != 0) {
        pthread_mutex_destroy(&n->mu);
        free(n);
        return kvp_err(KVP_ERR_BACKEND, "kvp_event_notify: condition variable: %s",
                       strerror(rc));
    }
    n->fn = fn;
    n->ctx = ctx;
    n->refs = 2;
    n->direct = (flags & KVP_EVENT_DIRECT) != 0;
    if (n->direct) {
        pthread_mutex_lock(&g_mu);
        reap_locked(NULL);
        n->next = g_list;
        g_list = n;
        pthread_mutex_unlock(&g_mu);
        *out = n;
        return KVP_SUCCESS;
    }
    pthread_mutex_lock(&g_mu);
    reap_locked(NULL);
    rc = kvp_thread_start(&n->th, notifier_main, n);
    if (rc == 0) {
        n->next = g_list;
        g_list = n;
    }
    pthread_mutex_unlock(&g_mu);
    if (rc != 0) {
        notifier_free(n);
        return kvp_err(KVP_ERR_BACKEND, "kvp_event_notify: cannot start the notifier of agent "
                       "%s: %s", agent_name, strerror(rc));
    }
    *out = n;
    return KVP_SUCCESS;
}

bool kvp_notifier_direct(const kvp_notifier *n) { return n->direct; }

static void call_direct(kvp_notifier *n) {
    pthread_mutex_lock(&n->mu);
    if (n->stop || n->queued) { /* queued: the runtime has one call to run already */
        pthread_mutex_unlock(&n->mu);
        return;
    }
    n->queued = true;
    n->running++;
    n->calls++;
    n->call_ns = kvp_now_ns();
    pthread_mutex_unlock(&n->mu);
    n->fn(n->ctx);
    pthread_mutex_lock(&n->mu);
    if (--n->running == 0) pthread_cond_broadcast(&n->cv); /* a quiesce may wait */
    pthread_mutex_unlock(&n->mu);
}

void kvp_notifier_signal(kvp_notifier *n) {
    if (n->direct) {
        call_direct(n);
        return;
    }
    pthread_mutex_lock(&n->mu);
    if (!n->pending) {
        n->pending = true;
        pthread_cond_signal(&n->cv);
    }
    pthread_mutex_unlock(&n->mu);
}

static void stop_one(kvp_notifier *n) {
    pthread_mutex_lock(&n->mu);
    n->stop = true;
    pthread_cond_signal(&n->cv);
    pthread_mutex_unlock(&n->mu);
}

void kvp_notifier_stop(kvp_notifier *n) {
    stop_one(n);
    pthread_mutex_lock(&g_mu);
    if (n->direct) {
        pthread_mutex_lock(&n->mu);
        n->exited = n->running == 0; /* else the quiesce of its fn waits for the call */
        pthread_mutex_unlock(&n->mu);
    }
    reap_locked(NULL);
    put_locked(n);
    pthread_mutex_unlock(&g_mu);
}

void kvp_notifier_ack(kvp_notifier *n) {
    pthread_mutex_lock(&n->mu);
    n->queued = false;
    pthread_mutex_unlock(&n->mu);
}

uint64_t kvp_notifier_calls(kvp_notifier *n) {
    pthread_mutex_lock(&n->mu);
    uint64_t c = n->calls;
    pthread_mutex_unlock(&n->mu);
    return c;
}

uint64_t kvp_notifier_last_call_ns(kvp_notifier *n) {
    pthread_mutex_lock(&n->mu);
    uint64_t t = n->call_ns;
    pthread_mutex_unlock(&n->mu);
    return t;
}

/* g_mu held: whether a notifier of fn is still running. */
static bool any_running_locked(kvp_event_fn fn) {
    for (kvp_notifier *n = g_list; n; n = n->next)
        if (n->fn == fn && !n->exited) return true;
    return false;
}

/* The library is being unloaded (dlclose; a runtime unloads it at exit without asking us,
 * Deno under `deno test` for one) or the process exits: a notifier thread still parked
 * in this code would run into unmapped memory when woken (seen: a SIGSEGV at exit under
 * deno test, an agent left open). Stop them all and join those that leave within a
 * bound; one blocked in a runtime callback that will never run is left behind. */
__attribute__((destructor)) static void notify_fini(void) {
    if (pthread_once(&g_once, g_init) != 0 || g_cv_rc != 0) return;
    struct timespec dl = kvp_deadline_ms(200);
    pthread_mutex_lock(&g_mu);
    for (kvp_notifier *n = g_list; n; n = n->next) stop_one(n);
    for (;;) {
        bool running = false;
        for (kvp_notifier *n = g_list; n; n = n->next)
            if (!n->direct && !n->exited) running = true;
        if (!running || pthread_cond_timedwait(&g_cv, &g_mu, &dl) == ETIMEDOUT) break;
    }
    /* Join the exited ones; the list (and the rest) is left as it is: the agents that
     * hold them may still signal, and the process is ending or the code going away. */
    for (kvp_notifier *n = g_list; n; n = n->next) {
        if (!n->direct && n->exited && !n->joined) {
            (void)pthread_join(n->th, NULL);
            n->joined = true;
        }
    }
    pthread_mutex_unlock(&g_mu);
}

KVP_API int32_t kvp_event_quiesce(kvp_event_fn fn, int64_t timeout_ms) {
    kvp_err_clear();
    if (!fn) return kvp_err(KVP_ERR_INVALID_PARAM, "kvp_event_quiesce: fn is NULL");
    int rc = pthread_once(&g_once, g_init);
    if (rc == 0) rc = g_cv_rc;
    if (rc != 0)
        return kvp_err(KVP_ERR_BACKEND, "kvp_event_quiesce: condition variable: %s", strerror(rc));
    struct timespec dl = kvp_deadline_ms(timeout_ms);
    pthread_mutex_lock(&g_mu);
    for (kvp_notifier *n = g_list; n; n = n->next)
        if (n->fn == fn) stop_one(n); /* lock order: g_mu -> n->mu (n->mu is a leaf) */
    /* Direct notifiers: done once the calls in progress returned (none starts now). */
    bool late = false;
    for (kvp_notifier *n = g_list; n; n = n->next) {
        if (n->fn != fn || !n->direct || n->exited) continue;
        pthread_mutex_lock(&n->mu);
        while (n->running > 0 && !late)
            late = pthread_cond_timedwait(&n->cv, &n->mu, &dl) == ETIMEDOUT;
        n->exited = n->running == 0;
        pthread_mutex_unlock(&n->mu);
    }
    int32_t st = KVP_SUCCESS;
    while (any_running_locked(fn)) {
        rc = pthread_cond_timedwait(&g_cv, &g_mu, &dl);
        if (rc == ETIMEDOUT && any_running_locked(fn)) {
            st = kvp_err(KVP_IN_PROG, "kvp_event_quiesce: a notifier is still inside its "
                         "callback after %lld ms", (long long)timeout_ms);
            break;
        }
    }
    reap_locked(fn);
    pthread_mutex_unlock(&g_mu);
    return st;
}
