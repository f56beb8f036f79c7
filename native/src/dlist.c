/* dlist.c - descriptor lists and their serialized form.
 *
 * Serialized list (little-endian): u32 magic "KVPD", u16 version 1, u16 mem_type,
 * u64 count, then count x (u64 addr, u64 len, u64 dev). The size must match exactly. */
#include "dlist.h"

#include "errors.h"

#define DL_MAGIC 0x4450564Bu /* "KVPD" */
#define DL_VERSION 1
#define DL_HDR 16
#define DL_DESC 24

const char *kvp_mem_type_name(int32_t t) {
    switch (t) {
    case KVP_DRAM: return "DRAM";
    case KVP_VRAM: return "VRAM";
    case KVP_BLK: return "BLK";
    case KVP_OBJ: return "OBJ";
    case KVP_FILE: return "FILE";
    default: return "INVALID";
    }
}

static void dlist_release(kvp_obj *o) {
    kvp_dlist *l = (kvp_dlist *)o;
    free(l->d);
    free(l);
}

static int32_t dlist_new(int32_t mem_type, uint64_t n, kvp_dlist **out) {
    if (n > (SIZE_MAX / sizeof(kvp_desc)) / 2)
        return kvp_err(KVP_ERR_INVALID_PARAM, "descriptor count %llu is too large",
                       (unsigned long long)n);
    kvp_dlist *l = calloc(1, sizeof *l);
    kvp_desc *d = n ? malloc((size_t)n * sizeof *d) : NULL;
    if (!l || (n && !d)) {
        free(l);
        free(d);
        return kvp_err(KVP_ERR_BACKEND, "out of memory for %llu descriptors",
                       (unsigned long long)n);
    }
    kvp_obj_init(&l->obj, KVP_H_DLIST, dlist_release);
    l->mem_type = mem_type;
    l->n = n;
    l->d = d;
    *out = l;
    return KVP_SUCCESS;
}

static int32_t publish(kvp_dlist *l, uint64_t *out) {
    int32_t st = kvp_handle_insert(&l->obj, out);
    kvp_obj_put(&l->obj); /* the table holds it now (or nobody on failure) */
    return st;
}

kvp_dlist *kvp_dlist_get(uint64_t h) { return (kvp_dlist *)kvp_handle_get(h, KVP_H_DLIST); }

KVP_API int32_t kvp_dlist_create(int32_t mem_type, const uint64_t *addrs, const uint64_t *lens,
                                 const uint64_t *devs, uint64_t count, uint64_t *out_dlist) {
    kvp_err_clear();
    if (!out_dlist) return kvp_err(KVP_ERR_INVALID_PARAM, "kvp_dlist_create: out_dlist is NULL");
    *out_dlist = 0;
    if (mem_type < KVP_DRAM || mem_type > KVP_FILE)
        return kvp_err(KVP_ERR_INVALID_PARAM,
                       "kvp_dlist_create: memory type %d is not one of DRAM=0 VRAM=1 BLK=2 "
                       "OBJ=3 FILE=4", mem_type);
    if (count > 0 && (!addrs || !lens))
        return kvp_err(KVP_ERR_INVALID_PARAM,
                       "kvp_dlist_create: addrs and lens must not be NULL for %llu descriptors",
                       (unsigned long long)count);
    kvp_dlist *l = NULL;
    int32_t st = dlist_new(mem_type, count, &l);
    if (st != KVP_SUCCESS) return st;
    for (uint64_t i = 0; i < count; i++) {
        l->d[i].addr = addrs[i];
        l->d[i].len = lens[i];
        l->d[i].dev = devs ? devs[i] : 0;
        if (l->d[i].addr + l->d[i].len < l->d[i].addr) {
            kvp_obj_put(&l->obj);
            return kvp_err(KVP_ERR_INVALID_PARAM,
                           "kvp_dlist_create: descriptor %llu (addr 0x%llx, len %llu) wraps "
                           "around the address space",
                           (unsigned long long)i, (unsigned long long)addrs[i],
                           (unsigned long long)lens[i]);
        }
    }
    return publish(l, out_dlist);
}

KVP_API int32_t kvp_dlist_serialize(uint64_t h, uint8_t *buf, uint64_t cap, uint64_t *len) {
    kvp_err_clear();
    kvp_dlist *l = kvp_dlist_get(h);
    if (!l) return kvp_err_status();
    uint64_t need = DL_HDR + l->n * DL_DESC;
    if (len) *len = need;
    if (buf && cap >= need) {
        kvp_put_u32(buf, DL_MAGIC);
        kvp_put_u16(buf + 4, DL_VERSION);
        kvp_put_u16(buf + 6, (uint16_t)l->mem_type);
        kvp_put_u64(buf + 8, l->n);
        for (uint64_t i = 0; i < l->n; i++) {
            uint8_t *q = buf + DL_HDR + i * DL_DESC;
            kvp_put_u64(q, l->d[i].addr);
            kvp_put_u64(q + 8, l->d[i].len);
            kvp_put_u64(q + 16, l->d[i].dev);
        }
    }
    kvp_obj_put(&l->obj);
    return KVP_SUCCESS;
}

KVP_API int32_t kvp_dlist_deserialize(const uint8_t *buf, uint64_t len, uint64_t *out_dlist) {
    kvp_err_clear();
    if (!out_dlist)
        return kvp_err(KVP_ERR_INVALID_PARAM, "kvp_dlist_deserialize: out_dlist is NULL");
    *out_dlist = 0;
    if (!buf || len < DL_HDR)
        return kvp_err(KVP_ERR_MISMATCH, "serialized list of %llu bytes is too short",
                       (unsigned long long)(buf ? len : 0));
    if (kvp_get_u32(buf) != DL_MAGIC)
        return kvp_err(KVP_ERR_MISMATCH, "serialized list has a bad magic (expected \"KVPD\")");
    if (kvp_get_u16(buf + 4) != DL_VERSION)
        return kvp_err(KVP_ERR_MISMATCH, "serialized list version %u is not supported (want %u)",
                       kvp_get_u16(buf + 4), DL_VERSION);
    uint16_t mt = kvp_get_u16(buf + 6);
    uint64_t n = kvp_get_u64(buf + 8);
    if (mt > KVP_FILE)
        return kvp_err(KVP_ERR_MISMATCH, "serialized list has memory type %u", mt);
    if (n > (len - DL_HDR) / DL_DESC || DL_HDR + n * DL_DESC != len)
        return kvp_err(KVP_ERR_MISMATCH,
                       "serialized list claims %llu descriptors but has %llu bytes",
                       (unsigned long long)n, (unsigned long long)len);
    kvp_dlist *l = NULL;
    int32_t st = dlist_new(mt, n, &l);
    if (st != KVP_SUCCESS) return st;
    for (uint64_t i = 0; i < n; i++) {
        const uint8_t *q = buf + DL_HDR + i * DL_DESC;
        l->d[i].addr = kvp_get_u64(q);
        l->d[i].len = kvp_get_u64(q + 8);
        l->d[i].dev = kvp_get_u64(q + 16);
        if (l->d[i].addr + l->d[i].len < l->d[i].addr) {
            kvp_obj_put(&l->obj);
            return kvp_err(KVP_ERR_MISMATCH, "serialized descriptor %llu wraps around",
                           (unsigned long long)i);
        }
    }
    return publish(l, out_dlist);
}

KVP_API int32_t kvp_dlist_info(uint64_t h, uint64_t *count, int32_t *mem_type) {
    kvp_err_clear();
    kvp_dlist *l = kvp_dlist_get(h);
    if (!l) return kvp_err_status();
    if (count) *count = l->n;
    if (mem_type) *mem_type = l->mem_type;
    kvp_obj_put(&l->obj);
    return KVP_SUCCESS;
}

KVP_API int32_t kvp_dlist_release(uint64_t h) {
    kvp_err_clear();
    kvp_obj *o = kvp_handle_take(h, KVP_H_DLIST);
    if (!o) return kvp_err_status();
    kvp_obj_put(o);
    return KVP_SUCCESS;
}
