/* handles.c - global, mutex-protected handle table (see handles.h). */
#include "handles.h"

#include "errors.h"

typedef struct slot {
    kvp_obj *obj;      /* NULL when free */
    uint32_t gen;      /* 24-bit generation, never 0 */
    uint32_t next_free;
} slot;

static pthread_mutex_t g_mu = PTHREAD_MUTEX_INITIALIZER;
static slot *g_slots;
static uint32_t g_cap, g_used;
static uint32_t g_free_head = UINT32_MAX;

#define GEN_MASK 0xFFFFFFu

const char *kvp_htype_name(uint32_t type) {
    switch (type) {
    case KVP_H_AGENT: return "agent";
    case KVP_H_REG: return "registration";
    case KVP_H_DLIST: return "descriptor list";
    case KVP_H_PREPPED: return "prepared list";
    case KVP_H_REQ: return "transfer request";
    case KVP_H_FILE: return "file";
    case KVP_H_GRANT: return "grant";
    default: return "unknown";
    }
}

void kvp_obj_init(kvp_obj *o, uint32_t type, void (*release)(kvp_obj *)) {
    o->type = type;
    atomic_init(&o->refs, 1);
    o->release = release;
}

void kvp_obj_ref(kvp_obj *o) { atomic_fetch_add_explicit(&o->refs, 1, memory_order_relaxed); }

void kvp_obj_put(kvp_obj *o) {
    if (!o) return;
    if (atomic_fetch_sub_explicit(&o->refs, 1, memory_order_acq_rel) == 1) o->release(o);
}

int32_t kvp_handle_insert(kvp_obj *o, uint64_t *out_handle) {
    pthread_mutex_lock(&g_mu);
    uint32_t idx;
    if (g_free_head != UINT32_MAX) {
        idx = g_free_head;
        g_free_head = g_slots[idx].next_free;
    } else {
        if (g_used == g_cap) {
            if (g_cap >= (1u << 30)) {
                pthread_mutex_unlock(&g_mu);
                return kvp_err(KVP_ERR_BACKEND, "handle table is full (%u handles)", g_cap);
            }
            uint32_t nc = g_cap ? g_cap * 2 : 256;
            slot *ns = realloc(g_slots, (size_t)nc * sizeof *ns);
            if (!ns) {
                pthread_mutex_unlock(&g_mu);
                return kvp_err(KVP_ERR_BACKEND, "out of memory growing the handle table");
            }
            for (uint32_t i = g_cap; i < nc; i++) {
                ns[i].obj = NULL;
                ns[i].gen = 1;
                ns[i].next_free = UINT32_MAX;
            }
            g_slots = ns;
            g_cap = nc;
        }
        idx = g_used++;
    }
    slot *s = &g_slots[idx];
    s->obj = o;
    kvp_obj_ref(o);
    *out_handle = ((uint64_t)o->type << 56) | ((uint64_t)(s->gen & GEN_MASK) << 32) | idx;
    pthread_mutex_unlock(&g_mu);
    return KVP_SUCCESS;
}

/* Caller holds g_mu. Returns the slot for h or NULL with the last error set. */
static slot *lookup(uint64_t h, uint32_t type) {
    uint32_t htype = (uint32_t)(h >> 56);
    uint32_t gen = (uint32_t)(h >> 32) & GEN_MASK;
    uint32_t idx = (uint32_t)h;
    if (h == 0) {
        kvp_err(KVP_ERR_NOT_FOUND, "%s handle 0 is not a handle (never created)",
                kvp_htype_name(type));
        return NULL;
    }
    if (htype != type) {
        if (htype > 0 && htype < KVP_H_TYPES)
            kvp_err(KVP_ERR_INVALID_PARAM, "handle 0x%llx is a %s handle, expected a %s handle",
                    (unsigned long long)h, kvp_htype_name(htype), kvp_htype_name(type));
        else
            kvp_err(KVP_ERR_NOT_FOUND,
                    "0x%llx is not a %s handle of this library (garbage or foreign value)",
                    (unsigned long long)h, kvp_htype_name(type));
        return NULL;
    }
    if (idx >= g_used || g_slots[idx].obj == NULL || g_slots[idx].gen != gen ||
        g_slots[idx].obj->type != type) {
        kvp_err(KVP_ERR_NOT_FOUND,
                "%s handle 0x%llx is not valid: already released, or from another process",
                kvp_htype_name(type), (unsigned long long)h);
        return NULL;
    }
    return &g_slots[idx];
}

kvp_obj *kvp_handle_get(uint64_t h, uint32_t type) {
    pthread_mutex_lock(&g_mu);
    slot *s = lookup(h, type);
    kvp_obj *o = NULL;
    if (s) {
        o = s->obj;
        kvp_obj_ref(o);
    }
    pthread_mutex_unlock(&g_mu);
    return o;
}

static void free_slot(uint32_t idx) {
    slot *s = &g_slots[idx];
    s->obj = NULL;
    s->gen = (s->gen + 1) & GEN_MASK;
    if (s->gen == 0) s->gen = 1;
    s->next_free = g_free_head;
    g_free_head = idx;
}

kvp_obj *kvp_handle_take(uint64_t h, uint32_t type) {
    pthread_mutex_lock(&g_mu);
    slot *s = lookup(h, type);
    kvp_obj *o = NULL;
    if (s) {
        o = s->obj;
        free_slot((uint32_t)h);
    }
    pthread_mutex_unlock(&g_mu);
    return o;
}

void kvp_handle_drop(uint64_t h, kvp_obj *o) {
    kvp_obj *taken = NULL;
    pthread_mutex_lock(&g_mu);
    uint32_t idx = (uint32_t)h;
    uint32_t gen = (uint32_t)(h >> 32) & GEN_MASK;
    if (h != 0 && idx < g_used && g_slots[idx].obj == o && g_slots[idx].gen == gen) {
        taken = o;
        free_slot(idx);
    }
    pthread_mutex_unlock(&g_mu);
    kvp_obj_put(taken);
}
