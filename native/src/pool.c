/*
 * pool.c - the copy workers. A queue of requests; each worker claims the next job of
 * the request at the head (so two workers split one big request), runs it without any
 * lock, and the worker that completes the last job finishes the request.
 */
#include <stdio.h>

#include "builtin.h"
#include "errors.h"

static void job_done(bi_pool *p, bi_req *r, uint64_t post, int32_t st, const char *msg) {
    pthread_mutex_lock(&p->mu);
    if (st != KVP_SUCCESS && r->job_err == KVP_SUCCESS) {
        r->job_err = st;
        snprintf(r->job_msg, sizeof r->job_msg, "%s", msg);
    }
    r->jobs_done++;
    bool last = r->jobs_done == r->nj;
    int32_t err = r->job_err;
    char emsg[sizeof r->job_msg];
    if (last && err != KVP_SUCCESS) snprintf(emsg, sizeof emsg, "%s", r->job_msg);
    pthread_mutex_unlock(&p->mu);
    if (last) {
        if (err != KVP_SUCCESS) bi_req_finish(r, post, err, emsg);
        else bi_req_complete(r, post);
    }
}

static void leave(bi_pool *p, bi_req *r) {
    pthread_mutex_lock(&p->mu);
    r->running--;
    if (r->running == 0) pthread_cond_broadcast(&p->cv_idle);
    pthread_mutex_unlock(&p->mu);
}

static void unqueue(bi_pool *p, bi_req *r);

/* p->mu held on entry and on return (dropped meanwhile). Claims r's next job (r is
 * queued and has one left: taken out of the queue with its last one), runs it unless an
 * earlier job failed (fail fast), and counts it done. Counted in r->running throughout,
 * so a cancel waits for the job. */
static void run_next_job_locked(bi_pool *p, bi_req *r, char *msg, size_t cap) {
    uint32_t j = r->next_job++;
    if (r->next_job >= r->nj) unqueue(p, r);
    r->running++;
    uint64_t post = r->pool_post;
    bool skip = r->job_err != KVP_SUCCESS;
    pthread_mutex_unlock(&p->mu);
    int32_t st = KVP_SUCCESS;
    msg[0] = '\0';
    if (!skip) st = bi_job_exec(r, &r->jobs[j], msg, cap);
    job_done(p, r, post, st, msg);
    leave(p, r);
    pthread_mutex_lock(&p->mu);
}

static void *worker(void *arg) {
    bi_pool *p = arg;
    char msg[400];
    pthread_mutex_lock(&p->mu);
    for (;;) {
        while (!p->stop && !p->head) pthread_cond_wait(&p->cv_work, &p->mu);
        if (p->stop) break;
        run_next_job_locked(p, p->head, msg, sizeof msg);
    }
    pthread_mutex_unlock(&p->mu);
    return NULL;
}

int32_t bi_pool_start(bi_pool *p, bi_agent *a, int n) {
    memset(p, 0, sizeof *p);
    p->a = a;
    if (pthread_mutex_init(&p->mu, NULL) != 0)
        return kvp_err(KVP_ERR_BACKEND, "pthread_mutex_init failed");
    if (pthread_cond_init(&p->cv_work, NULL) != 0) {
        pthread_mutex_destroy(&p->mu);
        return kvp_err(KVP_ERR_BACKEND, "pthread_cond_init failed");
    }
    if (pthread_cond_init(&p->cv_idle, NULL) != 0) {
        pthread_cond_destroy(&p->cv_work);
        pthread_mutex_destroy(&p->mu);
        return kvp_err(KVP_ERR_BACKEND, "pthread_cond_init failed");
    }
    p->th = calloc((size_t)n, sizeof *p->th);
    if (!p->th) {
        bi_pool_stop(p);
        return kvp_err(KVP_ERR_BACKEND, "out of memory");
    }
    for (int i = 0; i < n; i++) {
        int rc = pthread_create(&p->th[i], NULL, worker, p);
        if (rc != 0) {
            bi_pool_stop(p);
            return kvp_err(KVP_ERR_BACKEND, "cannot start copy worker %d: %s", i, strerror(rc));
        }
        p->nthreads++;
    }
    return KVP_SUCCESS;
}

void bi_pool_stop(bi_pool *p) {
    pthread_mutex_lock(&p->mu);
    p->stop = true;
    pthread_cond_broadcast(&p->cv_work);
    pthread_mutex_unlock(&p->mu);
    for (int i = 0; i < p->nthreads; i++) pthread_join(p->th[i], NULL);
    free(p->th);
    p->th = NULL;
    p->nthreads = 0;
    pthread_cond_destroy(&p->cv_idle);
    pthread_cond_destroy(&p->cv_work);
    pthread_mutex_destroy(&p->mu);
}

static void reset(bi_req *r) {
    r->next_job = 0;
    r->jobs_done = 0;
    r->job_err = KVP_SUCCESS;
    r->job_msg[0] = '\0';
    r->cancel = false;
    r->pool_post = r->post_id;
}

/* Appends r to the queue and wakes workers. p->mu held. */
static void enqueue(bi_pool *p, bi_req *r) {
    r->qnext = NULL;
    if (p->tail) p->tail->qnext = r;
    else p->head = r;
    p->tail = r;
    r->queued = true;
    if (r->nj > 1) pthread_cond_broadcast(&p->cv_work);
    else pthread_cond_signal(&p->cv_work);
}

bool bi_pool_try_cached(bi_pool *p, bi_req *r, uint64_t post_id) {
    if (bi_file_read_cached(r)) {
        bi_req_complete(r, post_id);
        leave(p, r);
        return true;
    }
    /* Not all in the page cache (or an error the workers will report): the whole request
     * goes to the workers (what was read is read again). The claim ends under the same
     * lock, so a cancel that came meanwhile (it waits for the claim) is not undone. */
    pthread_mutex_lock(&p->mu);
    if (!r->cancel && !p->stop) enqueue(p, r);
    r->running--;
    if (r->running == 0) pthread_cond_broadcast(&p->cv_idle);
    pthread_mutex_unlock(&p->mu);
    return false;
}

void bi_pool_submit_launched(bi_pool *p, bi_req *r, void *ev) {
    pthread_mutex_lock(&p->mu);
    r->cu_launched = ev;
    r->cu_launched_at = kvp_now_ns();
    /* The claim ends under the same lock (as in bi_pool_try_cached): a cancel that came
     * meanwhile waited for it, and takes the event after. */
    if (!r->cancel && !p->stop) enqueue(p, r);
    r->running--;
    if (r->running == 0) pthread_cond_broadcast(&p->cv_idle);
    pthread_mutex_unlock(&p->mu);
}

void *bi_pool_take_launched(bi_pool *p, bi_req *r, uint64_t *at) {
    pthread_mutex_lock(&p->mu);
    void *ev = r->cu_launched;
    r->cu_launched = NULL;
    if (at) *at = r->cu_launched_at;
    pthread_mutex_unlock(&p->mu);
    return ev;
}

void bi_pool_submit(bi_pool *p, bi_req *r) {
    pthread_mutex_lock(&p->mu);
    reset(r);
    r->qnext = NULL;
    if (p->tail) p->tail->qnext = r;
    else p->head = r;
    p->tail = r;
    r->queued = true;
    if (r->nj > 1) pthread_cond_broadcast(&p->cv_work);
    else pthread_cond_signal(&p->cv_work);
    pthread_mutex_unlock(&p->mu);
}

/* Takes r out of the queue (cancelled, or its last job was claimed; the head, for a
 * worker, found at once). p->mu held. */
static void unqueue(bi_pool *p, bi_req *r) {
    bi_req *prev = NULL;
    for (bi_req *q = p->head; q; prev = q, q = q->qnext) {
        if (q != r) continue;
        if (prev) prev->qnext = q->qnext;
        else p->head = q->qnext;
        if (p->tail == q) p->tail = prev;
        break;
    }
    r->qnext = NULL;
    r->queued = false;
}

bool bi_pool_cancel(bi_pool *p, bi_req *r) {
    pthread_mutex_lock(&p->mu);
    if (r->queued) unqueue(p, r);
    r->cancel = true;
    while (r->running > 0) pthread_cond_wait(&p->cv_idle, &p->mu);
    bool finished = r->nj > 0 && r->jobs_done == r->nj;
    pthread_mutex_unlock(&p->mu);
    return finished;
}

void bi_pool_claim_inline(bi_pool *p, bi_req *r) {
    pthread_mutex_lock(&p->mu);
    reset(r);
    r->running++;
    pthread_mutex_unlock(&p->mu);
}

void bi_pool_run_inline(bi_pool *p, bi_req *r, uint64_t post_id) {
    char msg[400] = "";
    int32_t st = KVP_SUCCESS;
    for (uint32_t j = 0; j < r->nj && st == KVP_SUCCESS; j++)
        st = bi_job_exec(r, &r->jobs[j], msg, sizeof msg);
    if (st != KVP_SUCCESS) bi_req_finish(r, post_id, st, msg);
    else bi_req_complete(r, post_id);
    leave(p, r);
}

void bi_pool_leave(bi_pool *p, bi_req *r) { leave(p, r); }

void bi_pool_help(bi_pool *p, bi_req *r) {
    char msg[400];
    pthread_mutex_lock(&p->mu);
    /* The same claim as a worker's, only of r's jobs. */
    while (r->queued && !p->stop && r->next_job < r->nj) run_next_job_locked(p, r, msg, sizeof msg);
    pthread_mutex_unlock(&p->mu);
}
