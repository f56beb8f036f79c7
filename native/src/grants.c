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
    bool live;           /* in the table (grant_rw): live <=> in a->grants */
    struct bi_grant *next;
    ap_grant e1;         /* e and reg of a one-range grant (kvp_grant_each makes many) */
    bi_reg *reg1;
} bi_grant_obj;

static void grant_release(kvp_obj *o) {
    bi_grant_obj *g = (bi_grant_obj *)o;
    for (uint64_t i = 0; i < g->n; i++)
        if (g->reg[i]) kvp_obj_put(&g->reg[i]->obj);
    if (g->reg != &g->reg1) free(g->reg);
    if (g->e != &g->e1) free(g->e);
    free(g);
}

/* A grant of n ranges, not yet filled (refs = 1, the caller's), or NULL (no memory). */
static bi_grant_obj *grant_new(bi_agent *a, uint64_t n) {
    bi_grant_obj *g = calloc(1, sizeof *g);
    if (!g) return NULL;
    if (n == 1) {
        g->e = &g->e1;
        g->reg = &g->reg1;
    } else {
        g->e = calloc((size_t)n, sizeof *g->e);
        g->reg = g->e ? calloc((size_t)n, sizeof *g->reg) : NULL;
        if (!g->reg) {
            free(g->e);
            free(g);
            return NULL;
        }
    }
    kvp_obj_init(&g->obj, KVP_H_GRANT, grant_release);
    g->a = a;
    g->n = n;
    return g;
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

/* After grants left the list: the new table, or (no memory for one) an empty table,
 * which refuses everything and so is safe. grant_rw held (write). */
static void rebuild_or_empty_locked(bi_agent *a) {
    if (rebuild_locked(a) == KVP_SUCCESS) return;
    free(a->gtab);
    a->gtab = NULL;
    a->gn = 0;
    atomic_fetch_add(&a->grant_epoch, 1);
    ap_grants_publish(&a->page, NULL, 0);
    kvp_err_clear();
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
    if (any) rebuild_or_empty_locked(a);
    pthread_rwlock_unlock(&a->grant_rw);
}

/* Granted ranges held now (live, unexpired, memory still registered). grant_rw held. */
static uint64_t held_locked(bi_agent *a) {
    uint64_t held = 0, now = kvp_now_ns();
    for (bi_grant_obj *q = a->grants; q; q = q->next)
        for (uint64_t i = 0; i < q->n; i++)
            if (q->reg[i] && (q->e[i].expires_ns == 0 || q->e[i].expires_ns > now)) held++;
    return held;
}

/* kvp_grant (each = false: one grant gs[0] of count ranges) and kvp_grant_each (each:
 * count grants gs[i] of one range each). All or nothing: on any failure no grant of the
 * call exists, none was ever in the table, and no handle is written. One table rebuild
 * (and one publish in the agent page) for the whole call. Locks as everywhere: a->mu ->
 * reg_rw (read) while the ranges are checked, released; then grant_rw (write). */
static int32_t grant_make(bi_agent *a, const char *fn, const char *remote, int32_t mt,
                          const uint64_t *addrs, const uint64_t *lens, const uint64_t *devs,
                          uint64_t count, uint32_t access, int64_t expires_ms, bool each,
                          uint64_t *out) {
    if (!a->page_grants)
        return kvp_err(KVP_ERR_INVALID_PARAM,
                       "%s: agent %s enforces no page grants; create it with the param "
                       "page_grants=on",
                       fn, a->base.name);
    if (mt != KVP_DRAM && mt != KVP_VRAM)
        return kvp_err(KVP_ERR_INVALID_PARAM,
                       "%s: memory type %d cannot be granted (DRAM=0 or VRAM=1: only "
                       "they are reachable by peers)", fn, mt);
    /* Counted before anything is made: a call that can never fit costs no allocation. */
    if (count > a->max_grants)
        return kvp_err(KVP_ERR_NOT_ALLOWED,
                       "%s: %llu ranges exceed max_grants=%u of agent %s (grant fewer, or "
                       "raise max_grants)",
                       fn, (unsigned long long)count, a->max_grants, a->base.name);
    uint64_t ng = each ? count : 1;
    bi_grant_obj *one = NULL;
    bi_grant_obj **gs = each ? calloc((size_t)ng, sizeof *gs) : &one;
    int32_t st = KVP_SUCCESS;
    if (!gs) return kvp_err(KVP_ERR_BACKEND, "%s: out of memory granting %llu ranges", fn,
                            (unsigned long long)count);
    for (uint64_t k = 0; k < ng; k++)
        if (!(gs[k] = grant_new(a, each ? 1 : count))) {
            st = kvp_err(KVP_ERR_BACKEND, "%s: out of memory granting %llu ranges", fn,
                         (unsigned long long)count);
            break;
        }
    uint64_t expires = expires_ms > 0 ? kvp_now_ns() + (uint64_t)expires_ms * 1000000ull : 0;
    if (st == KVP_SUCCESS) {
        pthread_mutex_lock(&a->mu);
        bi_remote *rm = bi_remote_find(a, remote);
        if (!rm)
            st = kvp_err(KVP_ERR_NOT_FOUND,
                         "%s: agent %s is not loaded in %s (grants are bound to a loaded "
                         "peer's token)",
                         fn, remote, a->base.name);
        pthread_rwlock_rdlock(&a->reg_rw);
        for (uint64_t i = 0; st == KVP_SUCCESS && i < count; i++) {
            uint64_t dev = devs ? devs[i] : 0;
            const kvp_md_region *r = bi_index_find(&a->lidx, mt, dev, addrs[i], lens[i]);
            if (lens[i] == 0 || !r || ((bi_reg *)r->owner)->dying) {
                st = kvp_err(KVP_ERR_INVALID_PARAM,
                             "%s: range %llu (0x%llx, %llu bytes, dev %llu) does not lie "
                             "inside memory registered by agent %s",
                             fn, (unsigned long long)i, (unsigned long long)addrs[i],
                             (unsigned long long)lens[i], (unsigned long long)dev,
                             a->base.name);
                break;
            }
            bi_grant_obj *g = gs[each ? i : 0];
            uint64_t j = each ? 0 : i;
            memcpy(g->e[j].token, rm->token, 16);
            g->e[j].mem_type = mt;
            g->e[j].access = access;
            g->e[j].dev = devkey(mt, dev);
            g->e[j].addr = addrs[i];
            g->e[j].len = lens[i];
            g->e[j].expires_ns = expires;
            g->reg[j] = r->owner;
            kvp_obj_ref(&g->reg[j]->obj);
        }
        pthread_rwlock_unlock(&a->reg_rw);
        pthread_mutex_unlock(&a->mu);
    }
    uint64_t inserted = 0; /* gs[0..inserted) have a handle */
    for (; st == KVP_SUCCESS && inserted < ng; inserted++)
        if ((st = kvp_handle_insert(&gs[inserted]->obj, &gs[inserted]->handle)) != KVP_SUCCESS)
            break;
    if (st == KVP_SUCCESS) {
        pthread_rwlock_wrlock(&a->grant_rw);
        uint64_t held = held_locked(a);
        if (held + count > a->max_grants) {
            st = kvp_err(KVP_ERR_NOT_ALLOWED,
                         "%s: agent %s holds %llu granted ranges; %llu more exceed "
                         "max_grants=%u (revoke grants, or raise max_grants)",
                         fn, a->base.name, (unsigned long long)held, (unsigned long long)count,
                         a->max_grants);
        } else {
            bi_grant_obj *old = a->grants;
            for (uint64_t k = 0; k < ng; k++) {
                gs[k]->live = true;
                gs[k]->next = a->grants;
                a->grants = gs[k];
                kvp_obj_ref(&gs[k]->obj); /* the agent list's */
            }
            st = rebuild_locked(a);
            if (st != KVP_SUCCESS) { /* the old table stays published: nothing changed */
                a->grants = old;
                for (uint64_t k = 0; k < ng; k++) {
                    gs[k]->live = false;
                    gs[k]->next = NULL;
                    kvp_obj_put(&gs[k]->obj);
                }
            }
        }
        pthread_rwlock_unlock(&a->grant_rw);
    }
    for (uint64_t k = 0; k < ng && gs[k]; k++) {
        if (st == KVP_SUCCESS) out[k] = gs[k]->handle;
        else if (k < inserted) kvp_handle_drop(gs[k]->handle, &gs[k]->obj);
        kvp_obj_put(&gs[k]->obj); /* ours: the handle and the list keep theirs */
    }
    if (each) free(gs);
    return st;
}

int32_t bi_grant(kvp_agent *ka, const char *remote, int32_t mt, const uint64_t *addrs,
                 const uint64_t *lens, const uint64_t *devs, uint64_t count, uint32_t access,
                 int64_t expires_ms, uint64_t *out) {
    return grant_make(bi_of(ka), "kvp_grant", remote, mt, addrs, lens, devs, count, access,
                      expires_ms, false, out);
}

int32_t bi_grant_each(kvp_agent *ka, const char *remote, int32_t mt, const uint64_t *addrs,
                      const uint64_t *lens, const uint64_t *devs, uint64_t count,
                      uint32_t access, int64_t expires_ms, uint64_t *out) {
    return grant_make(bi_of(ka), "kvp_grant_each", remote, mt, addrs, lens, devs, count, access,
                      expires_ms, true, out);
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
    if (found) rebuild_or_empty_locked(a);
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

/* The first handle of a kvp_revoke_each call that could not be revoked: its index,
 * status and why. */
typedef struct {
    uint64_t i;
    int32_t st;
    char why[KVP_MSG_MAX];
} bad_handle;

static void note_bad(bad_handle *b, uint64_t i, int32_t st, const char *why) {
    if (i >= b->i) return; /* an earlier index is already named */
    b->i = i;
    b->st = st;
    snprintf(b->why, sizeof b->why, "%s", why);
}

/* kvp_revoke_each: every valid handle is revoked, whatever the others are, with one
 * table rebuild; the status is that of the first handle (lowest index) that was not:
 * KVP_ERR_NOT_FOUND (unknown, stale, already revoked, or given twice: the second),
 * KVP_ERR_INVALID_PARAM (not a grant handle, or another agent's). */
int32_t bi_revoke_each(kvp_agent *ka, const uint64_t *hs, uint64_t count) {
    bi_agent *a = bi_of(ka);
    bi_grant_obj **gs = calloc((size_t)count, sizeof *gs);
    bool *found = gs ? calloc((size_t)count, sizeof *found) : NULL;
    if (!found) {
        /* No memory for the batch: one by one, so that no valid grant stays alive. */
        free(gs);
        bad_handle first = {.i = UINT64_MAX};
        for (uint64_t i = 0; i < count; i++)
            if (bi_revoke(ka, hs[i]) != KVP_SUCCESS)
                note_bad(&first, i, kvp_err_status(), kvp_err_text());
        kvp_err_clear();
        if (first.i == UINT64_MAX) return KVP_SUCCESS;
        return kvp_err(first.st, "kvp_revoke_each: handles[%llu] (0x%llx): %s",
                       (unsigned long long)first.i, (unsigned long long)hs[first.i], first.why);
    }
    bad_handle bad = {.i = UINT64_MAX};
    char why[KVP_MSG_MAX];
    for (uint64_t i = 0; i < count; i++) {
        gs[i] = (bi_grant_obj *)kvp_handle_get(hs[i], KVP_H_GRANT);
        if (!gs[i]) {
            note_bad(&bad, i, kvp_err_status(), kvp_err_text());
        } else if (gs[i]->a != a) {
            snprintf(why, sizeof why, "grant 0x%llx belongs to another agent, not %s",
                     (unsigned long long)hs[i], a->base.name);
            note_bad(&bad, i, KVP_ERR_INVALID_PARAM, why);
            kvp_obj_put(&gs[i]->obj);
            gs[i] = NULL;
        }
    }
    /* Write side, as kvp_revoke: returns once no byte moves in a revoked range. */
    pthread_rwlock_wrlock(&a->grant_rw);
    uint64_t nfound = 0;
    for (uint64_t i = 0; i < count; i++) {
        if (!gs[i]) continue;
        if (gs[i]->live) {
            gs[i]->live = false; /* unlinked below */
            found[i] = true;
            nfound++;
        } else {
            snprintf(why, sizeof why, "grant 0x%llx was already revoked",
                     (unsigned long long)hs[i]);
            note_bad(&bad, i, KVP_ERR_NOT_FOUND, why);
        }
    }
    if (nfound) {
        /* One pass: the grants marked above are the only ones in the list not live. */
        for (bi_grant_obj **pp = &a->grants; *pp;)
            if (!(*pp)->live) *pp = (*pp)->next;
            else pp = &(*pp)->next;
        rebuild_or_empty_locked(a);
    }
    pthread_rwlock_unlock(&a->grant_rw);
    for (uint64_t i = 0; i < count; i++) {
        if (!gs[i]) continue;
        if (found[i]) {
            kvp_handle_drop(hs[i], &gs[i]->obj);
            kvp_obj_put(&gs[i]->obj); /* the list's */
        }
        kvp_obj_put(&gs[i]->obj);
    }
    free(found);
    free(gs);
    if (bad.i == UINT64_MAX) {
        kvp_err_clear();
        return KVP_SUCCESS;
    }
    return kvp_err(bad.st,
                   "kvp_revoke_each: handles[%llu] (0x%llx): %s; the other %llu valid "
                   "grant(s) of the %llu given were revoked",
                   (unsigned long long)bad.i, (unsigned long long)hs[bad.i], bad.why,
                   (unsigned long long)nfound, (unsigned long long)count);
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
