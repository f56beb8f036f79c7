/*
 * metadata.h - the agent metadata blob (kvp_local_metadata / kvp_load_remote_metadata).
 *
 * Layout (little-endian, version 2):
 *   u32 magic "KVPM"  u16 version  u16 flags(0)
 *   u8 name_len (1..255) name
 *   u8[16] token         random per agent incarnation (a restarted peer differs)
 *   u8[16] boot_id       /proc/sys/kernel/random/boot_id  } same host and same pid
 *   u64 pidns_ino        inode of /proc/self/ns/pid        } namespace = same values
 *   u32 pid  u64 starttime (clock ticks, /proc/self/stat field 22: guards pid reuse)
 *   u8 host_len (1..255) host  u16 port                     TCP listen address
 *   u32 caps             KVP_CAP_* bits (backends served)
 *   i32 page_fd  u64 page_ino  u64 page_size   the agent page (agent_page.h): where a
 *                        same-host peer finds the live registrations; fd -1 when none
 *   u32 nregions, then per region:
 *     u8 mem_type  u8 flags  u64 addr  u64 len  u64 dev
 *     flags & MEMFD: i32 memfd  u64 memfd_ino  u64 memfd_off  u64 memfd_size
 *     flags & IPC:   u8[64] cuda_ipc_handle  u64 ipc_off
 *   u8[16] proc_tag      keyed hash of every byte before it under a secret of this
 *                        process (never sent anywhere): proves "same process" (see
 *                        bi_same_process in builtin_agent.c); a blob from another process
 *                        never verifies
 *   u64 fnv1a-64 of every byte before it
 * The decoder checks every length against the bytes left, so truncated, overlong or
 * corrupt blobs are KVP_ERR_MISMATCH and never an out-of-bounds read.
 */
#ifndef KVP_METADATA_H
#define KVP_METADATA_H
#include "common.h"
#include "cuda_loader.h"

#define KVP_MD_MAGIC 0x4D50564Bu /* "KVPM" */
#define KVP_MD_VERSION 2

#define KVP_MDR_MEMFD 1u
#define KVP_MDR_IPC 2u

#define KVP_CAP_UCX 1u
#define KVP_CAP_TCP 2u
#define KVP_CAP_POSIX 4u

typedef struct kvp_md_region {
    int32_t mem_type;
    uint32_t flags;
    uint64_t addr, len, dev;
    int32_t memfd;
    uint64_t memfd_ino, memfd_off, memfd_size;
    uint8_t ipc[KVP_CUDA_IPC_BYTES];
    uint64_t ipc_off;
    /* In memory only (never encoded): the local registration (bi_reg) holding it, or
     * for a snapshot of a peer's agent page, its slot index + 1. */
    void *owner;
} kvp_md_region;

typedef struct kvp_md {
    char name[KVP_NAME_MAX + 1];
    uint8_t token[16];
    uint8_t boot_id[16];
    uint64_t pidns;
    uint32_t pid;
    uint64_t starttime;
    char host[256];
    uint16_t port;
    uint32_t caps;
    int32_t page_fd;
    uint64_t page_ino, page_size;
    uint8_t proc_tag[16];
    uint64_t nregions;
    kvp_md_region *regions;
} kvp_md;

/* Appends the encoded blob to out (check out->oom). proc_tag is computed here. */
void kvp_md_encode(const kvp_md *md, kvp_buf *out);
/* True when blob (n bytes, already decoded successfully) was encoded in this process. */
bool kvp_md_from_this_process(const uint8_t *blob, size_t n);
/* Parses a blob; KVP_ERR_MISMATCH (with the reason) when it is not a valid blob. On
 * success out->regions is malloc'ed (kvp_md_free). */
int32_t kvp_md_decode(const uint8_t *p, size_t n, kvp_md *out);
void kvp_md_free(kvp_md *md);
/* True when both describe the same regions (order included). */
bool kvp_md_regions_equal(const kvp_md *a, const kvp_md *b);

#endif
