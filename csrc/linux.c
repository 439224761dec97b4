/*
 * linux.c - the Linux sampler: /proc/meminfo, /proc/vmstat, PSI, cgroup v1/v2, per-process
 * statm/status/stat, NVML through dlopen, PSI triggers.
 *
 * Costs measured on the reference machine (2 vCPU EPYC, kernel 6.18; python-ecosystem.md §5 and
 * the sampler issue), kernel time to generate each file through a kept-open fd + pread:
 *   /proc/meminfo ~5 us, /proc/pressure/memory ~1.5 us, /proc/vmstat ~21 us,
 *   /proc/PID/statm ~0.8 us, /proc/PID/status ~7 us.
 * So mm_system reads meminfo and PSI on every call but vmstat and NVML at most once per
 * MM_SLOW_PERIOD. mm_processes reads each figure at the rate it changes: statm every call (rss,
 * anon = resident - shared); status (VmSwap, VmHWM, VmLck + VmPin) once per MM_DETAIL_PERIOD,
 * except VmSwap, which is 0 while /proc/swaps shows no swap in use and, when it does, is read
 * at most once per MM_SLOW_PERIOD. Between status reads peak is max(VmHWM, rss), which is what
 * the kernel's VmHWM is (get_mm_hiwater_rss) to the resolution of the samples.
 * At one call a second, status read every call cost ~24 us per pid cold (the kernel builds the
 * whole ~1.4 KiB file); statm ~2 us (issue 15).
 */
#define _GNU_SOURCE
#include "metalmem.h"

#include <dirent.h>
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define MM_SLOW_PERIOD 1.0
/* wired (mlock) and the peak's excursions between samples: read every ~10 s per process,
   spread over 0.5-1.5 periods by pid so that a batch opened together is not re-read together. */
#define MM_DETAIL_PERIOD 10.0
/* 8 KiB holds every file read here: meminfo is ~1.5 KiB with 55 lines on 6.x kernels,
   status ~1.4 KiB, cgroup v1 memory.stat ~1 KiB; vmstat (~4.5 KiB, 180 lines) gets 16 KiB. */
#define MM_BUF 8192
#define MM_BIGBUF 16384
/* Process slots: each pins /proc/PID (dir fd) and its statm (2 fds). A handle starts with 512
   (under the common 1024 soft fd limit) and grows when one call asks for more pids; when the
   fds run out (EMFILE) the least recently used slot not needed by this call is closed.
   Measured need: one slot per managed target (tens). */
#define MM_SLOTS 512       /* process slots a handle starts with */
#define MM_SLOTS_MAX 8192  /* and grows to, when one call asks for more pids */

enum {
    CALL_NONE, CALL_OPEN_ROOT, CALL_OPEN_MEMINFO, CALL_READ_MEMINFO, CALL_OPEN_SCOPE,
    CALL_READ_CGROUP, CALL_OPEN_PROC, CALL_OPEN_STATM, CALL_READ_STATM, CALL_READ_STAT,
    CALL_READ_STATUS, CALL_NVML_INIT, CALL_NVML_DEVICE, CALL_NVML_MEMORY, CALL_OPEN_PSI,
    CALL_WRITE_TRIGGER, CALL_PIPE, CALL_THREAD, CALL_ALLOC, CALL_OPEN_EVENTS, CALL_COUNT
};

static const char *const call_names[CALL_COUNT] = {
    "", "open root", "open meminfo", "read meminfo", "open cgroup scope", "read cgroup file",
    "open /proc/PID", "open statm", "read statm", "read stat", "read status",
    "nvmlInit_v2 failed", "nvmlDeviceGetHandleByIndex_v2 failed",
    "nvmlDeviceGetMemoryInfo_v2 failed", "open PSI file", "write PSI trigger",
    "pipe", "start event thread", "allocate", "open event source",
};

/* NVML, resolved with dlsym so the extension never links against libnvidia-ml. */
typedef struct {
    unsigned int version;
    unsigned long long total, reserved, free, used;
} nvml_memory_v2;
typedef struct {
    unsigned long long total, free, used;
} nvml_memory_v1;
typedef void *nvml_device;
typedef int (*nvml_init_fn)(void);
typedef int (*nvml_shutdown_fn)(void);
typedef int (*nvml_count_fn)(unsigned int *);
typedef int (*nvml_handle_fn)(unsigned int, nvml_device *);
typedef int (*nvml_mem2_fn)(nvml_device, nvml_memory_v2 *);
typedef int (*nvml_mem1_fn)(nvml_device, nvml_memory_v1 *);
typedef int (*nvml_name_fn)(nvml_device, char *, unsigned int);
#define NVML_MEMORY_V2 ((unsigned int)(sizeof(nvml_memory_v2) | (2u << 24)))

struct mm_slot {
    int32_t pid;           /* 0: empty */
    int dir_fd;
    int statm_fd;
    uint64_t used;         /* LRU stamp */
    double detail_due;     /* when status is read next (wired, peak) */
    struct mm_proc cached; /* start time and status-derived fields */
};

enum { CG_NONE = 0, CG_V2 = 2, CG_V1 = 1 };

/* The keys read from meminfo, in the order the kernel prints them (fs/proc/meminfo.c), so the
   scan can stop after the last one instead of parsing all ~55 lines. Keys are compared before
   any number is parsed: most lines are skipped after a length check and one memcmp. */
enum { MI_TOTAL, MI_FREE, MI_AVAILABLE, MI_UNEVICTABLE, MI_SWAPTOTAL, MI_SWAPFREE, MI_ZSWAP,
       MI_COUNT };
static const struct {
    const char *key;
    size_t len;
} meminfo_keys[MI_COUNT] = {
    {"MemTotal", 8}, {"MemFree", 7}, {"MemAvailable", 12}, {"Unevictable", 11},
    {"SwapTotal", 9}, {"SwapFree", 8}, {"Zswap", 5},
};

struct mm_handle {
    int meminfo_fd, vmstat_fd, psi_fd;
    int swaps_fd;           /* /proc/swaps: -1 if absent (then swap in use is assumed) */
    int cg_kind;
    int cg_usage_fd, cg_limit_fd, cg_stat_fd, cg_events_fd;
    char proc[PATH_MAX];
    char psi_path[PATH_MAX];
    char scope_dir[PATH_MAX]; /* the cgroup directory of a scope; "" for the host */
    uint64_t page_size;
    uint64_t ticks;
    struct mm_system slow;  /* vmstat / NVML / cgroup-event parts, refreshed per period */
    uint32_t mi_offs[MI_COUNT]; /* where each meminfo key's line started last time */
    struct mm_system last;  /* the last sample with its per-call fields zeroed (generation) */
    int32_t generation;
    int mi_known;           /* mi_offs holds all MI_COUNT keys */
    uint64_t stamp;
    int hint;               /* slot to check first (slot_find) */
    uint64_t call_start;    /* stamp before the current mm_processes call */
    int nslots;
    struct mm_slot *slots;  /* nslots of them; grown (never shrunk) by mm_processes */
    struct mm_slot scratch; /* for pids beyond MM_SLOTS_MAX in one call: opened, read, closed */
    void *nvml;
    nvml_shutdown_fn nvml_shutdown;
    nvml_count_fn nvml_count;
    nvml_handle_fn nvml_handle;
    nvml_mem2_fn nvml_mem2;
    nvml_mem1_fn nvml_mem1;
    nvml_name_fn nvml_name;
};

int mm_abi_version(void) { return MM_ABI_VERSION; }
const char *mm_platform(void) { return "linux"; }
double mm_slow_period(void) { return MM_SLOW_PERIOD; }

const char *mm_call_name(int32_t call)
{
    if (call < 0 || call >= CALL_COUNT)
        return "unknown";
    return call_names[call];
}

static double now_monotonic(void)
{
    struct timespec ts;
    if (clock_gettime(CLOCK_MONOTONIC, &ts) != 0)
        return 0.0;
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static int fail(struct mm_error *err, int call, int e)
{
    if (err) {
        err->err = e;
        err->call = call;
    }
    return -e;
}

/* ---------------------------------------------------------------------------------------
 * Scanner: works on (buf, len), never reads past len, accepts only complete lines.
 * A line that is cut off (no '\n') is ignored, so a truncated file yields missing values,
 * never a shortened number.
 */

/* Parse an unsigned decimal at *p (< end). Returns 0 and advances *p, or -1 on no digits or
   overflow past UINT64_MAX. */
static int scan_u64(const char **p, const char *end, uint64_t *out)
{
    const char *s = *p;
    uint64_t v = 0;
    if (s >= end || *s < '0' || *s > '9')
        return -1;
    while (s < end && *s >= '0' && *s <= '9') {
        uint64_t d = (uint64_t)(*s - '0');
        if (v > (UINT64_MAX - d) / 10)
            return -1;
        v = v * 10 + d;
        s++;
    }
    *p = s;
    *out = v;
    return 0;
}

/* Parse a non-negative fixed-point decimal like "12.34" (PSI averages). */
static int scan_decimal(const char **p, const char *end, double *out)
{
    uint64_t ip = 0;
    const char *s = *p;
    if (scan_u64(&s, end, &ip) != 0 || ip > (1ull << 40))
        return -1;
    double v = (double)ip;
    if (s < end && *s == '.') {
        double scale = 0.1;
        s++;
        if (s >= end || *s < '0' || *s > '9')
            return -1;
        while (s < end && *s >= '0' && *s <= '9') {
            v += (double)(*s - '0') * scale;
            scale /= 10.0;
            s++;
        }
    }
    *p = s;
    *out = v;
    return 0;
}

static const char *skip_blanks(const char *s, const char *end)
{
    while (s < end && (*s == ' ' || *s == '\t'))
        s++;
    return s;
}

/* Find the end of the line starting at s: the '\n', or NULL when the line is incomplete. */
static const char *line_end(const char *s, const char *end)
{
    const char *nl = memchr(s, '\n', (size_t)(end - s));
    return nl;
}

static int key_is(const char *s, const char *key_end, const char *key)
{
    size_t n = strlen(key);
    return (size_t)(key_end - s) == n && memcmp(s, key, n) == 0;
}

/* A "Key:   123 kB" line. unit_kb: whether the value must carry " kB" (and is scaled). */
static int scan_kv_kb(const char *s, const char *nl, uint64_t *out)
{
    uint64_t v;
    s = skip_blanks(s, nl);
    if (scan_u64(&s, nl, &v) != 0)
        return -1;
    s = skip_blanks(s, nl);
    if (nl - s >= 2 && s[0] == 'k' && s[1] == 'B') {
        s += 2;
        if (v > UINT64_MAX / 1024)
            return -1;
        v *= 1024;
    } else if (s != nl) {
        return -1;
    }
    if (skip_blanks(s, nl) != nl)
        return -1;
    *out = v;
    return 0;
}


/* Scan every line for the keys; offs (may be NULL) receives where each key's line starts. */
static unsigned meminfo_scan(const char *buf, size_t len, uint64_t *vals, uint32_t *offs)
{
    const char *s = buf, *end = buf + len, *nl;
    unsigned found = 0;
    for (; s < end && found != (1u << MI_COUNT) - 1 && (nl = line_end(s, end)) != NULL;
         s = nl + 1) {
        const char *colon = memchr(s, ':', (size_t)(nl - s));
        size_t klen;
        if (!colon)
            continue;
        klen = (size_t)(colon - s);
        for (int k = 0; k < MI_COUNT; k++) {
            uint64_t v;
            if (klen != meminfo_keys[k].len || (found & (1u << k)) ||
                memcmp(s, meminfo_keys[k].key, klen) != 0)
                continue;
            if (scan_kv_kb(colon + 1, nl, &v) == 0) {
                vals[k] = v;
                found |= 1u << k;
                if (offs)
                    offs[k] = (uint32_t)(s - buf);
            }
            break;
        }
    }
    return found;
}

/* The kernel prints meminfo with fixed-width numbers, so each key's line starts at the same
   offset call after call: check the key there and parse only those 7 lines (measured: 0.2 us
   of the 0.28 us full scan). Any mismatch falls back to the full scan, which re-learns. */
static unsigned meminfo_at(const char *buf, size_t len, uint64_t *vals, const uint32_t *offs)
{
    const char *end = buf + len;
    for (int k = 0; k < MI_COUNT; k++) {
        size_t off = offs[k], klen = meminfo_keys[k].len;
        const char *s = buf + off, *nl;
        if (off + klen + 1 > len || (off > 0 && buf[off - 1] != '\n') || s[klen] != ':' ||
            memcmp(s, meminfo_keys[k].key, klen) != 0 || (nl = line_end(s, end)) == NULL ||
            scan_kv_kb(s + klen + 1, nl, &vals[k]) != 0)
            return 0;
    }
    return (1u << MI_COUNT) - 1;
}

static void meminfo_store(const uint64_t *vals, unsigned found, struct mm_system *out)
{
#define TAKE(k, field, bit)              \
    if (found & (1u << (k))) {           \
        out->field = vals[k];            \
        out->have |= (bit);              \
    }
    TAKE(MI_TOTAL, total, MM_HAVE_TOTAL)
    TAKE(MI_AVAILABLE, available, MM_HAVE_AVAILABLE)
    TAKE(MI_FREE, free, MM_HAVE_FREE)
    TAKE(MI_UNEVICTABLE, wired, MM_HAVE_WIRED)
    TAKE(MI_ZSWAP, compressed, MM_HAVE_COMPRESSED)
#undef TAKE
    if ((found & (1u << MI_SWAPTOTAL)) && (found & (1u << MI_SWAPFREE)) &&
        vals[MI_SWAPFREE] <= vals[MI_SWAPTOTAL]) {
        out->swap_total = vals[MI_SWAPTOTAL];
        out->swap_used = vals[MI_SWAPTOTAL] - vals[MI_SWAPFREE];
        out->have |= MM_HAVE_SWAP;
    }
    /* A total smaller than one of its parts is a garbled file: keep nothing derived from it. */
    if ((out->have & MM_HAVE_TOTAL) &&
        (((out->have & MM_HAVE_AVAILABLE) && out->available > out->total) ||
         ((out->have & MM_HAVE_FREE) && out->free > out->total)))
        out->have &= ~(uint64_t)(MM_HAVE_TOTAL | MM_HAVE_AVAILABLE | MM_HAVE_FREE);
}

int mm_parse_meminfo(const char *buf, size_t len, struct mm_system *out)
{
    uint64_t vals[MI_COUNT];
    meminfo_store(vals, meminfo_scan(buf, len, vals, NULL), out);
    return 0;
}

/* "key value" lines (vmstat, cgroup memory.stat, memory.events, oom_control). */
static int scan_kv_plain(const char *s, const char *nl, const char **key_end, uint64_t *v)
{
    const char *sp = memchr(s, ' ', (size_t)(nl - s));
    if (!sp)
        return -1;
    *key_end = sp;
    sp = skip_blanks(sp, nl);
    if (scan_u64(&sp, nl, v) != 0 || skip_blanks(sp, nl) != nl)
        return -1;
    return 0;
}

/* Linux "page-outs" are memory signals only: pages the kernel evicted and then had to read
   back because they were still in use, workingset_refault_anon + workingset_refault_file
   (mm/workingset.c; one workingset_refault counter before 5.9), in pages. Not pgpgout: it
   counts every block written (KiB), so a plain fsynced write or a model download read as
   pressure (issue 14). Not pgsteal: it counts clean cache dropped to make room for such a
   write. A refault means the working set no longer fits: pressure by construction, the same
   events PSI's memory stall accounting is built on. pswpout (pages) is the swap-out rate. */
static int parse_vmstat_paged(const char *buf, size_t len, uint64_t page_size,
                              struct mm_system *out)
{
    const char *s = buf, *end = buf + len, *nl, *ke;
    uint64_t v, refaults = 0;
    int split = 0, single = 0;
    for (; s < end && (nl = line_end(s, end)) != NULL; s = nl + 1) {
        if (scan_kv_plain(s, nl, &ke, &v) != 0)
            continue;
        if ((key_is(s, ke, "workingset_refault_anon") ||
             key_is(s, ke, "workingset_refault_file")) && split < 2 &&
            v <= UINT64_MAX / 2 - refaults) {
            refaults = split ? refaults + v : v;
            split++;
        } else if (key_is(s, ke, "workingset_refault") && !single && !split) {
            refaults = v;
            single = 1;
        } else if (key_is(s, ke, "pswpout") && !(out->have & MM_HAVE_SWAPOUTS) &&
                   v <= UINT64_MAX / page_size) {
            out->swapouts = v * page_size;
            out->have |= MM_HAVE_SWAPOUTS;
        } else if (key_is(s, ke, "oom_kill") && !(out->have & MM_HAVE_OOM_KILLS)) {
            out->oom_kills = v;
            out->have |= MM_HAVE_OOM_KILLS;
        }
    }
    if ((split == 2 || (single && !split)) && refaults <= UINT64_MAX / page_size) {
        out->pageouts = refaults * page_size;
        out->have |= MM_HAVE_PAGEOUTS;
    }
    return 0;
}

int mm_parse_vmstat(const char *buf, size_t len, struct mm_system *out)
{
    long ps = sysconf(_SC_PAGESIZE);
    return parse_vmstat_paged(buf, len, ps > 0 ? (uint64_t)ps : 4096, out);
}

/* "some avg10=0.00 avg60=0.00 avg300=0.00 total=0" and the same for "full". */
static int parse_psi_line(const char *s, const char *nl, double *a10, double *a60,
                          uint64_t *total)
{
    static const char *const keys[4] = {"avg10=", "avg60=", "avg300=", "total="};
    double avg300;
    for (int i = 0; i < 4; i++) {
        size_t n = strlen(keys[i]);
        s = skip_blanks(s, nl);
        if ((size_t)(nl - s) < n || memcmp(s, keys[i], n) != 0)
            return -1;
        s += n;
        if (i == 3) {
            if (scan_u64(&s, nl, total) != 0)
                return -1;
        } else if (scan_decimal(&s, nl, i == 0 ? a10 : i == 1 ? a60 : &avg300) != 0) {
            return -1;
        }
    }
    if (skip_blanks(s, nl) != nl || *a10 > 100.0 || *a60 > 100.0 || avg300 > 100.0)
        return -1;
    return 0;
}

int mm_parse_psi(const char *buf, size_t len, struct mm_system *out)
{
    const char *s = buf, *end = buf + len, *nl;
    for (; s < end && (nl = line_end(s, end)) != NULL; s = nl + 1) {
        double a10, a60;
        uint64_t total;
        if (nl - s > 5 && memcmp(s, "some ", 5) == 0 && !(out->have & MM_HAVE_PSI_SOME)) {
            if (parse_psi_line(s + 5, nl, &a10, &a60, &total) == 0) {
                out->psi_some_avg10 = a10;
                out->psi_some_avg60 = a60;
                out->psi_some_total_us = total;
                out->have |= MM_HAVE_PSI_SOME;
            }
        } else if (nl - s > 5 && memcmp(s, "full ", 5) == 0 &&
                   !(out->have & MM_HAVE_PSI_FULL)) {
            if (parse_psi_line(s + 5, nl, &a10, &a60, &total) == 0) {
                out->psi_full_avg10 = a10;
                out->psi_full_avg60 = a60;
                out->psi_full_total_us = total;
                out->have |= MM_HAVE_PSI_FULL;
            }
        }
    }
    return 0;
}

/* statm: "size resident shared text lib data dt" in pages. */
int mm_parse_statm(const char *buf, size_t len, uint64_t page_size, struct mm_proc *out)
{
    const char *s = buf, *end = buf + len, *nl = line_end(buf, end);
    uint64_t f[3];
    if (!nl)
        return -EINVAL;
    for (int i = 0; i < 3; i++) {
        s = skip_blanks(s, nl);
        if (scan_u64(&s, nl, &f[i]) != 0 || (s != nl && *s != ' ' && *s != '\t'))
            return -EINVAL;
    }
    if (f[1] > UINT64_MAX / page_size)
        return -EINVAL;
    out->rss = f[1] * page_size;
    out->have |= MM_PHAVE_RSS;
    if (f[2] <= f[1]) {
        out->anon = (f[1] - f[2]) * page_size;
        out->have |= MM_PHAVE_ANON;
    }
    return 0;
}

int mm_parse_status(const char *buf, size_t len, struct mm_proc *out)
{
    const char *s = buf, *end = buf + len, *nl;
    uint64_t lck = 0, pin = 0;
    int have_lck = 0, have_pin = 0;
    for (; s < end && (nl = line_end(s, end)) != NULL; s = nl + 1) {
        const char *colon = memchr(s, ':', (size_t)(nl - s));
        uint64_t v;
        if (!colon || colon - s > 16 || scan_kv_kb(colon + 1, nl, &v) != 0)
            continue;
        if (key_is(s, colon, "VmSwap") && !(out->have & MM_PHAVE_SWAP)) {
            out->swap = v;
            out->have |= MM_PHAVE_SWAP;
        } else if (key_is(s, colon, "VmHWM") && !(out->have & MM_PHAVE_PEAK)) {
            out->peak = v;
            out->have |= MM_PHAVE_PEAK;
        } else if (key_is(s, colon, "VmLck") && !have_lck) {
            lck = v;
            have_lck = 1;
        } else if (key_is(s, colon, "VmPin") && !have_pin) {
            pin = v;
            have_pin = 1;
        }
    }
    if (have_lck && have_pin && lck <= UINT64_MAX - pin) {
        out->wired = lck + pin;
        out->have |= MM_PHAVE_WIRED;
    }
    return 0;
}

/* Start time is field 22 of /proc/PID/stat, counted after the *last* ')' so that a comm
   such as "foo) Z 1 (" cannot forge fields (earlyoom parse_proc_pid_stat_buf). */
int mm_parse_stat_start(const char *buf, size_t len, uint64_t ticks_per_second,
                        struct mm_proc *out)
{
    const char *end = buf + len, *paren = NULL, *s;
    uint64_t v = 0;
    for (s = buf; s < end; s++)
        if (*s == ')')
            paren = s;
    if (!paren || ticks_per_second == 0)
        return -EINVAL;
    s = paren + 1;
    /* fields 3..22: state is field 3; starttime the 20th after ')' */
    for (int field = 3; field <= 22; field++) {
        if (s >= end || *s != ' ')
            return -EINVAL;
        s++;
        if (field < 22) {
            const char *t = s;
            while (s < end && *s != ' ' && *s != '\n')
                s++;
            if (s == t)
                return -EINVAL;
        } else if (scan_u64(&s, end, &v) != 0) {
            return -EINVAL;
        }
    }
    if (s >= end || (*s != ' ' && *s != '\n'))
        return -EINVAL;
    out->start_time = (double)(v / ticks_per_second) +
                      (double)(v % ticks_per_second) / (double)ticks_per_second;
    out->have |= MM_PHAVE_START;
    return 0;
}

/* ---------------------------------------------------------------------------------------
 * I/O helpers
 */

/* pread the whole (small) file at offset 0 into buf; returns length or -errno.
   A file that fills the buffer is reported as -EFBIG rather than parsed short. */
static ssize_t read_fd(int fd, char *buf, size_t size)
{
    ssize_t n;
    do {
        n = pread(fd, buf, size, 0);
    } while (n < 0 && errno == EINTR);
    if (n < 0)
        return -errno;
    if ((size_t)n == size)
        return -EFBIG;
    return n;
}

static int open_at(int dirfd, const char *path)
{
    int fd;
    do {
        fd = openat(dirfd, path, O_RDONLY | O_CLOEXEC);
    } while (fd < 0 && errno == EINTR);
    return fd;
}

static ssize_t read_path_at(int dirfd, const char *path, char *buf, size_t size)
{
    int fd = open_at(dirfd, path);
    ssize_t n;
    if (fd < 0)
        return -errno;
    n = read_fd(fd, buf, size);
    close(fd);
    return n;
}

static void close_fd(int *fd)
{
    if (*fd >= 0) {
        close(*fd);
        *fd = -1;
    }
}

static int join(char *dst, size_t size, const char *a, const char *b)
{
    int n = snprintf(dst, size, "%s/%s", a, b);
    return (n < 0 || (size_t)n >= size) ? -ENAMETOOLONG : 0;
}

/* ---------------------------------------------------------------------------------------
 * Handle
 */

static void nvml_load(mm_handle *h)
{
    nvml_init_fn init;
    h->nvml = dlopen("libnvidia-ml.so.1", RTLD_NOW | RTLD_LOCAL);
    if (!h->nvml)
        return;
    init = (nvml_init_fn)dlsym(h->nvml, "nvmlInit_v2");
    h->nvml_shutdown = (nvml_shutdown_fn)dlsym(h->nvml, "nvmlShutdown");
    h->nvml_count = (nvml_count_fn)dlsym(h->nvml, "nvmlDeviceGetCount_v2");
    h->nvml_handle = (nvml_handle_fn)dlsym(h->nvml, "nvmlDeviceGetHandleByIndex_v2");
    h->nvml_mem2 = (nvml_mem2_fn)dlsym(h->nvml, "nvmlDeviceGetMemoryInfo_v2");
    h->nvml_mem1 = (nvml_mem1_fn)dlsym(h->nvml, "nvmlDeviceGetMemoryInfo");
    h->nvml_name = (nvml_name_fn)dlsym(h->nvml, "nvmlDeviceGetName");
    if (!init || !h->nvml_shutdown || !h->nvml_count || !h->nvml_handle ||
        (!h->nvml_mem2 && !h->nvml_mem1) || init() != 0) {
        dlclose(h->nvml);
        h->nvml = NULL;
    }
}

static int open_scope(mm_handle *h, const char *root, const char *scope, struct mm_error *err)
{
    char dir[PATH_MAX], path[PATH_MAX];
    int dfd, rc;
    if (snprintf(dir, sizeof dir, "%s/%s", root, scope) >= (int)sizeof dir)
        return fail(err, CALL_OPEN_SCOPE, ENAMETOOLONG);
    dfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dfd < 0)
        return fail(err, CALL_OPEN_SCOPE, errno);
    memcpy(h->scope_dir, dir, sizeof dir);
    h->cg_usage_fd = open_at(dfd, "memory.current");
    if (h->cg_usage_fd >= 0) {
        h->cg_kind = CG_V2;
        h->cg_limit_fd = open_at(dfd, "memory.max");
        h->cg_events_fd = open_at(dfd, "memory.events");
        rc = join(h->psi_path, sizeof h->psi_path, dir, "memory.pressure");
    } else {
        /* cgroup v1 memory controller; on a hybrid host its PSI lives in the v2 tree under
           the same relative path (.../memory/X -> .../unified/X), python-ecosystem.md §6. */
        const char *m = strstr(dir, "/memory/");
        h->cg_usage_fd = open_at(dfd, "memory.usage_in_bytes");
        if (h->cg_usage_fd < 0) {
            int e = errno;
            close(dfd);
            return fail(err, CALL_OPEN_SCOPE, e == ENOENT ? ENOTSUP : e);
        }
        h->cg_kind = CG_V1;
        h->cg_limit_fd = open_at(dfd, "memory.limit_in_bytes");
        h->cg_events_fd = open_at(dfd, "memory.oom_control");
        rc = 0;
        h->psi_path[0] = '\0';
        if (m && snprintf(path, sizeof path, "%.*s/unified/%s/memory.pressure",
                          (int)(m - dir), dir, m + strlen("/memory/")) < (int)sizeof path)
            memcpy(h->psi_path, path, sizeof path);
    }
    h->cg_stat_fd = open_at(dfd, "memory.stat");
    close(dfd);
    if (rc != 0)
        return fail(err, CALL_OPEN_SCOPE, -rc);
    if (h->cg_limit_fd < 0 || h->cg_stat_fd < 0)
        return fail(err, CALL_OPEN_SCOPE, errno ? errno : ENOENT);
    return 0;
}

int mm_open(const char *root, const char *scope, mm_handle **out, struct mm_error *err)
{
    mm_handle *h;
    char path[PATH_MAX];
    long ps, tck;
    int rc;

    *out = NULL;
    if (!root || !*root)
        root = "/";
    h = calloc(1, sizeof *h);
    if (!h)
        return fail(err, CALL_ALLOC, ENOMEM);
    h->meminfo_fd = h->vmstat_fd = h->psi_fd = h->swaps_fd = -1;
    h->cg_usage_fd = h->cg_limit_fd = h->cg_stat_fd = h->cg_events_fd = -1;
    h->slots = calloc(MM_SLOTS, sizeof *h->slots);
    if (!h->slots) {
        free(h);
        return fail(err, CALL_ALLOC, ENOMEM);
    }
    h->nslots = MM_SLOTS;
    for (int i = 0; i < MM_SLOTS; i++)
        h->slots[i].dir_fd = h->slots[i].statm_fd = -1;
    h->scratch.dir_fd = h->scratch.statm_fd = -1;
    ps = sysconf(_SC_PAGESIZE);
    tck = sysconf(_SC_CLK_TCK);
    h->page_size = ps > 0 ? (uint64_t)ps : 4096;
    h->ticks = tck > 0 ? (uint64_t)tck : 100;
    h->slow.slow_at = -1e18;

    if ((rc = join(h->proc, sizeof h->proc, root, "proc")) != 0) {
        rc = fail(err, CALL_OPEN_ROOT, -rc);
        goto error;
    }
    if ((rc = join(path, sizeof path, h->proc, "meminfo")) != 0) {
        rc = fail(err, CALL_OPEN_MEMINFO, -rc);
        goto error;
    }
    {
        int pfd = open(h->proc, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
        if (pfd < 0) {
            rc = fail(err, CALL_OPEN_ROOT, errno);
            goto error;
        }
        close(pfd);
    }
    /* Every file is optional (a kernel or a captured tree may lack it): what is missing is
       reported as None, never as an error or a 0. Other errors are real. */
    h->meminfo_fd = open(path, O_RDONLY | O_CLOEXEC);
    if (h->meminfo_fd < 0 && errno != ENOENT) {
        rc = fail(err, CALL_OPEN_MEMINFO, errno);
        goto error;
    }
    /* vmstat and PSI are optional: a kernel without them leaves their values None. */
    if (join(path, sizeof path, h->proc, "vmstat") == 0)
        h->vmstat_fd = open(path, O_RDONLY | O_CLOEXEC);
    if (join(path, sizeof path, h->proc, "swaps") == 0)
        h->swaps_fd = open(path, O_RDONLY | O_CLOEXEC);
    if (scope && *scope) {
        if ((rc = open_scope(h, root, scope, err)) != 0)
            goto error;
    } else if (join(h->psi_path, sizeof h->psi_path, h->proc, "pressure/memory") != 0) {
        h->psi_path[0] = '\0';
    }
    if (h->psi_path[0])
        h->psi_fd = open(h->psi_path, O_RDONLY | O_CLOEXEC);
    nvml_load(h);
    *out = h;
    return 0;
error:
    mm_close(h);
    return rc;
}

static void slot_clear(struct mm_slot *s)
{
    close_fd(&s->dir_fd);
    close_fd(&s->statm_fd);
    memset(&s->cached, 0, sizeof s->cached);
    s->pid = 0;
}

void mm_close(mm_handle *h)
{
    if (!h)
        return;
    close_fd(&h->meminfo_fd);
    close_fd(&h->vmstat_fd);
    close_fd(&h->psi_fd);
    close_fd(&h->swaps_fd);
    close_fd(&h->cg_usage_fd);
    close_fd(&h->cg_limit_fd);
    close_fd(&h->cg_stat_fd);
    close_fd(&h->cg_events_fd);
    for (int i = 0; i < h->nslots; i++)
        slot_clear(&h->slots[i]);
    free(h->slots);
    slot_clear(&h->scratch);
    if (h->nvml) {
        h->nvml_shutdown();
        dlclose(h->nvml);
    }
    free(h);
}

uint64_t mm_capabilities(mm_handle *h)
{
    uint64_t caps = 0;
    if (h->psi_fd >= 0)
        caps |= MM_CAP_PSI;
    /* PSI triggers, v1 notifications, or the watch over meminfo (mm_events_open) */
    if (h->psi_fd >= 0 || h->cg_kind == CG_V1 || h->meminfo_fd >= 0)
        caps |= MM_CAP_EVENTS;
    if (h->cg_kind != CG_NONE)
        caps |= MM_CAP_CGROUP;
    if (h->nvml)
        caps |= MM_CAP_GPU;
    return caps;
}

/* ---------------------------------------------------------------------------------------
 * System
 */

static int read_u64_fd(int fd, uint64_t *v, int *is_max)
{
    char buf[64];
    const char *s = buf;
    ssize_t n = read_fd(fd, buf, sizeof buf);
    if (n < 0)
        return (int)n;
    *is_max = 0;
    if (n >= 4 && memcmp(buf, "max\n", 4) == 0) {
        *is_max = 1;
        return 0;
    }
    if (scan_u64(&s, buf + n, v) != 0 || s >= buf + n || *s != '\n')
        return -EINVAL;
    return 0;
}

/* Keys of a "key value" file, into caller-provided slots; missing keys stay unset. */
static void scan_keys(const char *buf, size_t len, const char *const *keys, uint64_t *vals,
                      int *found, int nkeys)
{
    const char *s = buf, *end = buf + len, *nl, *ke;
    uint64_t v;
    for (; s < end && (nl = line_end(s, end)) != NULL; s = nl + 1) {
        if (scan_kv_plain(s, nl, &ke, &v) != 0)
            continue;
        for (int i = 0; i < nkeys; i++)
            if (!found[i] && key_is(s, ke, keys[i])) {
                vals[i] = v;
                found[i] = 1;
            }
    }
}

/* Scope figures: the cgroup's own usage against its limit, bounded by the host. */
static int sample_cgroup(mm_handle *h, const struct mm_system *host, struct mm_system *out,
                         struct mm_error *err)
{
    static const char *const v2_keys[] = {"inactive_file", "unevictable", "zswap"};
    static const char *const v1_keys[] = {"total_inactive_file", "total_unevictable"};
    char buf[MM_BUF];
    uint64_t usage, limit = 0, vals[3] = {0, 0, 0};
    int is_max, found[3] = {0, 0, 0};
    ssize_t n;
    int rc;

    if ((rc = read_u64_fd(h->cg_usage_fd, &usage, &is_max)) != 0 || is_max)
        return fail(err, CALL_READ_CGROUP, rc ? -rc : EINVAL);
    if ((rc = read_u64_fd(h->cg_limit_fd, &limit, &is_max)) != 0)
        return fail(err, CALL_READ_CGROUP, -rc);
    n = read_fd(h->cg_stat_fd, buf, sizeof buf);
    if (n < 0)
        return fail(err, CALL_READ_CGROUP, (int)-n);
    if (h->cg_kind == CG_V2)
        scan_keys(buf, (size_t)n, v2_keys, vals, found, 3);
    else
        scan_keys(buf, (size_t)n, v1_keys, vals, found, 2);

    out->have = 0;
    out->oom_kills = h->slow.oom_kills;
    out->have |= h->slow.have & MM_HAVE_OOM_KILLS;
    if (found[1]) {
        out->wired = vals[1];
        out->have |= MM_HAVE_WIRED;
    }
    if (h->cg_kind == CG_V2 && found[2]) {
        out->compressed = vals[2];
        out->have |= MM_HAVE_COMPRESSED;
    }
    if (!(host->have & MM_HAVE_TOTAL))
        return 0;
    /* v1 reports "no limit" as a huge page-rounded number; anything >= RAM is no limit. */
    if (is_max || limit >= host->total) {
        out->total = host->total;
        if (host->have & MM_HAVE_AVAILABLE) {
            out->available = host->available;
            out->have |= MM_HAVE_AVAILABLE;
        }
    } else {
        uint64_t reclaimable = found[0] ? vals[0] : 0;
        uint64_t working = usage > reclaimable ? usage - reclaimable : 0;
        uint64_t avail = working < limit ? limit - working : 0;
        out->total = limit;
        out->free = usage < limit ? limit - usage : 0;
        out->have |= MM_HAVE_FREE | MM_HAVE_LIMIT;
        if (host->have & MM_HAVE_AVAILABLE) {
            out->available = avail < host->available ? avail : host->available;
            out->have |= MM_HAVE_AVAILABLE;
        }
    }
    out->have |= MM_HAVE_TOTAL;
    return 0;
}

static void refresh_slow(mm_handle *h, double now)
{
    char buf[MM_BIGBUF];
    struct mm_system s;
    memset(&s, 0, sizeof s);
    if (h->vmstat_fd >= 0) {
        ssize_t n = read_fd(h->vmstat_fd, buf, sizeof buf);
        if (n > 0)
            parse_vmstat_paged(buf, (size_t)n, h->page_size, &s);
    }
    if (h->cg_kind != CG_NONE) {
        /* The host's counters do not describe a cgroup: keep only the cgroup's oom kills. */
        s.have &= ~(uint64_t)(MM_HAVE_PAGEOUTS | MM_HAVE_SWAPOUTS | MM_HAVE_OOM_KILLS);
        if (h->cg_events_fd >= 0) {
            static const char *const keys[] = {"oom_kill"};
            uint64_t v = 0;
            int found = 0;
            ssize_t n = read_fd(h->cg_events_fd, buf, sizeof buf);
            if (n > 0)
                scan_keys(buf, (size_t)n, keys, &v, &found, 1);
            if (found) {
                s.oom_kills = v;
                s.have |= MM_HAVE_OOM_KILLS;
            }
        }
    }
    if (h->nvml) {
        struct mm_gpu g;
        if (mm_gpu(h, 0, &g, NULL) == 0) {
            if (g.have & MM_GHAVE_LIMIT) {
                s.gpu_limit = g.limit;
                s.have |= MM_HAVE_GPU_LIMIT;
            }
            if (g.have & MM_GHAVE_USED) {
                s.gpu_used = g.used;
                s.have |= MM_HAVE_GPU_USED;
            }
        }
    }
    s.slow_at = now;
    h->slow = s;
}

/* Most of a sample repeats call after call: only available, free and the time always move.
   The generation changes when anything else does, so the Python layer can reuse the objects
   of the last record for the rest instead of building ~15 new ones per call (measured:
   ~0.6 us of a 3.35 us call). memset keeps the padding-free struct comparable with memcmp. */
static void stamp_generation(mm_handle *h, struct mm_system *out)
{
    struct mm_system key = *out;
    key.available = key.free = 0;
    key.sampled_at = 0.0;
    key.generation = 0;
    if (h->generation == 0 || memcmp(&key, &h->last, sizeof key) != 0) {
        h->last = key;
        if (++h->generation <= 0)
            h->generation = 1; /* wrapped: 0 means "not tracked" */
    }
    out->generation = h->generation;
}

static void parse_meminfo_cached(mm_handle *h, const char *buf, size_t n, struct mm_system *out)
{
    uint64_t vals[MI_COUNT];
    unsigned found = h->mi_known ? meminfo_at(buf, n, vals, h->mi_offs) : 0;
    if (!found) {
        found = meminfo_scan(buf, n, vals, h->mi_offs);
        h->mi_known = found == (1u << MI_COUNT) - 1;
    }
    meminfo_store(vals, found, out);
}

int mm_system(mm_handle *h, struct mm_system *out, struct mm_error *err)
{
    char buf[MM_BUF];
    ssize_t n;
    double now = now_monotonic();
    const uint64_t slow_bits = MM_HAVE_PAGEOUTS | MM_HAVE_SWAPOUTS | MM_HAVE_OOM_KILLS |
                               MM_HAVE_GPU_LIMIT | MM_HAVE_GPU_USED;

    memset(out, 0, sizeof *out);
    if (h->meminfo_fd >= 0) {
        n = read_fd(h->meminfo_fd, buf, sizeof buf);
        if (n < 0)
            return fail(err, CALL_READ_MEMINFO, (int)-n);
        parse_meminfo_cached(h, buf, (size_t)n, out);
    }
    if (now - h->slow.slow_at >= MM_SLOW_PERIOD)
        refresh_slow(h, now);
    if (h->cg_kind != CG_NONE) {
        struct mm_system host = *out;
        int rc = sample_cgroup(h, &host, out, err);
        if (rc != 0)
            return rc;
    }
    out->have |= h->slow.have & slow_bits;
    out->pageouts = h->slow.pageouts;
    out->swapouts = h->slow.swapouts;
    out->oom_kills = h->slow.oom_kills;
    out->gpu_limit = h->slow.gpu_limit;
    out->gpu_used = h->slow.gpu_used;
    out->slow_at = h->slow.slow_at;
    if (h->psi_fd >= 0) {
        n = read_fd(h->psi_fd, buf, sizeof buf);
        if (n > 0)
            mm_parse_psi(buf, (size_t)n, out);
    }
    out->sampled_at = now;
    stamp_generation(h, out);
    return 0;
}

/* ---------------------------------------------------------------------------------------
 * Processes
 */

/* Callers ask for the same pids in the same order tick after tick, and slots are taken in
   order, so the slot after the last one found is checked first: a batch of n pids costs n
   compares instead of n * nslots (measured: 64 pids, 10 us less per call). */
static struct mm_slot *slot_find(mm_handle *h, int32_t pid)
{
    int hint = h->hint;
    if (h->slots[hint].pid == pid) {
        h->hint = (hint + 1) % h->nslots;
        return &h->slots[hint];
    }
    for (int i = 0; i < h->nslots; i++)
        if (h->slots[i].pid == pid) {
            h->hint = (i + 1) % h->nslots;
            return &h->slots[i];
        }
    return NULL;
}

static struct mm_slot *slot_take(mm_handle *h)
{
    struct mm_slot *lru = &h->slots[0];
    for (int i = 0; i < h->nslots; i++) {
        if (h->slots[i].pid == 0) {
            h->hint = (i + 1) % h->nslots;
            return &h->slots[i];
        }
        if (h->slots[i].used < lru->used)
            lru = &h->slots[i];
    }
    /* Every slot was used by this very call: the batch is larger than the table. Evicting
       the least recently used one would evict, tick after tick, exactly the slot needed next
       (the same pids in the same order), so every pid would be reopened each call (measured:
       0.56 us per pid at 512, 7.6 us at 513). Keep the table, and read the excess through a
       scratch slot that is closed after use. */
    if (lru->used > h->call_start) {
        slot_clear(&h->scratch);
        return &h->scratch;
    }
    slot_clear(lru);
    return lru;
}

static int proc_error(struct mm_proc *p, int call, int e)
{
    /* A /proc/PID that vanished (ENOENT on open, ESRCH on read) is a process that is gone. */
    p->err = (e == ENOENT) ? ESRCH : e;
    p->call = call;
    p->have = 0;
    return -p->err;
}

/* 1 if any swap area in /proc/swaps has pages in use (its 4th column, after a header line),
   0 if none does. The kernel escapes blanks in file names (seq_file_path), so columns split on
   blanks. A line that does not parse counts as in use: the caller then reads VmSwap. */
static int swaps_in_use(const char *buf, size_t len)
{
    const char *s = buf, *end = buf + len, *nl = line_end(s, end);
    if (!nl)
        return 1;
    for (s = nl + 1; s < end && (nl = line_end(s, end)) != NULL; s = nl + 1) {
        const char *p = s;
        uint64_t used;
        for (int col = 0; col < 3; col++) {
            while (p < nl && *p != ' ' && *p != '\t')
                p++;
            p = skip_blanks(p, nl);
        }
        if (scan_u64(&p, nl, &used) != 0 || used > 0)
            return 1;
    }
    return 0;
}

/* Whether per-process swap must be read from status: once per call, ~1 us (no swap areas:
   the header line alone). Unknown (no /proc/swaps, read error) means yes. */
static int host_swap_in_use(mm_handle *h)
{
    char buf[MM_BUF];
    ssize_t n;
    if (h->swaps_fd < 0)
        return 1;
    n = read_fd(h->swaps_fd, buf, sizeof buf);
    if (n <= 0 || (size_t)n >= sizeof buf)
        return 1;
    return swaps_in_use(buf, (size_t)n);
}

static int read_detail(struct mm_slot *s, double now)
{
    char buf[MM_BUF];
    struct mm_proc d;
    ssize_t n = read_path_at(s->dir_fd, "status", buf, sizeof buf);
    if (n < 0)
        return (int)n;
    memset(&d, 0, sizeof d);
    mm_parse_status(buf, (size_t)n, &d);
    s->cached.have = (s->cached.have & MM_PHAVE_START) | d.have;
    s->cached.swap = d.swap;
    s->cached.wired = d.wired;
    s->cached.peak = d.peak;
    s->cached.detail_at = now;
    s->detail_due = now + MM_DETAIL_PERIOD * (0.5 + (double)((uint32_t)s->pid % 16u) / 16.0);
    return 0;
}

/* Open a new slot for pid: the directory fd pins the process, so statm, stat and status
   opened through it all describe one process even if the pid is reused meanwhile. */
static int slot_open(mm_handle *h, struct mm_slot *s, int32_t pid, struct mm_proc *p,
                     double now)
{
    char buf[1024];
    ssize_t n;
    int rc;
    if (snprintf(buf, sizeof buf, "%s/%d", h->proc, (int)pid) >= (int)sizeof buf)
        return proc_error(p, CALL_OPEN_PROC, ENAMETOOLONG);
    s->dir_fd = open(buf, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (s->dir_fd < 0)
        return proc_error(p, CALL_OPEN_PROC, errno);
    s->statm_fd = open_at(s->dir_fd, "statm");
    if (s->statm_fd < 0)
        return proc_error(p, CALL_OPEN_STATM, errno);
    n = read_path_at(s->dir_fd, "stat", buf, sizeof buf);
    if (n < 0)
        return proc_error(p, CALL_READ_STAT, (int)-n);
    memset(&s->cached, 0, sizeof s->cached);
    if (mm_parse_stat_start(buf, (size_t)n, h->ticks, &s->cached) != 0)
        return proc_error(p, CALL_READ_STAT, EINVAL);
    s->pid = pid;
    if ((rc = read_detail(s, now)) != 0) {
        s->pid = 0;
        return proc_error(p, CALL_READ_STATUS, -rc);
    }
    return 0;
}

/* Out of fds: close the least recently used open slot, preferring one this call has not used
   (closing one it has used costs a reopen on the next call, but keeps every result whole).
   0 if no slot is open. */
static int slot_release_lru(mm_handle *h)
{
    struct mm_slot *lru = NULL;
    for (int i = 0; i < h->nslots; i++)
        if (h->slots[i].pid != 0 && (!lru || h->slots[i].used < lru->used))
            lru = &h->slots[i];
    if (!lru)
        return 0;
    slot_clear(lru);
    return 1;
}

/* Room for n pids (up to MM_SLOTS_MAX), so a batch never cycles through a table smaller than
   itself. Failure to grow is not an error: the excess goes through the scratch slot. */
static void slots_grow(mm_handle *h, size_t n)
{
    size_t want = (size_t)h->nslots;
    struct mm_slot *grown;
    while (want < n && want < MM_SLOTS_MAX)
        want *= 2;
    if (want > MM_SLOTS_MAX)
        want = MM_SLOTS_MAX;
    if (want <= (size_t)h->nslots)
        return;
    grown = realloc(h->slots, want * sizeof *grown);
    if (!grown)
        return;
    for (size_t i = (size_t)h->nslots; i < want; i++) {
        memset(&grown[i], 0, sizeof grown[i]);
        grown[i].dir_fd = grown[i].statm_fd = -1;
    }
    h->slots = grown;
    h->nslots = (int)want;
}

/* status is due when its period has passed, or (swap in use) when VmSwap is a period old. */
static int status_due(const struct mm_slot *s, double now, int swap_in_use)
{
    return now >= s->detail_due ||
           (swap_in_use && now - s->cached.detail_at >= MM_SLOW_PERIOD);
}

static int sample_one(mm_handle *h, int32_t pid, struct mm_proc *p, double now, int swap_in_use)
{
    char buf[256];
    struct mm_slot *s;
    ssize_t n;
    int attempt, rc, fresh;

    memset(p, 0, sizeof *p);
    p->pid = pid;
    if (pid <= 0)
        return proc_error(p, CALL_OPEN_PROC, ESRCH);
    for (attempt = 0; attempt < 2; attempt++) {
        s = slot_find(h, pid);
        if (!s) {
            s = slot_take(h);
            if ((rc = slot_open(h, s, pid, p, now)) != 0) {
                slot_clear(s);
                /* EMFILE: give back a cached slot's fds and try once more */
                if (rc == -EMFILE && attempt == 0 && slot_release_lru(h)) {
                    continue;
                }
                return rc;
            }
        }
        n = read_fd(s->statm_fd, buf, sizeof buf);
        if (n == -ESRCH) {
            /* The process this slot pinned is gone; the pid may name a new one. */
            slot_clear(s);
            continue;
        }
        if (n < 0) {
            slot_clear(s);
            return proc_error(p, CALL_READ_STATM, (int)-n);
        }
        fresh = s->cached.detail_at == now;
        if (!fresh && status_due(s, now, swap_in_use)) {
            if ((rc = read_detail(s, now)) != 0) {
                slot_clear(s);
                if (rc == -ESRCH)
                    continue;
                return proc_error(p, CALL_READ_STATUS, -rc);
            }
            fresh = 1;
        }
        s->used = ++h->stamp;
        *p = s->cached;
        p->pid = pid;
        if (!swap_in_use) {
            /* no swap area holds a page, so no process has any swapped out */
            p->swap = 0;
            p->have |= MM_PHAVE_SWAP;
        }
        if (mm_parse_statm(buf, (size_t)n, h->page_size, p) != 0) {
            if (s == &h->scratch)
                slot_clear(s);
            return proc_error(p, CALL_READ_STATM, EINVAL);
        }
        if (!fresh && (p->have & MM_PHAVE_PEAK) && (p->have & MM_PHAVE_RSS) && p->rss > p->peak)
            p->peak = p->rss; /* the high-water mark since status was read */
        if ((p->have & MM_PHAVE_ANON) && (p->have & MM_PHAVE_SWAP) &&
            p->anon <= UINT64_MAX - p->swap) {
            p->footprint = p->anon + p->swap;
            p->have |= MM_PHAVE_FOOTPRINT;
        }
        if (s == &h->scratch)
            slot_clear(s);
        return 0;
    }
    return proc_error(p, CALL_OPEN_PROC, ESRCH);
}

int mm_processes(mm_handle *h, const int32_t *pids, size_t n, struct mm_proc *out)
{
    double now = now_monotonic();
    int incomplete = 0, swap_in_use;
    if (n == 0)
        return 0;
    swap_in_use = host_swap_in_use(h);
    if (n > (size_t)h->nslots)
        slots_grow(h, n);
    h->call_start = h->stamp;
    for (size_t i = 0; i < n; i++) {
        (void)sample_one(h, pids[i], &out[i], now, swap_in_use);
        out[i].sampled_at = now;
        if (out[i].err || out[i].have != MM_PHAVE_ALL)
            incomplete++;
    }
    return incomplete;
}

/* ---------------------------------------------------------------------------------------
 * GPU (NVML)
 */

int mm_gpu_count(mm_handle *h, uint32_t *count)
{
    unsigned int c = 0;
    *count = 0;
    if (!h->nvml)
        return -ENOTSUP;
    if (h->nvml_count(&c) != 0)
        return -EIO;
    *count = c;
    return 0;
}

int mm_gpu(mm_handle *h, uint32_t index, struct mm_gpu *out, struct mm_error *err)
{
    nvml_device dev = NULL;
    memset(out, 0, sizeof *out);
    if (!h->nvml)
        return fail(err, CALL_NVML_INIT, ENOTSUP);
    if (h->nvml_handle(index, &dev) != 0)
        return fail(err, CALL_NVML_DEVICE, ENODEV);
    if (h->nvml_mem2) {
        nvml_memory_v2 m;
        memset(&m, 0, sizeof m);
        m.version = NVML_MEMORY_V2;
        if (h->nvml_mem2(dev, &m) != 0)
            return fail(err, CALL_NVML_MEMORY, EIO);
        out->limit = m.total;
        out->used = m.used;
    } else {
        nvml_memory_v1 m;
        if (h->nvml_mem1(dev, &m) != 0)
            return fail(err, CALL_NVML_MEMORY, EIO);
        out->limit = m.total;
        out->used = m.used;  /* v1: used includes reserved (reference §7.5) */
    }
    out->have = MM_GHAVE_LIMIT | MM_GHAVE_USED | MM_GHAVE_UNIFIED;
    out->unified = 0;
    if (h->nvml_name && h->nvml_name(dev, out->name, sizeof out->name) != 0)
        out->name[0] = '\0';
    out->name[sizeof out->name - 1] = '\0';
    return 0;
}

/* ---------------------------------------------------------------------------------------
 * Pressure events: every wake-up source the scope has, behind one readable pipe.
 *
 * PSI signals POLLPRI, which selectors cannot wait for, and polling the trigger clears it
 * (psi_trigger_poll's cmpxchg), so an epoll fd in between would lose the level. A small thread
 * polls the sources and writes one level byte per event into a non-blocking pipe: the same
 * shape as the macOS dispatch source. It never calls Python. Sources (MM_SRC_*):
 *
 *  - PSI triggers on the scope's pressure file (host, cgroup v2, and v1 where the hybrid
 *    unified tree has the group);
 *  - cgroup v1: memory.pressure_level "medium" and "critical" (vmpressure: the share of
 *    scanned pages that reclaim failed to free), and, once armed, memory.usage_in_bytes
 *    thresholds, each registered through cgroup.event_control with its own eventfd; the
 *    kernel checks thresholds as pages are charged, so a fast ramp is seen as it crosses;
 *  - host and cgroup v2 have no kernel notification for available memory (MemAvailable is
 *    computed on read; memory.events reports only high/max/oom, i.e. too late), so the
 *    thread reads available itself at a period that follows the headroom (the watch).
 */

#include <poll.h>
#include <pthread.h>
#include <sys/eventfd.h>

#define MM_EVENT_GONE 0xff
/* The watch assumes memory can fall at least this fast before it has seen a fall: a
   process touching fresh anonymous pages on the reference machine does ~2 GiB/s (measured
   with benchmarks/race.py's grower), so half of that keeps the first period honest. */
#define MM_WATCH_PRIOR_RATE (1024.0 * 1024 * 1024)

enum { EV_SOME, EV_FULL, EV_V1_MEDIUM, EV_V1_CRITICAL, EV_V1_WARN, EV_V1_CRIT, EV_STOP,
       EV_NFDS };
static const unsigned char ev_level[EV_NFDS] = {
    MM_LEVEL_WARNING, MM_LEVEL_CRITICAL, MM_LEVEL_WARNING, MM_LEVEL_CRITICAL,
    MM_LEVEL_NORMAL, MM_LEVEL_NORMAL, 0};

enum { WATCH_NONE, WATCH_MEMINFO, WATCH_V2 };

struct mm_events {
    int fds[EV_NFDS];     /* -1 where absent; EV_STOP: the stop pipe's read end */
    int stop_w;
    int pipe_r, pipe_w;   /* level bytes for the reader */
    int cg_kind;
    int scope_dfd;        /* the cgroup directory (v1, v2), for arming */
    int control_fd;       /* v1 cgroup.event_control */
    int v1_level_fd, v1_usage_fd;
    int meminfo_fd;       /* host meminfo (the watch of the host, or of an unlimited group) */
    uint64_t host_total;
    /* the watch */
    int watch;            /* WATCH_* */
    int reader_paced;     /* the reader polls the watch (mm_events_watch), not the thread */
    int watch_fd;         /* meminfo, or v2 memory.current */
    uint64_t watch_limit; /* v2: the group's limit */
    uint64_t warn, crit;
    double min_period, max_period, period, max_rate, last_t;
    uint64_t last_v;
    int zone;             /* 0 above warning, 1 below it, 2 below critical; -1 unknown */
    uint64_t polls;
    uint32_t sources;
    int32_t psi_err;
    pthread_t thread;
    int started;
};

static int psi_trigger(const char *path, const char *kind, uint32_t stall_us,
                       uint32_t window_us, int *fd_out)
{
    char msg[64];
    int fd, n;
    ssize_t w;
    *fd_out = -1;
    fd = open(path, O_RDWR | O_NONBLOCK | O_CLOEXEC);
    if (fd < 0)
        return -errno;
    /* The kernel overwrites the last byte written with NUL: end with '\n' (reference §6.2).
       Without CAP_SYS_RESOURCE the window must be a multiple of 2 s, else EINVAL. */
    n = snprintf(msg, sizeof msg, "%s %u %u\n", kind, stall_us, window_us);
    do {
        w = write(fd, msg, (size_t)n);
    } while (w < 0 && errno == EINTR);
    if (w < 0) {
        int e = errno;
        close(fd);
        return -e;
    }
    *fd_out = fd;
    return 0;
}

static void post(int fd, unsigned char level)
{
    ssize_t w;
    do {
        w = write(fd, &level, 1);
    } while (w < 0 && errno == EINTR);
    /* EAGAIN: the pipe is full of unread events; the reader will see a level anyway. */
}

/* One cgroup v1 notification: "<eventfd> <fd of file> <args>" into cgroup.event_control.
   Closing the eventfd later removes the registration (the kernel sees its POLLHUP). */
static int v1_register(mm_events *ev, int file_fd, const char *args, int *efd_out)
{
    char msg[96];
    int efd, n;
    ssize_t w;
    *efd_out = -1;
    efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (efd < 0)
        return -errno;
    n = snprintf(msg, sizeof msg, "%d %d %s", efd, file_fd, args);
    do {
        w = write(ev->control_fd, msg, (size_t)n);
    } while (w < 0 && errno == EINTR);
    if (w < 0) {
        int e = errno;
        close(efd);
        return -e;
    }
    *efd_out = efd;
    return 0;
}

static double watch_value(mm_events *ev, uint64_t *v)
{
    char buf[MM_BUF];
    ssize_t n = read_fd(ev->watch_fd, buf, sizeof buf);
    if (n <= 0)
        return -1;
    if (ev->watch == WATCH_MEMINFO) {
        uint64_t vals[MI_COUNT];
        unsigned found = meminfo_scan(buf, (size_t)n, vals, NULL);
        if (!(found & (1u << MI_AVAILABLE)))
            return -1;
        *v = vals[MI_AVAILABLE];
    } else {
        const char *s = buf;
        uint64_t usage;
        if (scan_u64(&s, buf + n, &usage) != 0)
            return -1;
        /* limit - usage: usage counts cache, so this is never above available */
        *v = usage < ev->watch_limit ? ev->watch_limit - usage : 0;
    }
    ev->polls++;
    return now_monotonic();
}

static int zone_of(const mm_events *ev, uint64_t v)
{
    return v < ev->crit ? 2 : v < ev->warn ? 1 : 0;
}

/* Read available, note a change of zone (posted as a wake-up with post_changes), and set the
   next period: a quarter of the time the headroom above the critical threshold lasts at the
   fastest fall seen. Returns 1 on a change of zone, 0 without, -1 when the read failed. */
static int watch_poll(mm_events *ev, int post_changes)
{
    uint64_t v;
    double t = watch_value(ev, &v), rate, period;
    int zone, changed;
    if (t < 0) {
        ev->period = ev->max_period;
        return -1;
    }
    if (ev->last_t > 0 && t > ev->last_t && v < ev->last_v) {
        rate = (double)(ev->last_v - v) / (t - ev->last_t);
        if (rate > ev->max_rate)
            ev->max_rate = rate;
    }
    ev->last_t = t;
    ev->last_v = v;
    zone = zone_of(ev, v);
    changed = ev->zone >= 0 && zone != ev->zone;
    if (post_changes && zone != ev->zone)
        post(ev->pipe_w, MM_LEVEL_NORMAL);
    ev->zone = zone;
    period = v > ev->crit ? (double)(v - ev->crit) / ev->max_rate / 4 : 0;
    if (period < ev->min_period)
        period = ev->min_period;
    if (period > ev->max_period)
        period = ev->max_period;
    ev->period = period;
    return changed;
}

static void *events_thread(void *arg)
{
    mm_events *ev = arg;
    struct pollfd fds[EV_NFDS];
    double due = now_monotonic() + ev->period;
    for (int i = 0; i < EV_NFDS; i++) {
        fds[i].fd = ev->fds[i];
        fds[i].events = (i == EV_SOME || i == EV_FULL) ? POLLPRI : POLLIN;
        fds[i].revents = 0;
    }
    for (;;) {
        int timeout = -1, n;
        int watching = ev->watch != WATCH_NONE && !ev->reader_paced;
        if (watching) {
            double left = due - now_monotonic();
            timeout = left <= 0 ? 0 : (int)(left * 1000 + 0.999);
        }
        n = poll(fds, EV_NFDS, timeout);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            post(ev->pipe_w, MM_EVENT_GONE);
            return NULL;
        }
        if (fds[EV_STOP].revents)
            return NULL;
        for (int i = 0; i < EV_STOP && n > 0; i++) {
            if (fds[i].revents & (POLLERR | POLLNVAL | POLLHUP)) {
                post(ev->pipe_w, MM_EVENT_GONE);  /* the source went away */
                return NULL;
            }
            if (i == EV_SOME || i == EV_FULL) {
                if (fds[i].revents & POLLPRI)
                    post(ev->pipe_w, ev_level[i]);
            } else if (fds[i].revents & POLLIN) {
                uint64_t count;
                ssize_t r = read(fds[i].fd, &count, sizeof count);
                (void)r;  /* a v1 notification: also sent when the group is removed */
                post(ev->pipe_w, ev_level[i]);
            }
        }
        if (watching && now_monotonic() >= due) {
            watch_poll(ev, 1);
            due = now_monotonic() + ev->period;
        }
    }
}

static int events_start(mm_events *ev)
{
    int rc = pthread_create(&ev->thread, NULL, events_thread, ev);
    if (rc == 0)
        ev->started = 1;
    return rc;
}

static void events_halt(mm_events *ev)
{
    unsigned char buf[16];
    if (!ev->started)
        return;
    post(ev->stop_w, 1);
    pthread_join(ev->thread, NULL);
    ev->started = 0;
    while (read(ev->fds[EV_STOP], buf, sizeof buf) > 0)
        ;
}

static uint64_t scope_limit(mm_events *ev, const char *name)
{
    char buf[64];
    const char *s = buf;
    uint64_t v;
    ssize_t n = read_path_at(ev->scope_dfd, name, buf, sizeof buf);
    if (n <= 0 || scan_u64(&s, buf + n, &v) != 0)
        return 0;  /* "max", or unreadable: no limit of its own */
    return v;
}

int mm_events_open(mm_handle *h, uint32_t some_us, uint32_t full_us, uint32_t window_us,
                   mm_events **out, struct mm_error *err)
{
    mm_events *ev;
    char path[PATH_MAX + 16];
    int p[2], q[2], rc;
    *out = NULL;
    ev = calloc(1, sizeof *ev);
    if (!ev)
        return fail(err, CALL_ALLOC, ENOMEM);
    for (int i = 0; i < EV_NFDS; i++)
        ev->fds[i] = -1;
    ev->stop_w = ev->pipe_r = ev->pipe_w = ev->scope_dfd = ev->control_fd = -1;
    ev->v1_level_fd = ev->v1_usage_fd = ev->meminfo_fd = ev->watch_fd = -1;
    ev->cg_kind = h->cg_kind;
    ev->zone = -1;
    ev->max_rate = MM_WATCH_PRIOR_RATE;
    ev->min_period = ev->max_period = ev->period = 1.0;

    ev->psi_err = ENOTSUP;
    if (h->psi_path[0]) {
        if ((rc = psi_trigger(h->psi_path, "some", some_us, window_us, &ev->fds[EV_SOME])) != 0 ||
            (rc = psi_trigger(h->psi_path, "full", full_us, window_us, &ev->fds[EV_FULL])) != 0) {
            ev->psi_err = -rc;
            close_fd(&ev->fds[EV_SOME]);
            close_fd(&ev->fds[EV_FULL]);
        } else {
            ev->psi_err = 0;
            ev->sources |= MM_SRC_PSI;
        }
    }
    if (h->scope_dir[0])
        ev->scope_dfd = open(h->scope_dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (h->cg_kind == CG_V1 && ev->scope_dfd >= 0) {
        ev->control_fd = openat(ev->scope_dfd, "cgroup.event_control", O_WRONLY | O_CLOEXEC);
        ev->v1_level_fd = open_at(ev->scope_dfd, "memory.pressure_level");
        ev->v1_usage_fd = open_at(ev->scope_dfd, "memory.usage_in_bytes");
        if (ev->control_fd >= 0 && ev->v1_level_fd >= 0 &&
            v1_register(ev, ev->v1_level_fd, "medium", &ev->fds[EV_V1_MEDIUM]) == 0 &&
            v1_register(ev, ev->v1_level_fd, "critical", &ev->fds[EV_V1_CRITICAL]) == 0)
            ev->sources |= MM_SRC_V1_PRESSURE;
        else {
            close_fd(&ev->fds[EV_V1_MEDIUM]);
            close_fd(&ev->fds[EV_V1_CRITICAL]);
        }
    }
    if (snprintf(path, sizeof path, "%s/meminfo", h->proc) < (int)sizeof path)
        ev->meminfo_fd = open(path, O_RDONLY | O_CLOEXEC);
    if (ev->meminfo_fd >= 0) {
        uint64_t vals[MI_COUNT];
        char buf[MM_BUF];
        ssize_t n = read_fd(ev->meminfo_fd, buf, sizeof buf);
        if (n > 0 && (meminfo_scan(buf, (size_t)n, vals, NULL) & (1u << MI_TOTAL)))
            ev->host_total = vals[MI_TOTAL];
    }
    /* Nothing that can ever wake the reader: say why with the PSI trigger's error. */
    if (!ev->sources && ev->meminfo_fd < 0 && ev->v1_usage_fd < 0) {
        rc = fail(err, h->psi_path[0] ? CALL_WRITE_TRIGGER : CALL_OPEN_PSI, ev->psi_err);
        goto error;
    }
    if (pipe2(p, O_NONBLOCK | O_CLOEXEC) != 0) {
        rc = fail(err, CALL_PIPE, errno);
        goto error;
    }
    ev->pipe_r = p[0];
    ev->pipe_w = p[1];
    if (pipe2(q, O_NONBLOCK | O_CLOEXEC) != 0) {
        rc = fail(err, CALL_PIPE, errno);
        goto error;
    }
    ev->fds[EV_STOP] = q[0];
    ev->stop_w = q[1];
    if ((rc = events_start(ev)) != 0) {
        rc = fail(err, CALL_THREAD, rc);
        goto error;
    }
    *out = ev;
    return 0;
error:
    mm_events_close(ev);
    return rc;
}

int mm_events_arm(mm_events *ev, uint64_t warning_available, uint64_t critical_available,
                  double min_period, double max_period, int paced_by_reader)
{
    uint64_t limit = 0;
    int rc = 0;
    if (critical_available > warning_available || !(min_period > 0) ||
        !(max_period >= min_period))
        return -EINVAL;
    events_halt(ev);
    close_fd(&ev->fds[EV_V1_WARN]);
    close_fd(&ev->fds[EV_V1_CRIT]);
    close_fd(&ev->watch_fd);
    ev->sources &= ~(uint32_t)(MM_SRC_V1_USAGE | MM_SRC_WATCH);
    ev->watch = WATCH_NONE;
    ev->warn = warning_available;
    ev->crit = critical_available;
    ev->min_period = min_period;
    ev->max_period = max_period;
    ev->reader_paced = paced_by_reader != 0;
    if (ev->cg_kind == CG_V1)
        limit = scope_limit(ev, "memory.limit_in_bytes");
    else if (ev->cg_kind == CG_V2)
        limit = scope_limit(ev, "memory.max");
    if (ev->host_total && limit >= ev->host_total)
        limit = 0;  /* v1 prints "no limit" as a huge number: the host's memory is the bound */
    if (ev->cg_kind == CG_V1 && limit && ev->control_fd >= 0 && ev->v1_usage_fd >= 0) {
        char arg[32];
        int ok = 1;
        if (warning_available < limit) {
            snprintf(arg, sizeof arg, "%llu", (unsigned long long)(limit - warning_available));
            ok &= v1_register(ev, ev->v1_usage_fd, arg, &ev->fds[EV_V1_WARN]) == 0;
        }
        if (critical_available < limit && critical_available != warning_available) {
            snprintf(arg, sizeof arg, "%llu", (unsigned long long)(limit - critical_available));
            ok &= v1_register(ev, ev->v1_usage_fd, arg, &ev->fds[EV_V1_CRIT]) == 0;
        }
        if (ok)
            ev->sources |= MM_SRC_V1_USAGE;
        else {
            close_fd(&ev->fds[EV_V1_WARN]);
            close_fd(&ev->fds[EV_V1_CRIT]);
            rc = -EIO;
        }
    } else if (ev->cg_kind == CG_V2 && limit && ev->scope_dfd >= 0) {
        ev->watch_fd = open_at(ev->scope_dfd, "memory.current");
        ev->watch = ev->watch_fd >= 0 ? WATCH_V2 : WATCH_NONE;
        ev->watch_limit = limit;
    } else if (ev->meminfo_fd >= 0) {
        ev->watch_fd = dup(ev->meminfo_fd);
        ev->watch = ev->watch_fd >= 0 ? WATCH_MEMINFO : WATCH_NONE;
    }
    if (ev->watch != WATCH_NONE) {
        ev->sources |= MM_SRC_WATCH;
        ev->zone = -1;
        ev->last_t = 0;
        watch_poll(ev, 0);  /* the starting zone: only a change from it wakes the reader */
    }
    if (events_start(ev) != 0)
        return -EAGAIN;
    return rc;
}

uint32_t mm_events_sources(mm_events *ev, int32_t *psi_err)
{
    *psi_err = ev->psi_err;
    return ev->sources;
}

uint64_t mm_events_polls(mm_events *ev) { return ev->polls; }

int mm_events_watch(mm_events *ev, double *next_period)
{
    int changed;
    *next_period = 0;
    if (ev->watch == WATCH_NONE || !ev->reader_paced)
        return -ENOENT;  /* the thread owns an unpaced watch: never read it from two threads */
    changed = watch_poll(ev, 0);
    *next_period = ev->period;
    return changed < 0 ? -EIO : changed;
}

int mm_events_fd(mm_events *ev) { return ev->pipe_r; }

int mm_events_read(mm_events *ev, int32_t *level)
{
    unsigned char buf[64];
    int lvl = -1, gone = 0;
    for (;;) {
        ssize_t n = read(ev->pipe_r, buf, sizeof buf);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            break;
        for (ssize_t i = 0; i < n; i++) {
            if (buf[i] == MM_EVENT_GONE)
                gone = 1;
            else if ((int)buf[i] > lvl)
                lvl = buf[i];
        }
    }
    if (lvl >= 0) {
        *level = lvl;
        return 0;
    }
    return gone ? -EIO : -EAGAIN;
}

void mm_events_close(mm_events *ev)
{
    if (!ev)
        return;
    events_halt(ev);
    for (int i = 0; i < EV_NFDS; i++)
        close_fd(&ev->fds[i]);
    close_fd(&ev->stop_w);
    close_fd(&ev->pipe_r);
    close_fd(&ev->pipe_w);
    close_fd(&ev->scope_dfd);
    close_fd(&ev->control_fd);
    close_fd(&ev->v1_level_fd);
    close_fd(&ev->v1_usage_fd);
    close_fd(&ev->meminfo_fd);
    close_fd(&ev->watch_fd);
    free(ev);
}
