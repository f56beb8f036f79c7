/* hostid.h - who and where this process is (for metadata and same-host detection). */
#ifndef KVP_HOSTID_H
#define KVP_HOSTID_H
#include "common.h"

typedef struct kvp_hostid {
    uint8_t boot_id[16]; /* all zero when /proc is unreadable: then never "same host" */
    uint64_t pidns;
    uint32_t pid;
    uint64_t starttime;
} kvp_hostid;

/* Identity of the calling process (boot id and namespace read once). */
void kvp_hostid_self(kvp_hostid *out);
/* Start time (clock ticks since boot) of pid, 0 when unknown. */
uint64_t kvp_pid_starttime(uint32_t pid);
/* 16 random bytes (getrandom; falls back to time/pid mixing if it fails). */
void kvp_random_bytes(uint8_t *out, size_t n);
/* First non-loopback IPv4 address of an interface that is up, else "127.0.0.1". */
void kvp_default_advertise(char *out, size_t cap);

#endif
