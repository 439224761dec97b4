/* Shim of <mach/mach.h>: host_statistics64 and the ports darwin.c uses (tests/darwin_shim). */
#ifndef SHIM_MACH_MACH_H
#define SHIM_MACH_MACH_H

#include "../shim_types.h"

/* mach/vm_statistics.h, up to REV2 (macOS 14/15 SDKs); newer SDKs append fields after
   swapped_count, and their HOST_VM_INFO64_COUNT grows with them. */
struct vm_statistics64 {
    natural_t free_count;
    natural_t active_count;
    natural_t inactive_count;
    natural_t wire_count;
    uint64_t zero_fill_count;
    uint64_t reactivations;
    uint64_t pageins;
    uint64_t pageouts;
    uint64_t faults;
    uint64_t cow_faults;
    uint64_t lookups;
    uint64_t hits;
    uint64_t purges;
    natural_t purgeable_count;
    natural_t speculative_count;
    uint64_t decompressions;
    uint64_t compressions;
    uint64_t swapins;
    uint64_t swapouts;
    natural_t compressor_page_count;
    natural_t throttled_count;
    natural_t external_page_count;
    natural_t internal_page_count;
    uint64_t total_uncompressed_pages_in_compressor;
    uint64_t swapped_count;
} __attribute__((aligned(8)));
typedef struct vm_statistics64 vm_statistics64_data_t;

/* mach/host_info.h */
#define HOST_VM_INFO64 4
#define HOST_VM_INFO64_COUNT \
    ((mach_msg_type_number_t)(sizeof(vm_statistics64_data_t) / sizeof(integer_t)))
#define HOST_VM_INFO64_REV2_COUNT HOST_VM_INFO64_COUNT
#define HOST_VM_INFO64_REV1_COUNT \
    ((mach_msg_type_number_t)(offsetof(vm_statistics64_data_t, swapped_count) / sizeof(integer_t)))
#define HOST_VM_INFO64_REV0_COUNT \
    ((mach_msg_type_number_t)(offsetof(vm_statistics64_data_t, decompressions) / sizeof(integer_t)))

mach_port_t mach_host_self(void);
mach_port_t shim_mach_task_self(void);
#define mach_task_self() shim_mach_task_self()
kern_return_t mach_port_deallocate(mach_port_t task, mach_port_t name);
kern_return_t host_statistics64(mach_port_t host, host_flavor_t flavor, host_info64_t info,
                                mach_msg_type_number_t *count);

#endif
