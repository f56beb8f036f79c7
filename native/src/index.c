/* index.c - sorted region index for "does this descriptor lie in registered memory". */
#include "builtin.h"
#include "errors.h"

static uint64_t devkey(const kvp_md_region *r) {
    return r->mem_type == KVP_DRAM ? 0 : r->dev;
}

static int cmp_key(int32_t mt1, uint64_t d1, uint64_t a1, int32_t mt2, uint64_t d2,
                   uint64_t a2) {
    if (mt1 != mt2) return mt1 < mt2 ? -1 : 1;
    if (d1 != d2) return d1 < d2 ? -1 : 1;
    if (a1 != a2) return a1 < a2 ? -1 : 1;
    return 0;
}

static int cmp_region(const void *x, const void *y) {
    const kvp_md_region *a = *(const kvp_md_region *const *)x;
    const kvp_md_region *b = *(const kvp_md_region *const *)y;
    return cmp_key(a->mem_type, devkey(a), a->addr, b->mem_type, devkey(b), b->addr);
}

void bi_index_free(bi_index *ix) {
    free(ix->e);
    free(ix->maxend);
    ix->e = NULL;
    ix->maxend = NULL;
    ix->n = 0;
}

int32_t bi_index_build(bi_index *ix, const kvp_md_region **regs, uint64_t n) {
    bi_index nx = {0, NULL, NULL};
    if (n > 0) {
        nx.e = malloc((size_t)n * sizeof *nx.e);
        nx.maxend = malloc((size_t)n * sizeof *nx.maxend);
        if (!nx.e || !nx.maxend) {
            bi_index_free(&nx);
            return kvp_err(KVP_ERR_BACKEND, "out of memory indexing %llu regions",
                           (unsigned long long)n);
        }
        memcpy(nx.e, regs, (size_t)n * sizeof *nx.e);
        qsort(nx.e, (size_t)n, sizeof *nx.e, cmp_region);
        for (uint64_t i = 0; i < n; i++) {
            uint64_t end = nx.e[i]->addr + nx.e[i]->len;
            bool same_group = i > 0 && nx.e[i - 1]->mem_type == nx.e[i]->mem_type &&
                              devkey(nx.e[i - 1]) == devkey(nx.e[i]);
            nx.maxend[i] = same_group ? KVP_MAX(nx.maxend[i - 1], end) : end;
        }
        nx.n = n;
    }
    bi_index_free(ix);
    *ix = nx;
    return KVP_SUCCESS;
}

const kvp_md_region *bi_index_find(const bi_index *ix, int32_t mem_type, uint64_t dev,
                                   uint64_t addr, uint64_t len) {
    uint64_t dk = mem_type == KVP_DRAM ? 0 : dev;
    if (addr + len < addr) return NULL;
    /* Last entry with key <= (mem_type, dk, addr). */
    uint64_t lo = 0, hi = ix->n;
    while (lo < hi) {
        uint64_t mid = lo + (hi - lo) / 2;
        const kvp_md_region *r = ix->e[mid];
        if (cmp_key(r->mem_type, devkey(r), r->addr, mem_type, dk, addr) <= 0) lo = mid + 1;
        else hi = mid;
    }
    /* Walk back through the group while some earlier region may still reach addr+len. */
    for (uint64_t i = lo; i-- > 0;) {
        const kvp_md_region *r = ix->e[i];
        if (r->mem_type != mem_type || devkey(r) != dk) break;
        if (ix->maxend[i] < addr + len) break;
        if (kvp_range_ok(addr, len, r->addr, r->len)) return r;
    }
    return NULL;
}
