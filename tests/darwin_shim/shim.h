/*
 * shim.h - the control interface of the Apple API shim (tests/darwin_shim/shim.c).
 *
 * Tests set what the fake APIs answer (values recorded on real Macs, and failures) through
 * these functions; build.py appends the block between the markers to the cffi cdef of the
 * shim build of darwin.c, so they are reachable from Python as lib.shim_*.
 */
#ifndef SHIM_H
#define SHIM_H
#include <stddef.h>
#include <stdint.h>

/* BEGIN SHIM CDEF */

/* Everything back to a healthy M1 Pro (16 KiB pages, libraries present, no failures). */
void shim_reset(void);

/* sysctl: a value of width 4 or 8 bytes, raw bytes (vm.swapusage), a name the kernel lacks
   (sysctlnametomib fails), or a read that fails with errno. */
int shim_sysctl_set(const char *name, uint64_t value, uint32_t width);
int shim_sysctl_set_bytes(const char *name, const void *buf, size_t len);
int shim_sysctl_remove(const char *name);
int shim_sysctl_fail(const char *name, int32_t err);

/* host_statistics64(HOST_VM_INFO64): field values by struct field name; the kern_return_t to
   answer; the revision the "kernel" fills (0, 1, 2); a rate limit of n fresh replies per 1 s
   window (0: none; -1: other callers used this window's quota), after which the last reply is
   served again, as xnu's rate_limit_host_statistics does. */
int shim_vm_set(const char *field, uint64_t value);
void shim_host_statistics_result(int32_t kr);
void shim_host_statistics_revision(int32_t rev);
void shim_host_statistics_rate_limit(int32_t fresh_per_window);
uint64_t shim_host_statistics_calls(void);
void shim_page_size(uint64_t bytes);
int64_t shim_ports_live(void);

/* The clock behind CLOCK_UPTIME_RAW: advance it, or make clock_gettime fail. */
void shim_clock_advance(double seconds);
void shim_clock_fail(int32_t on);

/* Processes. A pid set here answers with these values; any other pid is answered from the
   Linux process of that pid (start time, rss, peak from /proc), with macOS's rule: another
   user's process gives EPERM to PROC_PIDTBSDINFO and proc_pid_rusage unless we are root
   (xnu proc_info.c, CHECK_SAME_USER), a gone one ESRCH.
   shim_proc_fail: call 0 proc_pidinfo, 1 proc_pid_rusage; err < 0: a short pidinfo reply. */
int shim_proc_set(int32_t pid, uint32_t uid, uint64_t start_sec, uint64_t start_usec,
                  uint64_t rss, uint64_t footprint, uint64_t wired, uint64_t peak);
int shim_proc_fail(int32_t pid, int32_t call, int32_t err);
/* Answer as if the caller's effective uid were this (-1: the real one), for the same-uid rule. */
void shim_caller_uid(int64_t uid);

/* dlopen/dlsym: a library ("libobjc", "Metal", "IOKit", "CoreFoundation") or symbol missing. */
void shim_library(const char *name, int32_t present);
void shim_symbol(const char *name, int32_t present);

/* Metal: whether MTLCreateSystemDefaultDevice answers, how many MTLCopyAllDevices lists; which
   selectors the device responds to; its values. */
void shim_metal_devices(int32_t default_device, int32_t listed);
void shim_metal_responds(const char *selector, int32_t responds);
void shim_metal_values(uint64_t working_set, int32_t unified, const char *name);
uint64_t shim_metal_calls(const char *selector);
int64_t shim_objects_live(void);
int64_t shim_handles_live(void);   /* dlopen handles not yet dlclose'd */

/* IORegistry: IOAccelerator services in registry order, each with or without a
   PerformanceStatistics dictionary (or with one that is not a dictionary), and its entries. */
void shim_accel_clear(void);
int shim_accel_add(int32_t has_stats);
int shim_accel_stats_not_a_dictionary(int32_t service);
int shim_accel_number(int32_t service, const char *key, int64_t value);
int shim_accel_float(int32_t service, const char *key, double value);
int shim_accel_string(int32_t service, const char *key, const char *value);
void shim_accel_matching_result(int32_t kr);
/* CFStringCreateWithCString answers NULL (it can, on allocation failure). */
void shim_cf_string_fail(int32_t on);
int64_t shim_io_objects_live(void);
int64_t shim_cf_objects_live(void);

/* libdispatch: make one constructor fail ("queue", "semaphore", "source"); fire the
   memory-pressure sources with DISPATCH_MEMORYPRESSURE_* flags (returns how many got it). */
void shim_dispatch_fail(const char *what);
int shim_pressure_fire(uint64_t flags);
int shim_pressure_sources(void);
/* Handler and cancel jobs enqueued and not yet run, across queues. */
int64_t shim_dispatch_pending(void);

/* libc: the next call of "calloc", "pipe", "fcntl", "read" or "write" (darwin.c's calls only)
   after `after` successful ones fails with err. */
void shim_libc_fail(const char *call, int32_t err, int32_t after);

/* END SHIM CDEF */

#endif
