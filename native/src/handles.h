/*
 * handles.h - the global handle table.
 *
 * Every object handed to the caller is a refcounted kvp_obj reached through a 64-bit
 * handle: bits 56..63 type tag, bits 32..55 generation, bits 0..31 slot. A released
 * slot bumps its generation, so a stale, foreign or forged handle never matches and is
 * reported as KVP_ERR_NOT_FOUND instead of being dereferenced.
 */
#ifndef KVP_HANDLES_H
#define KVP_HANDLES_H
#include "common.h"

enum kvp_htype {
    KVP_H_AGENT = 1,
    KVP_H_REG = 2,
    KVP_H_DLIST = 3,
    KVP_H_PREPPED = 4,
    KVP_H_REQ = 5,
    KVP_H_FILE = 6,
    KVP_H_GRANT = 7,
    KVP_H_TYPES
};

typedef struct kvp_obj kvp_obj;
struct kvp_obj {
    uint32_t type;
    atomic_uint refs;
    void (*release)(kvp_obj *o); /* called once, by whoever drops the last ref */
};

/* refs = 1 (the caller's). */
void kvp_obj_init(kvp_obj *o, uint32_t type, void (*release)(kvp_obj *));
void kvp_obj_ref(kvp_obj *o);
void kvp_obj_put(kvp_obj *o);

/* Inserts o; the table takes a reference of its own. */
int32_t kvp_handle_insert(kvp_obj *o, uint64_t *out_handle);
/* Looks a handle up and returns a new reference (put it), or NULL with the last error
 * set: KVP_ERR_NOT_FOUND for unknown/stale handles, KVP_ERR_INVALID_PARAM for a handle
 * of another type. */
kvp_obj *kvp_handle_get(uint64_t h, uint32_t type);
/* Removes a handle from the table and hands the table's reference to the caller. */
kvp_obj *kvp_handle_take(uint64_t h, uint32_t type);
/* Removes the handle only if it still refers to o (used on cleanup paths; no error). */
void kvp_handle_drop(uint64_t h, kvp_obj *o);
const char *kvp_htype_name(uint32_t type);

#endif
