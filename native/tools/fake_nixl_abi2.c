/* fake_nixl_abi2.c - a stand-in for a nixl engine module built before module ABI 3 (the
 * watcher): its kvpn_module_get answers only abi 2. tests/test_nixl_watch.c checks that
 * libkvport.so refuses it with the reason; should a loader take it anyway, its probe says
 * "fake module of ABI 2", which the test looks for. Needs no NIXL. */
#include <stdint.h>
#include <string.h>

typedef struct fake_module {
    uint32_t abi;
    const char *version;
    const char *build;
    const char *(*last_error)(void);
    int32_t (*probe)(uint8_t *buf, uint64_t cap, uint64_t *len);
    void *rest[40]; /* the other entries of an ABI-2 table: never reached */
} fake_module;

static const char *fake_last_error(void) { return "fake module of ABI 2"; }

static int32_t fake_probe(uint8_t *buf, uint64_t cap, uint64_t *len) {
    static const char text[] = "available=0\nreason=fake module of ABI 2\n";
    *len = sizeof text - 1;
    if (cap >= sizeof text - 1) memcpy(buf, text, sizeof text - 1);
    return 0;
}

static const fake_module g_fake = {2, "0.0.0", "fake=1\n", fake_last_error, fake_probe, {0}};

__attribute__((visibility("default"))) const fake_module *kvpn_module_get(uint32_t abi);
const fake_module *kvpn_module_get(uint32_t abi) { return abi == 2 ? &g_fake : 0; }
