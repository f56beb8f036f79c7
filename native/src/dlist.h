/* dlist.h - descriptor lists (kvp_dlist_*): plain (addr, len, dev) arrays of one type. */
#ifndef KVP_DLIST_H
#define KVP_DLIST_H
#include "common.h"
#include "handles.h"

typedef struct kvp_desc {
    uint64_t addr, len, dev;
} kvp_desc;

typedef struct kvp_dlist {
    kvp_obj obj;
    int32_t mem_type;
    uint64_t n;
    kvp_desc *d;
} kvp_dlist;

/* Looks a dlist handle up (+1 ref; kvp_obj_put it). NULL with the last error set. */
kvp_dlist *kvp_dlist_get(uint64_t h);
const char *kvp_mem_type_name(int32_t mem_type);

#endif
