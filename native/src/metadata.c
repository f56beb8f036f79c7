/* metadata.c - encoder and defensive decoder of the metadata blob (see metadata.h). */
#include "metadata.h"

#include <unistd.h>

#include "errors.h"
#include "hostid.h"

#define REGION_MIN_BYTES (1 + 1 + 8 + 8 + 8)

/* The process secret behind proc_tag: random, per process (regenerated when the pid
 * changes, so a forked child never shares its parent's), never written anywhere. */
static pthread_mutex_t g_key_mu = PTHREAD_MUTEX_INITIALIZER;
static uint8_t g_key[32];
static pid_t g_key_pid;

static void proc_tag(const uint8_t *p, size_t n, uint8_t out[16]) {
    uint8_t k[32];
    pthread_mutex_lock(&g_key_mu);
    if (g_key_pid != getpid()) {
        kvp_random_bytes(g_key, 16);
        kvp_random_bytes(g_key + 16, 16);
        g_key_pid = getpid();
    }
    memcpy(k, g_key, sizeof k);
    pthread_mutex_unlock(&g_key_mu);
    uint64_t a = kvp_siphash24(k, p, n), b = kvp_siphash24(k + 16, p, n);
    kvp_put_u64(out, a);
    kvp_put_u64(out + 8, b);
    memset(k, 0, sizeof k);
}

void kvp_md_encode(const kvp_md *md, kvp_buf *b) {
    size_t start = b->len;
    size_t nlen = strlen(md->name), hlen = strlen(md->host);
    kvp_buf_u32(b, KVP_MD_MAGIC);
    kvp_buf_u16(b, KVP_MD_VERSION);
    kvp_buf_u16(b, 0);
    kvp_buf_u8(b, (uint8_t)nlen);
    kvp_buf_put(b, md->name, nlen);
    kvp_buf_put(b, md->token, 16);
    kvp_buf_put(b, md->boot_id, 16);
    kvp_buf_u64(b, md->pidns);
    kvp_buf_u32(b, md->pid);
    kvp_buf_u64(b, md->starttime);
    kvp_buf_u8(b, (uint8_t)hlen);
    kvp_buf_put(b, md->host, hlen);
    kvp_buf_u16(b, md->port);
    kvp_buf_u32(b, md->caps);
    kvp_buf_u32(b, (uint32_t)md->page_fd);
    kvp_buf_u64(b, md->page_ino);
    kvp_buf_u64(b, md->page_size);
    kvp_buf_u32(b, (uint32_t)md->nregions);
    for (uint64_t i = 0; i < md->nregions; i++) {
        const kvp_md_region *r = &md->regions[i];
        kvp_buf_u8(b, (uint8_t)r->mem_type);
        kvp_buf_u8(b, (uint8_t)r->flags);
        kvp_buf_u64(b, r->addr);
        kvp_buf_u64(b, r->len);
        kvp_buf_u64(b, r->dev);
        if (r->flags & KVP_MDR_MEMFD) {
            kvp_buf_u32(b, (uint32_t)r->memfd);
            kvp_buf_u64(b, r->memfd_ino);
            kvp_buf_u64(b, r->memfd_off);
            kvp_buf_u64(b, r->memfd_size);
        }
        if (r->flags & KVP_MDR_IPC) {
            kvp_buf_put(b, r->ipc, KVP_CUDA_IPC_BYTES);
            kvp_buf_u64(b, r->ipc_off);
        }
    }
    if (!b->oom) {
        uint8_t tag[16];
        proc_tag(b->p + start, b->len - start, tag);
        kvp_buf_put(b, tag, sizeof tag);
    }
    if (!b->oom) kvp_buf_u64(b, kvp_fnv1a(KVP_FNV_OFFSET, b->p + start, b->len - start));
}

bool kvp_md_from_this_process(const uint8_t *blob, size_t n) {
    if (n < 24) return false;
    uint8_t tag[16];
    proc_tag(blob, n - 24, tag);
    /* Constant-time compare: the tag is a secret-derived value. */
    uint8_t d = 0;
    for (int i = 0; i < 16; i++) d |= (uint8_t)(tag[i] ^ blob[n - 24 + i]);
    return d == 0;
}

void kvp_md_free(kvp_md *md) {
    free(md->regions);
    md->regions = NULL;
    md->nregions = 0;
}

static bool printable(const uint8_t *s, size_t n) {
    for (size_t i = 0; i < n; i++)
        if (s[i] < 0x20 || s[i] == 0x7f) return false;
    return true;
}

/* Formats first (the arguments may point into the regions), then frees. */
#define BAD(...)                                                                          \
    do {                                                                                  \
        kvp_err(KVP_ERR_MISMATCH, "metadata blob rejected: " __VA_ARGS__);                \
        kvp_md_free(out);                                                                 \
        return KVP_ERR_MISMATCH;                                                          \
    } while (0)

int32_t kvp_md_decode(const uint8_t *p, size_t n, kvp_md *out) {
    memset(out, 0, sizeof *out);
    if (!p || n < 16) BAD("%zu bytes is too short to be kvport metadata", p ? n : 0);
    kvp_reader r = kvp_reader_make(p, n);
    uint32_t magic = kvp_read_u32(&r);
    if (magic != KVP_MD_MAGIC)
        BAD("bad magic 0x%08x (expected 0x%08x \"KVPM\"; is this NIXL metadata from another "
            "engine?)", magic, KVP_MD_MAGIC);
    uint16_t ver = kvp_read_u16(&r);
    if (ver != KVP_MD_VERSION)
        BAD("version %u is not supported (this library reads version %u)", ver,
            KVP_MD_VERSION);
    (void)kvp_read_u16(&r);
    /* The checksum covers everything before the last 8 bytes. */
    uint64_t want = kvp_get_u64(p + n - 8);
    uint64_t got = kvp_fnv1a(KVP_FNV_OFFSET, p, n - 8);
    if (want != got) BAD("checksum mismatch (truncated or corrupted blob of %zu bytes)", n);
    if (n < 24) BAD("%zu bytes is too short to be kvport metadata", n);
    r.len = n - 24; /* the body ends where the process tag and checksum start */
    memcpy(out->proc_tag, p + n - 24, 16);

    uint8_t nlen = kvp_read_u8(&r);
    const uint8_t *name = kvp_read_bytes(&r, nlen);
    if (!name || nlen == 0 || !printable(name, nlen)) BAD("bad agent name");
    memcpy(out->name, name, nlen);
    out->name[nlen] = '\0';
    const uint8_t *tok = kvp_read_bytes(&r, 16);
    const uint8_t *boot = kvp_read_bytes(&r, 16);
    if (!tok || !boot) BAD("truncated identity");
    memcpy(out->token, tok, 16);
    memcpy(out->boot_id, boot, 16);
    out->pidns = kvp_read_u64(&r);
    out->pid = kvp_read_u32(&r);
    out->starttime = kvp_read_u64(&r);
    uint8_t hlen = kvp_read_u8(&r);
    const uint8_t *host = kvp_read_bytes(&r, hlen);
    if (!host || hlen == 0 || !printable(host, hlen)) BAD("bad listen host");
    memcpy(out->host, host, hlen);
    out->host[hlen] = '\0';
    out->port = kvp_read_u16(&r);
    out->caps = kvp_read_u32(&r);
    out->page_fd = (int32_t)kvp_read_u32(&r);
    out->page_ino = kvp_read_u64(&r);
    out->page_size = kvp_read_u64(&r);
    uint32_t nreg = kvp_read_u32(&r);
    if (!r.ok) BAD("truncated header");
    if (nreg > kvp_reader_left(&r) / REGION_MIN_BYTES)
        BAD("region count %u does not fit in the %zu bytes left", nreg, kvp_reader_left(&r));
    if (nreg > 0) {
        out->regions = calloc(nreg, sizeof *out->regions);
        if (!out->regions) {
            return kvp_err(KVP_ERR_BACKEND, "out of memory decoding %u regions", nreg);
        }
    }
    out->nregions = nreg;
    for (uint32_t i = 0; i < nreg; i++) {
        kvp_md_region *g = &out->regions[i];
        g->mem_type = kvp_read_u8(&r);
        g->flags = kvp_read_u8(&r);
        g->addr = kvp_read_u64(&r);
        g->len = kvp_read_u64(&r);
        g->dev = kvp_read_u64(&r);
        g->memfd = -1;
        if (g->mem_type != KVP_DRAM && g->mem_type != KVP_VRAM)
            BAD("region %u has memory type %d (only DRAM and VRAM are shared)", i, g->mem_type);
        if (g->flags & ~(KVP_MDR_MEMFD | KVP_MDR_IPC)) BAD("region %u has unknown flags", i);
        if (g->len == 0 || g->addr + g->len < g->addr) BAD("region %u has a bad range", i);
        if (g->flags & KVP_MDR_MEMFD) {
            g->memfd = (int32_t)kvp_read_u32(&r);
            g->memfd_ino = kvp_read_u64(&r);
            g->memfd_off = kvp_read_u64(&r);
            g->memfd_size = kvp_read_u64(&r);
            if (g->mem_type != KVP_DRAM || g->memfd < 0 ||
                !kvp_range_ok(g->memfd_off, g->len, 0, g->memfd_size))
                BAD("region %u has inconsistent shared-memory info", i);
        }
        if (g->flags & KVP_MDR_IPC) {
            const uint8_t *h = kvp_read_bytes(&r, KVP_CUDA_IPC_BYTES);
            if (h) memcpy(g->ipc, h, KVP_CUDA_IPC_BYTES);
            g->ipc_off = kvp_read_u64(&r);
            if (g->mem_type != KVP_VRAM) BAD("region %u has a CUDA handle but is not VRAM", i);
        }
        if (!r.ok) BAD("truncated in region %u of %u", i, nreg);
    }
    if (r.off != r.len) BAD("%zu unexpected trailing bytes", r.len - r.off);
    return KVP_SUCCESS;
}

bool kvp_md_regions_equal(const kvp_md *a, const kvp_md *b) {
    if (a->nregions != b->nregions) return false;
    for (uint64_t i = 0; i < a->nregions; i++) {
        const kvp_md_region *x = &a->regions[i], *y = &b->regions[i];
        if (x->mem_type != y->mem_type || x->flags != y->flags || x->addr != y->addr ||
            x->len != y->len || x->dev != y->dev || x->memfd != y->memfd ||
            x->memfd_ino != y->memfd_ino || x->memfd_off != y->memfd_off ||
            x->memfd_size != y->memfd_size || x->ipc_off != y->ipc_off ||
            memcmp(x->ipc, y->ipc, sizeof x->ipc) != 0)
            return false;
    }
    return true;
}
