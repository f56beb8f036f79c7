/* hostid.c - see hostid.h. */
#include "hostid.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <ifaddrs.h>
#include <net/if.h>
#include <stdio.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <unistd.h>

static int hexval(int c) {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

static void read_boot_id(uint8_t out[16]) {
    memset(out, 0, 16);
    FILE *f = fopen("/proc/sys/kernel/random/boot_id", "re");
    if (!f) return;
    char line[64];
    if (fgets(line, sizeof line, f)) {
        uint8_t tmp[16];
        int nib = 0;
        for (char *c = line; *c && nib < 32; c++) {
            int v = hexval((unsigned char)*c);
            if (v < 0) continue;
            if (nib % 2 == 0) tmp[nib / 2] = (uint8_t)(v << 4);
            else tmp[nib / 2] |= (uint8_t)v;
            nib++;
        }
        if (nib == 32) memcpy(out, tmp, 16);
    }
    fclose(f);
}

uint64_t kvp_pid_starttime(uint32_t pid) {
    char path[64], buf[1024];
    snprintf(path, sizeof path, "/proc/%u/stat", pid);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return 0;
    ssize_t n = read(fd, buf, sizeof buf - 1);
    kvp_close(fd);
    if (n <= 0) return 0;
    buf[n] = '\0';
    /* comm (field 2) may contain spaces and parentheses: fields restart after the last
     * ')'. starttime is field 22, i.e. the 20th field after it. */
    char *p = strrchr(buf, ')');
    if (!p) return 0;
    p++;
    for (int field = 3; field < 22 && *p; field++) {
        while (*p == ' ') p++;
        while (*p && *p != ' ') p++;
    }
    while (*p == ' ') p++;
    return strtoull(p, NULL, 10);
}

static pthread_once_t g_once = PTHREAD_ONCE_INIT;
static uint8_t g_boot[16];
static uint64_t g_pidns;

static void init_once(void) {
    read_boot_id(g_boot);
    struct stat st;
    if (stat("/proc/self/ns/pid", &st) == 0) g_pidns = (uint64_t)st.st_ino;
}

void kvp_hostid_self(kvp_hostid *out) {
    pthread_once(&g_once, init_once);
    memcpy(out->boot_id, g_boot, 16);
    out->pidns = g_pidns;
    out->pid = (uint32_t)getpid(); /* not cached: a forked child is another process */
    out->starttime = kvp_pid_starttime(out->pid);
}

void kvp_random_bytes(uint8_t *out, size_t n) {
    size_t got = 0;
    while (got < n) {
        ssize_t r = getrandom(out + got, n - got, 0);
        if (r < 0) {
            if (errno == EINTR) continue;
            break;
        }
        got += (size_t)r;
    }
    if (got < n) {
        /* No entropy source: still make incarnations distinct (pid + time + address). */
        uint64_t h = kvp_fnv1a(KVP_FNV_OFFSET, (const uint8_t *)&out, sizeof out);
        uint64_t t = kvp_now_ns() ^ ((uint64_t)getpid() << 32);
        for (size_t i = got; i < n; i++) {
            h = kvp_fnv1a(h, (const uint8_t *)&t, sizeof t);
            out[i] = (uint8_t)(h >> 17);
        }
    }
}

void kvp_default_advertise(char *out, size_t cap) {
    snprintf(out, cap, "127.0.0.1");
    struct ifaddrs *ifs = NULL;
    if (getifaddrs(&ifs) != 0) return;
    for (struct ifaddrs *i = ifs; i; i = i->ifa_next) {
        if (!i->ifa_addr || i->ifa_addr->sa_family != AF_INET) continue;
        if ((i->ifa_flags & IFF_LOOPBACK) || !(i->ifa_flags & IFF_UP)) continue;
        const struct sockaddr_in *sin = (const struct sockaddr_in *)(const void *)i->ifa_addr;
        char tmp[INET_ADDRSTRLEN];
        if (inet_ntop(AF_INET, &sin->sin_addr, tmp, sizeof tmp)) {
            snprintf(out, cap, "%s", tmp);
            break;
        }
    }
    freeifaddrs(ifs);
}
