/*
 * grants.c - page grants of the builtin engine (kvp_grant / kvp_revoke): with the agent
 * param page_grants=on, a remote agent may WRITE or READ only the ranges granted to it,
 * until they are revoked or expire. Checked when each piece is served:
 *
 *   - TCP target: every WRITE frame and READ_REQ piece when it arrives, and again
 *     around every recv/send of its bytes once a grant was revoked (grant epoch), with
 *     a->grant_rw held for reading there, so kvp_revoke (write side) returns only when
 *     no byte can land in or leave a revoked range;
 *   - same process: the copy runs under the target's grant_rw, checked per segment;
 *   - same host: the target publishes its grant table in its agent page (sorted, double
 *     buffered under a sequence number); the initiator checks every piece against it
 *     when it posts (peer_page.c). A revoke after that post lets that post finish: the
 *     window is one post, which the leases above this layer (quarantine) cover.
 *
 * Grants are keyed by the peer's token (the HELLO of a TCP connection carries it; a
 * same-host peer reads its own entries), never by a name a peer could claim. A grant
 * lies inside registered memory and dies with the registration.
 *
 * Table: entries sorted by (token, memory type, device, address), with the largest end
 * of the group so far (overlapping grants are allowed); a range is allowed when the
 * union of live entries with the access covers it (pages granted one by one and merged
 * into one piece by the initiator are still covered).
 */
#include <stdio.h>

#include "builtin.h"
#include "errors.h"

static uint64_t devkey(int32_t mt, uint64_t dev) { return mt == KVP_DRAM ? 0 : dev; }

static int cmp_key(const uint8_t *t1, int32_t m1, uint64_t d1, uint64_t a1, const uint8_t *t2,
                   int32_t m2, uint64_t d2, uint64_t a2) {
    int c = memcmp(t1, t2, 16);
    if (c) return c;
    if (m1 != m2) return m1 < m2 ? -1 : 1;
    if (d1 != d2) return d1 < d2 ? -1 : 1;
    if (a1 != a2) return a1 < a2 ? -1 : 1;
    return 0;
}

static int cmp_entry(const void *x, const void *y) {
    const ap_grant *a = x, *b = y;
    return cmp_key(a->token, a->mem_type, devkey(a->mem_type, a->dev), a->addr, b->token,
                   b->mem_type, devkey(b->mem_type, b->dev), b->addr);
}

static bool same_group(const ap_grant *a, const ap_grant *b) {
    return memcmp(a->token, b->token, 16) == 0 && a->mem_type == b->mem_type &&
           devkey(a->mem_type, a->dev) == devkey(b->mem_type, b->dev);
}

bool bi_grants_cover(const ap_grant *tab, uint64_t n, const uint8_t token[16], int32_t mt,
                     uint64_t dev, uint64_t addr, uint64_t len, uint32_t access,
                     uint64_t now_ns) {
    uint64_t dk = devkey(mt, dev), cur = addr, end = addr + len;
    if (end < addr) return false;
    while (cur < end) {
        /* Last entry with key <= (token, mt, dk, cur). */
        uint64_t lo = 0, hi = n;
        while (lo < hi) {
            uint64_t mid = lo + (hi - lo) / 2;
            const ap_grant *e = &tab[mid];
            if (cmp_key(e->token, e->mem_type, devkey(e->mem_type, e->dev), e->addr, token, mt,
                        dk, cur) <= 0)
                lo = mid + 1;
            else
                hi = mid;
        }
        uint64_t reach = cur;
        for (uint64_t i = lo; i-- > 0;) {
            const ap_grant *e = &tab[i];
            if (memcmp(e->token, token, 16) != 0 || e->mem_type != mt ||
                devkey(e->mem_type, e->dev) != dk || e->maxend <= cur)
                break;
            uint64_t eend = e->addr + e->len;
            if (e->addr <= cur && eend > reach && (e->access & access) == access &&
                (e->expires_ns == 0 || e->expires_ns > now_ns))
                reach = eend;
        }
        if (reach == cur) return false;
        cur = reach;
    }
    return true;
}

/* ------------------------------------------------------------------ owner ---- */

typedef struct bi_grant {
    kvp_obj obj;
    bi_agent *a;
    uint64_t handle;
    uint64_t n;
    ap_grant *e;         /* its ranges (maxend unused here) */
    bi_reg **reg;        /* the registration each lies in (ref) */
    bool live;           /* in the table (grant_rw) */
    struct bi_grant *next;
} bi_grant_obj;

static void grant_release(kvp_obj *o) {
    bi_grant_obj *g = (bi_grant_obj *)o;
    for (uint64_t i = 0; i < g->n; i++)
        if (g->reg[i]) kvp_obj_put(&g->reg[i]->obj);
    free(g->reg);
    free(g->e);
    free(g);
}

/* Rebuilds the sorted table from the live grants, dropping expired entries and those
 * of deregistered memory, and publishes it in the agent page. grant_rw held (write). */
static int32_t rebuild_locked(bi_agent *a) {
    uint64_t now = kvp_now_ns(), n = 0;
    for (bi_grant_obj *g = a->grants; g; g = g->next)
        for (uint64_t i = 0; i < g->n; i++)
            if (g->reg[i] && (g->e[i].expires_ns == 0 || g->e[i].expires_ns > now)) n++;
    ap_grant *t = n ? malloc((size_t)n * sizeof *t) : NULL;
    if (n && !t) return kvp_err(KVP_ERR_BACKEND, "out of memory indexing %llu grants",
                                (unsigned long long)n);
    uint64_t k = 0;
    for (bi_grant_obj *g = a->grants; g; g = g->next)
        for (uint64_t i = 0; i < g->n; i++)
            if (g->reg[i] && (g->e[i].expires_ns == 0 || g->e[i].expires_ns > now))
                t[k++] = g->e[i];
    if (n) qsort(t, (size_t)n, sizeof *t, cmp_entry);
    for (uint64_t i = 0; i < n; i++) {
        uint64_t end = t[i].addr + t[i].len;
        t[i].maxend = i > 0 && same_group(&t[i - 1], &t[i]) ? KVP_MAX(t[i - 1].maxend, end) : end;
    }
    free(a->gtab);
    a->gtab = t;
    a->gn = n;
    atomic_fetch_add(&a->grant_epoch, 1);
    ap_grants_publish(&a->page, t, n);
    return KVP_SUCCESS;
}

bool bi_grant_allows(bi_agent *a, const uint8_t token[16], int32_t mt, uint64_t dev, uint64_t addr,
                     uint64_t len, uint32_t access) {
    if (!a->page_grants) return true;
    pthread_rwlock_rdlock(&a->grant_rw);
    bool ok = bi_grants_cover(a->gtab, a->gn, token, mt, dev, addr, len, access, kvp_now_ns());
    pthread_rwlock_unlock(&a->grant_rw);
    if (!ok) atomic_fetch_add(&a->n_grants_refused, 1);
    return ok;
}

void bi_grants_drop_reg(bi_agent *a, bi_reg *r) {
    pthread_rwlock_wrlock(&a->grant_rw);
    bool any = false;
    for (bi_grant_obj *g = a->grants; g; g = g->next)
        for (uint64_t i = 0; i < g->n; i++)
            if (g->reg[i] == r) {
                kvp_obj_put(&r->obj);
                g->reg[i] = NULL; /* that range is gone with its memory */
                any = true;
            }
    if (any && rebuild_locked(a) != KVP_SUCCESS) {
        /* No memory for a new table: an empty one refuses everything, which is safe. */
        free(a->gtab);
        a->gtab = NULL;
        a->gn = 0;
        atomic_fetch_add(&a->grant_epoch, 1);
        ap_grants_publish(&a->page, NULL, 0);
        kvp_err_clear();
    }
    pthread_rwlock_unlock(&a->grant_rw);
}

int32_t bi_grant(kvp_agent *ka, const char *remote, int32_t mt, const uint64_t *addrs,
                 const uint64_t *lens, const uint64_t *devs, uint64_t count, uint32_t access,
                 int64_t expires_ms, uint64_t *out) {
    bi_agent *a = bi_of(ka);
    if (!a->page_grants)
        return kvp_err(KVP_ERR_INVALID_PARAM,
                       "kvp_grant: agent %s enforces no page grants; create it with the param "
                       "page_grants=on",
                       a->base.name);
    if (mt != KVP_DRAM && mt != KVP_VRAM)
        return kvp_err(KVP_ERR_INVALID_PARAM,
                       "kvp_grant: memory type %d cannot be granted (DRAM=0 or VRAM=1: only "
                       "they are reachable by peers)", mt);
    bi_grant_obj *g = calloc(1, sizeof *g);
    ap_grant *e = g ? calloc((size_t)count, sizeof *e) : NULL;
    bi_reg **reg = e ? calloc((size_t)count, sizeof *reg) : NULL;
    if (!g || !e || !reg) {
        free(g);
        free(e);
        return kvp_err(KVP_ERR_BACKEND, "out of memory granting %llu ranges",
                       (unsigned long long)count);
    }
    kvp_obj_init(&g->obj, KVP_H_GRANT, grant_release);
    g->a = a;
    g->n = count;
    g->e = e;
    g->reg = reg;
    uint64_t expires = expires_ms > 0 ? kvp_now_ns() + (uint64_t)expires_ms * 1000000ull : 0;
    int32_t st = KVP_SUCCESS;
    pthread_mutex_lock(&a->mu);
    bi_remote *rm = bi_remote_find(a, remote);
    if (!rm)
        st = kvp_err(KVP_ERR_NOT_FOUND,
                     "kvp_grant: agent %s is not loaded in %s (grants are bound to a loaded "
                     "peer's token)",
                     remote, a->base.name);
    pthread_rwlock_rdlock(&a->reg_rw);
    for (uint64_t i = 0; st == KVP_SUCCESS && i < count; i++) {
        uint64_t dev = devs ? devs[i] : 0;
        const kvp_md_region *r = bi_index_find(&a->lidx, mt, dev, addrs[i], lens[i]);
        if (lens[i] == 0 || !r || ((bi_reg *)r->owner)->dying) {
            st = kvp_err(KVP_ERR_INVALID_PARAM,
                         "kvp_grant: range %llu (0x%llx, %llu bytes, dev %llu) does not lie "
                         "inside memory registered by agent %s",
                         (unsigned long long)i, (unsigned long long)addrs[i],
                         (unsigned long long)lens[i], (unsigned long long)dev, a->base.name);
            break;
        }
        memcpy(e[i].token, rm->token, 16);
        e[i].mem_type = mt;
        e[i].access = access;
        e[i].dev = devkey(mt, dev);
        e[i].addr = addrs[i];
        e[i].len = lens[i];
        e[i].expires_ns = expires;
        reg[i] = r->owner;
        kvp_obj_ref(&reg[i]->obj);
    }
    pthread_rwlock_unlock(&a->reg_rw);
    pthread_mutex_unlock(&a->mu);
    if (st == KVP_SUCCESS) st = kvp_handle_insert(&g->obj, &g->handle);
    if (st == KVP_SUCCESS) {
        pthread_rwlock_wrlock(&a->grant_rw);
        uint64_t held = 0, now = kvp_now_ns();
        for (bi_grant_obj *q = a->grants; q; q = q->next)
            for (uint64_t i = 0; i < q->n; i++)
                if (q->reg[i] && (q->e[i].expires_ns == 0 || q->e[i].expires_ns > now)) held++;
        if (held + count > a->max_grants) {
            st = kvp_err(KVP_ERR_NOT_ALLOWED,
                         "kvp_grant: agent %s holds %llu granted ranges; %llu more exceed "
                         "max_grants=%u (revoke grants, or raise max_grants)",
                         a->base.name, (unsigned long long)held, (unsigned long long)count,
                         a->max_grants);
        } else {
            g->live = true;
            g->next = a->grants;
            a->grants = g;
            kvp_obj_ref(&g->obj); /* the agent list's */
            st = rebuild_locked(a);
            if (st != KVP_SUCCESS) {
                a->grants = g->next;
                g->live = false;
                kvp_obj_put(&g->obj);
            }
        }
        pthread_rwlock_unlock(&a->grant_rw);
        if (st != KVP_SUCCESS) kvp_handle_drop(g->handle, &g->obj);
    }
    if (st == KVP_SUCCESS) *out = g->handle;
    kvp_obj_put(&g->obj);
    return st;
}

int32_t bi_revoke(kvp_agent *ka, uint64_t h) {
    bi_agent *a = bi_of(ka);
    bi_grant_obj *g = (bi_grant_obj *)kvp_handle_get(h, KVP_H_GRANT);
    if (!g) return kvp_err_status();
    if (g->a != a) {
        kvp_obj_put(&g->obj);
        return kvp_err(KVP_ERR_INVALID_PARAM, "grant 0x%llx belongs to another agent, not %s",
                       (unsigned long long)h, a->base.name);
    }
    /* Write side: waits for every TCP recv/send that is touching granted memory now;
     * later ones see the new epoch and check again. */
    pthread_rwlock_wrlock(&a->grant_rw);
    bool found = false;
    for (bi_grant_obj **pp = &a->grants; *pp; pp = &(*pp)->next)
        if (*pp == g) {
            *pp = g->next;
            g->live = false;
            found = true;
            break;
        }
    int32_t st = KVP_SUCCESS;
    if (found && rebuild_locked(a) != KVP_SUCCESS) {
        free(a->gtab);
        a->gtab = NULL;
        a->gn = 0;
        atomic_fetch_add(&a->grant_epoch, 1);
        ap_grants_publish(&a->page, NULL, 0);
        kvp_err_clear();
    }
    pthread_rwlock_unlock(&a->grant_rw);
    if (found) {
        kvp_handle_drop(h, &g->obj);
        kvp_obj_put(&g->obj); /* the list's */
    }
    kvp_obj_put(&g->obj);
    if (!found)
        st = kvp_err(KVP_ERR_NOT_FOUND, "grant 0x%llx was already revoked", (unsigned long long)h);
    return st;
}

void bi_grants_free_all(bi_agent *a) {
    while (a->grants) {
        bi_grant_obj *g = a->grants;
        a->grants = g->next;
        g->live = false;
        kvp_handle_drop(g->handle, &g->obj);
        kvp_obj_put(&g->obj);
    }
    free(a->gtab);
    a->gtab = NULL;
    a->gn = 0;
}

uint64_t bi_grants_count(bi_agent *a) {
    pthread_rwlock_rdlock(&a->grant_rw);
    uint64_t n = a->gn;
    pthread_rwlock_unlock(&a->grant_rw);
    return n;
}
