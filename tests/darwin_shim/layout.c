/*
 * Apple's layouts that darwin.c relies on, asserted at compile time. build.py compiles this file
 * twice: with zig for aarch64-macos and x86_64-macos against the SDK headers zig ships (the ones
 * `make check-darwin` uses), and with the host compiler against tests/darwin_shim/include. Both
 * must pass, so the shim's structs and constants are Apple's, field by field where darwin.c reads.
 */
#include <dispatch/dispatch.h>
#include <libproc.h>
#include <mach/mach.h>
#include <objc/objc.h>
#include <stddef.h>
#include <sys/proc_info.h>
#include <sys/resource.h>
#include <sys/sysctl.h>

#define SAME(expr, value) _Static_assert((expr) == (value), #expr " is not " #value)

/* mach/vm_statistics.h: every field darwin.c reads, and the revision boundaries. */
SAME(_Alignof(vm_statistics64_data_t), 8);
SAME(offsetof(vm_statistics64_data_t, free_count), 0);
SAME(offsetof(vm_statistics64_data_t, active_count), 4);
SAME(offsetof(vm_statistics64_data_t, inactive_count), 8);
SAME(offsetof(vm_statistics64_data_t, wire_count), 12);
SAME(offsetof(vm_statistics64_data_t, pageins), 32);
SAME(offsetof(vm_statistics64_data_t, pageouts), 40);
SAME(offsetof(vm_statistics64_data_t, purgeable_count), 88);
SAME(offsetof(vm_statistics64_data_t, speculative_count), 92);
SAME(offsetof(vm_statistics64_data_t, decompressions), 96);
SAME(offsetof(vm_statistics64_data_t, swapins), 112);
SAME(offsetof(vm_statistics64_data_t, swapouts), 120);
SAME(offsetof(vm_statistics64_data_t, compressor_page_count), 128);
SAME(offsetof(vm_statistics64_data_t, throttled_count), 132);
SAME(offsetof(vm_statistics64_data_t, external_page_count), 136);
SAME(offsetof(vm_statistics64_data_t, internal_page_count), 140);
SAME(offsetof(vm_statistics64_data_t, total_uncompressed_pages_in_compressor), 144);
SAME(HOST_VM_INFO64_REV0_COUNT, 24);
SAME(HOST_VM_INFO64_REV1_COUNT, 38);
SAME(HOST_VM_INFO64, 4);
SAME(sizeof(natural_t), 4);
SAME(sizeof(integer_t), 4);
SAME(sizeof(mach_port_t), 4);
SAME(sizeof(kern_return_t), 4);
SAME(sizeof(vm_size_t), sizeof(void *));
SAME(KERN_SUCCESS, 0);
SAME(KERN_PROTECTION_FAILURE, 2);
SAME(KERN_INVALID_ARGUMENT, 4);
SAME(KERN_FAILURE, 5);
SAME(KERN_RESOURCE_SHORTAGE, 6);
SAME(KERN_NO_ACCESS, 8);
SAME(KERN_INVALID_HOST, 22);

/* sys/proc_info.h */
SAME(PROC_PIDTBSDINFO, 3);
SAME(sizeof(struct proc_bsdinfo), 136);
SAME(offsetof(struct proc_bsdinfo, pbi_uid), 20);
SAME(offsetof(struct proc_bsdinfo, pbi_start_tvsec), 120);
SAME(offsetof(struct proc_bsdinfo, pbi_start_tvusec), 128);

/* sys/resource.h */
SAME(RUSAGE_INFO_V4, 4);
SAME(sizeof(struct rusage_info_v4), 296);
SAME(offsetof(struct rusage_info_v4, ri_wired_size), 56);
SAME(offsetof(struct rusage_info_v4, ri_resident_size), 64);
SAME(offsetof(struct rusage_info_v4, ri_phys_footprint), 72);
SAME(offsetof(struct rusage_info_v4, ri_lifetime_max_phys_footprint), 240);

/* sys/sysctl.h */
SAME(CTL_MAXNAME, 12);
SAME(sizeof(struct xsw_usage), 32);
SAME(offsetof(struct xsw_usage, xsu_total), 0);
SAME(offsetof(struct xsw_usage, xsu_used), 16);

/* dispatch/source.h */
SAME(DISPATCH_MEMORYPRESSURE_NORMAL, 0x01);
SAME(DISPATCH_MEMORYPRESSURE_WARN, 0x02);
SAME(DISPATCH_MEMORYPRESSURE_CRITICAL, 0x04);
SAME(DISPATCH_TIME_FOREVER, ~0ull);

/* objc/objc.h */
SAME(sizeof(BOOL), 1);
SAME(sizeof(id), sizeof(void *));
SAME(sizeof(SEL), sizeof(void *));
