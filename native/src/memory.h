/*
 * memory.h - kvp_mem_alloc's table of allocations.
 *
 * DRAM allocations are memfd files mapped MAP_SHARED; the table remembers each one's
 * memfd so that a registration lying inside it can tell a same-host peer how to map the
 * same pages (open /proc/<pid>/fd/<memfd> + mmap) instead of copying through a socket.
 */
#ifndef KVP_MEMORY_H
#define KVP_MEMORY_H
#include "common.h"

typedef struct kvp_memfd_info {
    uint64_t base;  /* address of the allocation */
    uint64_t size;  /* bytes mapped (= memfd size) */
    int32_t fd;     /* memfd number in this process */
    uint64_t ino;   /* memfd inode, checked by the peer after opening it */
} kvp_memfd_info;

/* True when [addr, addr+len) lies inside one DRAM allocation of kvp_mem_alloc. */
bool kvp_mem_find_memfd(uint64_t addr, uint64_t len, kvp_memfd_info *out);
/* True when [addr, addr+len) lies inside one VRAM allocation; gives its base. */
bool kvp_mem_find_vram(uint64_t addr, uint64_t len, int32_t dev, uint64_t *base);

#endif
