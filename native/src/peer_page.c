/*
 * peer_page.c - a same-host peer's agent page as seen from here: its live regions
 * (snapshot, rebuilt whenever the page's sequence number moved) and the pins a request
 * holds on the slots it copies into or out of (see agent_page.h for the protocol).
 *
 * Same-host paths take every address and every memfd or CUDA IPC handle from the
 * peer's page, never from the metadata blob alone: the page is written by the peer
 * itself and says what is registered now.
 */
#include <stdio.h>

#include "builtin.h"
#include "errors.h"

/* Opens the page once (rm->map_mu held). */
static int32_t page_open_locked(bi_remote *rm) {
    if (rm->page_state == 1) return KVP_SUCCESS;
    if (rm->page_state < 0)
        return kvp_err(KVP_ERR_NOT_SUPPORTED, "the agent page of %s cannot be read", rm->name);
    if (rm->page_fd < 0 || rm->page_size == 0) {
        rm->page_state = -1;
        return kvp_err(KVP_ERR_NOT_SUPPORTED, "agent %s publishes no agent page", rm->name);
    }
    int32_t st = ap_peer_open(&rm->page, rm->pid, rm->page_fd, rm->page_ino, rm->page_size,
                              rm->token, rm->name);
    rm->page_state = st == KVP_SUCCESS ? 1 : -1;
    return st;
}

static void snap_free(bi_snap *s) {
    bi_index_free(&s->idx);
    free(s->r);
    free(s->gen);
    memset(s, 0, sizeof *s);
}

/* Brings the snapshot up to date (rm->map_mu held, page open). */
static int32_t snap_refresh_locked(bi_remote *rm) {
    const ap_peer *pp = &rm->page;
    uint64_t seq = atomic_load(&((ap_header *)pp->h)->reg_seq);
    if (rm->snap.r && seq == rm->snap.seq) return KVP_SUCCESS;
    /* Sized by the slots in use (a page has room for thousands, peers use a few). */
    uint32_t cap = 16, hwm = atomic_load(&((ap_header *)pp->h)->reg_hwm);
    for (uint32_t i = 0; i < pp->reg_cap && i < hwm; i++)
        if (atomic_load(&((ap_slot *)&pp->slots[i])->gen) != 0) cap++;
    if (cap > pp->reg_cap) cap = pp->reg_cap;
    bi_snap ns = {0};
    ns.r = malloc((size_t)(cap ? cap : 1) * sizeof *ns.r);
    ns.gen = malloc((size_t)(cap ? cap : 1) * sizeof *ns.gen);
    int32_t *idx = malloc((size_t)(cap ? cap : 1) * sizeof *idx);
    const kvp_md_region **v = malloc((size_t)(cap ? cap : 1) * sizeof *v);
    int32_t st = KVP_SUCCESS;
    if (!ns.r || !ns.gen || !idx || !v) st = kvp_err(KVP_ERR_BACKEND, "out of memory");
    int64_t n = -1;
    if (st == KVP_SUCCESS) {
        n = ap_peer_snapshot(pp, ns.r, ns.gen, idx, cap, &ns.seq);
        if (n < 0)
            st = kvp_err(KVP_ERR_BACKEND, "the agent page of %s kept changing while read",
                         rm->name);
    }
    if (st == KVP_SUCCESS) {
        ns.n = (uint64_t)n;
        for (int64_t i = 0; i < n; i++) {
            ns.r[i].owner = (void *)(uintptr_t)(idx[i] + 1);
            v[i] = &ns.r[i];
        }
        st = bi_index_build(&ns.idx, v, ns.n);
    }
    free(idx);
    free(v);
    if (st != KVP_SUCCESS) {
        snap_free(&ns);
        return st;
    }
    snap_free(&rm->snap);
    rm->snap = ns;
    return KVP_SUCCESS;
}

int32_t bi_remote_live_region(bi_remote *rm, int32_t mem_type, uint64_t dev, uint64_t addr,
                              uint64_t len, kvp_md_region *out, int32_t *slot, uint64_t *gen) {
    pthread_mutex_lock(&rm->map_mu);
    int32_t st = page_open_locked(rm);
    if (st == KVP_SUCCESS) st = snap_refresh_locked(rm);
    if (st == KVP_SUCCESS) {
        const kvp_md_region *g = bi_index_find(&rm->snap.idx, mem_type, dev, addr, len);
        if (!g) {
            st = kvp_err(KVP_ERR_NOT_FOUND,
                         "agent %s has no live registration holding 0x%llx (+%llu bytes) "
                         "(deregistered since its metadata was loaded?)",
                         rm->name, (unsigned long long)addr, (unsigned long long)len);
        } else {
            *out = *g;
            *slot = (int32_t)((uintptr_t)g->owner - 1);
            *gen = rm->snap.gen[g - rm->snap.r];
        }
    }
    pthread_mutex_unlock(&rm->map_mu);
    return st;
}

int32_t bi_remote_page_secret(bi_remote *rm, uint8_t out[16]) {
    pthread_mutex_lock(&rm->map_mu);
    int32_t st = page_open_locked(rm);
    if (st == KVP_SUCCESS) memcpy(out, rm->page.h->secret, 16);
    pthread_mutex_unlock(&rm->map_mu);
    return st;
}

void bi_prove_tag(const uint8_t secret[16], const uint8_t nonce[16], const uint8_t init_tok[16],
                  const uint8_t target_tok[16], uint8_t out[16]) {
    uint8_t m[1 + 48];
    memcpy(m + 1, nonce, 16);
    memcpy(m + 17, init_tok, 16);
    memcpy(m + 33, target_tok, 16);
    m[0] = 1;
    kvp_put_u64(out, kvp_siphash24(secret, m, sizeof m));
    m[0] = 2;
    kvp_put_u64(out + 8, kvp_siphash24(secret, m, sizeof m));
}

void bi_remote_page_close(bi_remote *rm) {
    pthread_mutex_lock(&rm->map_mu);
    snap_free(&rm->snap);
    if (rm->page_state == 1) ap_peer_close(&rm->page);
    rm->page_state = 0;
    pthread_mutex_unlock(&rm->map_mu);
}

bool bi_req_pin(bi_req *r, char *msg, size_t cap) {
    if (r->npin == 0 || r->pinned) return true;
    bi_remote *rm = r->remote;
    /* The page stays mapped while the remote lives, and the remote outlives its
     * requests (closed only when it is freed). */
    for (uint32_t i = 0; i < r->npin; i++) {
        if (!ap_peer_pin(&rm->page, r->pslot[i], r->pgen[i])) {
            for (uint32_t k = 0; k < i; k++) ap_peer_unpin(&rm->page, r->pslot[k]);
            snprintf(msg, cap,
                     "agent %s deregistered memory of this request since it was made (slot %d "
                     "of its agent page); make a new request on freshly loaded metadata",
                     rm->name, r->pslot[i]);
            return false;
        }
    }
    r->pinned = true;
    return true;
}

void bi_req_unpin(bi_req *r) {
    if (!r->pinned) return;
    for (uint32_t i = 0; i < r->npin; i++) ap_peer_unpin(&r->remote->page, r->pslot[i]);
    r->pinned = false;
}
