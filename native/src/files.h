/* files.h - the file handles of kvp_file_open, as registrations see them. */
#ifndef KVP_FILES_H
#define KVP_FILES_H
#include "common.h"

/* Pins the files behind n descriptors (all or none) for a FILE registration: each must
 * be open through kvp_file_open; kvp_file_close refuses while pinned. */
int32_t kvp_files_pin(const uint64_t *fds, uint64_t n);
void kvp_files_unpin(const uint64_t *fds, uint64_t n);

#endif
