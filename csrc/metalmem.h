/*
 * metalmem.h - the contract between the native sampler and Python.
 *
 * One header for every platform (linux.c, darwin.c). build_ffi.py feeds the block between
 * the CDEF markers to cffi's cdef(), so it must stay plain C declarations: no preprocessor
 * lines, structs declared in full (cffi then checks every field offset against the compiler
 * at import), fixed-width fields only, no pointers inside shared structs.
 *
 * Conventions (STYLE.md rules 9-12):
 *   - functions return 0 or -errno; they never exit, print or call into Python;
 *   - a value the platform or the file cannot provide leaves its MM_HAVE_* bit clear, and
 *     Python reports None; a field whose bit is clear holds 0 and must not be read;
 *   - sizes are bytes, times are seconds (double) on CLOCK_MONOTONIC (Linux) or
 *     CLOCK_UPTIME_RAW (macOS: the clock behind Python's time.monotonic there).
 */
#ifndef METALMEM_H
#define METALMEM_H

#include <stddef.h>
#include <stdint.h>

/* BEGIN CDEF */

/* Bumped whenever a struct or signature below changes; checked by sampler.py at import. */
enum { MM_ABI_VERSION = 3 };

/* mm_system.have bits. */
enum {
    MM_HAVE_TOTAL        = 1 << 0,
    MM_HAVE_AVAILABLE    = 1 << 1,
    MM_HAVE_FREE         = 1 << 2,
    MM_HAVE_WIRED        = 1 << 3,
    MM_HAVE_COMPRESSED   = 1 << 4,
    MM_HAVE_SWAP         = 1 << 5,   /* swap_total and swap_used */
    MM_HAVE_PAGEOUTS     = 1 << 6,
    MM_HAVE_SWAPOUTS     = 1 << 7,
    MM_HAVE_PSI_SOME     = 1 << 8,   /* psi_some_* */
    MM_HAVE_PSI_FULL     = 1 << 9,   /* psi_full_* */
    MM_HAVE_OS_LEVEL     = 1 << 10,  /* macOS kern.memorystatus_vm_pressure_level */
    MM_HAVE_GPU_LIMIT    = 1 << 11,
    MM_HAVE_GPU_USED     = 1 << 12,
    MM_HAVE_OOM_KILLS    = 1 << 13,
    MM_HAVE_VM_PAGES     = 1 << 14,  /* macOS raw page counters (vm_*) and page_size */
    MM_HAVE_VM_EVENTS    = 1 << 15,  /* macOS cumulative vm_pageins .. vm_swapouts */
    MM_HAVE_LIMIT        = 1 << 16   /* cgroup scope: a finite memory limit is in force */
};

/*
 * A system (or cgroup-scope) sample. Cheap parts are read on every call; the expensive
 * cumulative counters (Linux /proc/vmstat, NVML) at most once per MM_SLOW_PERIOD seconds,
 * and slow_at says when they were read.
 */
struct mm_system {
    uint64_t have;
    uint64_t total;
    uint64_t available;
    uint64_t free;
    uint64_t wired;
    uint64_t compressed;
    uint64_t swap_total;
    uint64_t swap_used;
    uint64_t pageouts;          /* cumulative bytes paged out */
    uint64_t swapouts;          /* cumulative bytes swapped out */
    uint64_t oom_kills;         /* cumulative OOM kills (host vmstat, or the cgroup's) */
    uint64_t gpu_limit;
    uint64_t gpu_used;
    double psi_some_avg10;      /* percent of wall time */
    double psi_some_avg60;
    double psi_full_avg10;
    double psi_full_avg60;
    uint64_t psi_some_total_us; /* cumulative stall, microseconds */
    uint64_t psi_full_total_us;
    int32_t os_level;           /* macOS: 1 normal, 2 warn, 4 critical */
    int32_t generation;         /* Linux: changes when any field but available, free and
                                   sampled_at differs from the last call; 0: not tracked */
    double sampled_at;          /* when the cheap parts were read */
    double slow_at;             /* when the slow parts were read */
    /* macOS raw counters, in pages of page_size; vm_stat's meanings (vm_free excludes speculative). */
    uint64_t page_size;
    uint64_t vm_free;
    uint64_t vm_active;
    uint64_t vm_inactive;
    uint64_t vm_speculative;
    uint64_t vm_throttled;
    uint64_t vm_wired;
    uint64_t vm_purgeable;
    uint64_t vm_external;
    uint64_t vm_internal;
    uint64_t vm_compressor_stored;
    uint64_t vm_compressor_occupied;
    uint64_t vm_pageins;
    uint64_t vm_pageouts;
    uint64_t vm_swapins;
    uint64_t vm_swapouts;
};

/* mm_proc.have bits. */
enum {
    MM_PHAVE_RSS       = 1 << 0,
    MM_PHAVE_FOOTPRINT = 1 << 1,
    MM_PHAVE_WIRED     = 1 << 2,
    MM_PHAVE_SWAP      = 1 << 3,
    MM_PHAVE_PEAK      = 1 << 4,
    MM_PHAVE_START     = 1 << 5,
    MM_PHAVE_ANON      = 1 << 6,
    MM_PHAVE_ALL       = (1 << 7) - 1
};

/*
 * One process. err is 0 or a positive errno for this item alone (ESRCH, EACCES, ...);
 * a batch never fails as a whole. call names the failing step ("open statm", ...).
 * The fields from pid to detail_at (err skipped) are in the order of Python's ProcessMemory,
 * so a complete item is unpacked straight into the record.
 */
struct mm_proc {
    int32_t pid;
    int32_t err;
    double start_time;          /* seconds since boot (Linux) or since the epoch (macOS) */
    uint64_t rss;
    uint64_t footprint;
    uint64_t wired;
    uint64_t swap;
    uint64_t peak;
    uint64_t anon;              /* anonymous resident (Linux statm resident - shared) */
    double sampled_at;          /* when this item was read */
    double detail_at;           /* when the slow per-process detail (status) was read */
    uint64_t have;
    int32_t call;               /* index into mm_call_name() for err */
    int32_t reserved0;
};

/* mm_gpu.have bits. */
enum {
    MM_GHAVE_LIMIT     = 1 << 0,
    MM_GHAVE_ALLOCATED = 1 << 1,
    MM_GHAVE_USED      = 1 << 2,
    MM_GHAVE_UNIFIED   = 1 << 3
};

struct mm_gpu {
    uint64_t have;
    uint64_t limit;
    uint64_t allocated;
    uint64_t used;
    int32_t unified;
    int32_t reserved0;
    char name[96];
};

/* Errors that need their origin: errno plus the index of a static call name. */
struct mm_error {
    int32_t err;
    int32_t call;
};

/* Capabilities of an open handle (mm_capabilities). */
enum {
    MM_CAP_PSI    = 1 << 0,
    MM_CAP_CGROUP = 1 << 1,
    MM_CAP_GPU    = 1 << 2,
    MM_CAP_EVENTS = 1 << 3
};

/* Pressure levels as delivered by mm_events_read (match metalmem.Level). */
enum { MM_LEVEL_NORMAL = 0, MM_LEVEL_WARNING = 1, MM_LEVEL_CRITICAL = 2 };

typedef struct mm_handle mm_handle;
typedef struct mm_events mm_events;

int mm_abi_version(void);
const char *mm_call_name(int32_t call);
const char *mm_platform(void);

/* root: filesystem root for proc/ and sys/ (Linux; ignored on macOS).
   scope: NULL or "" for the host, else a cgroup directory below root. */
int mm_open(const char *root, const char *scope, mm_handle **out, struct mm_error *err);
void mm_close(mm_handle *h);
uint64_t mm_capabilities(mm_handle *h);
double mm_slow_period(void);

int mm_system(mm_handle *h, struct mm_system *out, struct mm_error *err);
/* Returns how many items are incomplete (an error, or a have bit short of MM_PHAVE_ALL),
   so that Python can take the fast path when none is. */
int mm_processes(mm_handle *h, const int32_t *pids, size_t n, struct mm_proc *out);
int mm_gpu(mm_handle *h, uint32_t index, struct mm_gpu *out, struct mm_error *err);
int mm_gpu_count(mm_handle *h, uint32_t *count);

/* Pure parsers over a buffer, exposed so tests can feed hostile bytes (Linux formats). */
int mm_parse_meminfo(const char *buf, size_t len, struct mm_system *out);
int mm_parse_vmstat(const char *buf, size_t len, struct mm_system *out);
int mm_parse_psi(const char *buf, size_t len, struct mm_system *out);
int mm_parse_statm(const char *buf, size_t len, uint64_t page_size, struct mm_proc *out);
int mm_parse_status(const char *buf, size_t len, struct mm_proc *out);
int mm_parse_stat_start(const char *buf, size_t len, uint64_t ticks_per_second, struct mm_proc *out);

/*
 * OS pressure events. mm_events_open returns a handle whose fd (mm_events_fd) becomes readable
 * when the OS signals pressure. Linux: every source the scope offers (MM_SRC_*): PSI triggers
 * "some"/"full" (stall_us per window_us) on the scope's pressure file; on a cgroup v1 scope,
 * memory.pressure_level (medium: WARNING, critical: CRITICAL) through cgroup.event_control and
 * an eventfd; usage or available thresholds once mm_events_arm is called. It fails (with the
 * PSI trigger's error) only when no source at all can be opened. macOS: a dispatch
 * memory-pressure source writing level bytes into a non-blocking pipe. mm_events_read drains
 * what is pending and stores the highest level seen (MM_LEVEL_*), or -EAGAIN if nothing was
 * pending.
 */
int mm_events_open(mm_handle *h, uint32_t some_us, uint32_t full_us, uint32_t window_us,
                   mm_events **out, struct mm_error *err);
int mm_events_fd(mm_events *ev);
int mm_events_read(mm_events *ev, int32_t *level);
void mm_events_close(mm_events *ev);

/* Event sources an open handle holds (mm_events_sources). */
enum {
    MM_SRC_PSI          = 1 << 0,  /* PSI some/full triggers (host, cgroup v2, v1 beside unified) */
    MM_SRC_V1_PRESSURE  = 1 << 1,  /* cgroup v1 memory.pressure_level medium and critical */
    MM_SRC_V1_USAGE     = 1 << 2,  /* cgroup v1 memory.usage_in_bytes thresholds (once armed) */
    MM_SRC_WATCH        = 1 << 3,  /* host / cgroup v2: adaptive poll of available (once armed) */
    MM_SRC_DISPATCH     = 1 << 4   /* macOS dispatch memory-pressure source */
};

/*
 * Wake when available memory crosses warning_available or critical_available bytes (either
 * way): cgroup v1 registers memory.usage_in_bytes thresholds at limit - each (usage counts
 * cache, so the crossing comes no later than available's); host and cgroup v2 have no such
 * kernel notification, so the event thread polls available itself (one pread, ~5 us) at a
 * period that follows the headroom: the time the remaining headroom above the critical
 * threshold lasts at the fastest fall seen, a quarter of it, in [min_period, max_period] s.
 * A crossing posts MM_LEVEL_NORMAL (a wake-up: the reader samples to learn the level).
 * With paced_by_reader the thread leaves the watch to the reader, which polls it with
 * mm_events_watch from its own loop (one wake-up serves its tick and the watch). Re-arming
 * replaces the thresholds. macOS: -ENOTSUP (the OS decides when to signal).
 */
int mm_events_arm(mm_events *ev, uint64_t warning_available, uint64_t critical_available,
                  double min_period, double max_period, int paced_by_reader);
/* The reader-paced watch (mm_events_arm with paced_by_reader): read available now; returns 1
 * when it crossed a threshold since the last poll, else 0, and stores the seconds until the
 * next poll is due. -ENOENT: no reader-paced watch is armed; -EIO: the read failed. */
int mm_events_watch(mm_events *ev, double *next_period);
/* MM_SRC_* bits; psi_err: 0, or the errno the kernel gave for the PSI trigger. */
uint32_t mm_events_sources(mm_events *ev, int32_t *psi_err);
/* Polls the watch made (MM_SRC_WATCH), for cost accounting. */
uint64_t mm_events_polls(mm_events *ev);

/* END CDEF */

#endif /* METALMEM_H */
