/*
 * shim.c - the Apple APIs csrc/darwin.c calls, implemented on Linux so that darwin.c runs,
 * unchanged, under tests (tests/darwin_shim/README.md). Each fake answers with values tests set
 * through shim.h (recorded on real Macs) and fails the way the real call fails: errno for
 * sysctl and libproc, a kern_return_t for Mach, NULL for dlopen/dlsym and the constructors.
 *
 * Mach host_statistics64 follows xnu osfmk/kern/host.c: it fills the revisions it knows and
 * sets *count to that revision's count; it refuses a count below REV0; a rate-limited caller
 * gets the previous reply again. The ObjC runtime is one objc_msgSend that dispatches on the
 * selector's name, called through the exact function types darwin.c casts it to (the arguments
 * are pointer-sized and in registers on x86_64 and arm64 alike). libdispatch is a worker
 * thread per queue. This file is test code: it favours being obvious over being fast.
 */
#define _GNU_SOURCE
#include <dispatch/dispatch.h>
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <libproc.h>
#include <mach/mach.h>
#include <mach/vm_page_size.h>
#include <objc/objc.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/proc_info.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/sysctl.h>
#include <time.h>
#include <unistd.h>

#include "shim.h"

#define EXPORT __attribute__((visibility("default")))

static pthread_mutex_t lock = PTHREAD_RECURSIVE_MUTEX_INITIALIZER_NP;
#define LOCK() pthread_mutex_lock(&lock)
#define UNLOCK() pthread_mutex_unlock(&lock)

vm_size_t vm_kernel_page_size = 16384;

/* -------------------------------------------------------------------------------------------
 * sysctl
 */

#define SHIM_MIB 0x5348  /* first component of every mib the shim hands out */
#define MAX_SYSCTLS 32

struct sysctl_entry {
    char name[64];
    int present;
    int err;
    size_t len;
    unsigned char value[64];
};
static struct sysctl_entry sysctls[MAX_SYSCTLS];

static struct sysctl_entry *sysctl_find(const char *name, int create)
{
    for (int i = 0; i < MAX_SYSCTLS; i++)
        if (sysctls[i].name[0] && strcmp(sysctls[i].name, name) == 0)
            return &sysctls[i];
    if (!create)
        return NULL;
    for (int i = 0; i < MAX_SYSCTLS; i++)
        if (!sysctls[i].name[0]) {
            snprintf(sysctls[i].name, sizeof sysctls[i].name, "%s", name);
            return &sysctls[i];
        }
    return NULL;
}

EXPORT int shim_sysctl_set_bytes(const char *name, const void *buf, size_t len)
{
    struct sysctl_entry *e;
    LOCK();
    e = sysctl_find(name, 1);
    if (!e || len > sizeof e->value) {
        UNLOCK();
        return -EINVAL;
    }
    memcpy(e->value, buf, len);
    e->len = len;
    e->present = 1;
    e->err = 0;
    UNLOCK();
    return 0;
}

EXPORT int shim_sysctl_set(const char *name, uint64_t value, uint32_t width)
{
    uint32_t v32 = (uint32_t)value;
    if (width == 4)
        return shim_sysctl_set_bytes(name, &v32, 4);
    if (width == 8)
        return shim_sysctl_set_bytes(name, &value, 8);
    return -EINVAL;
}

EXPORT int shim_sysctl_remove(const char *name)
{
    struct sysctl_entry *e;
    LOCK();
    e = sysctl_find(name, 0);
    if (e)
        e->present = 0;
    UNLOCK();
    return e ? 0 : -ENOENT;
}

EXPORT int shim_sysctl_fail(const char *name, int32_t err)
{
    struct sysctl_entry *e;
    LOCK();
    e = sysctl_find(name, 0);
    if (e)
        e->err = err;
    UNLOCK();
    return e ? 0 : -ENOENT;
}

int sysctlnametomib(const char *name, int *mibp, size_t *sizep)
{
    struct sysctl_entry *e;
    int rc = -1;
    LOCK();
    e = sysctl_find(name, 0);
    if (!e || !e->present)
        errno = ENOENT;
    else if (*sizep < 2)
        errno = ENOMEM;
    else {
        mibp[0] = SHIM_MIB;
        mibp[1] = (int)(e - sysctls);
        *sizep = 2;
        rc = 0;
    }
    UNLOCK();
    return rc;
}

/* xnu sysctl_old_user: a buffer shorter than the value is ENOMEM; writes need root here. */
int sysctl(int *name, u_int namelen, void *oldp, size_t *oldlenp, void *newp, size_t newlen)
{
    struct sysctl_entry *e = NULL;
    int rc = -1;
    LOCK();
    if (namelen == 2 && name[0] == SHIM_MIB && name[1] >= 0 && name[1] < MAX_SYSCTLS)
        e = &sysctls[name[1]];
    if (!e || !e->present)
        errno = ENOENT;
    else if (newp || newlen)
        errno = EPERM;
    else if (e->err)
        errno = e->err;
    else if (!oldlenp || !oldp || *oldlenp < e->len)
        errno = ENOMEM;
    else {
        memcpy(oldp, e->value, e->len);
        *oldlenp = e->len;
        rc = 0;
    }
    UNLOCK();
    return rc;
}

/* -------------------------------------------------------------------------------------------
 * Mach
 */

#define HOST_PORT 0x103
#define TASK_PORT 0x203

static vm_statistics64_data_t vm_now, vm_cached;
static int have_cached;
static kern_return_t host_kr;
static int host_revision = 2;
static int rate_fresh, rate_used;
static long rate_window = -1;
static uint64_t host_calls;
static int64_t ports_live;
static double clock_offset;
static int clock_fails;

EXPORT uint64_t shim_host_statistics_calls(void) { return host_calls; }
EXPORT void shim_host_statistics_result(int32_t kr) { host_kr = kr; }
EXPORT void shim_host_statistics_revision(int32_t rev) { host_revision = rev; }
EXPORT void shim_page_size(uint64_t bytes) { vm_kernel_page_size = (vm_size_t)bytes; }
EXPORT int64_t shim_ports_live(void) { return ports_live; }

EXPORT void shim_host_statistics_rate_limit(int32_t fresh_per_window)
{
    LOCK();
    rate_fresh = fresh_per_window;
    rate_used = 0;
    rate_window = -1;
    UNLOCK();
}

#define VM_FIELD(f) {#f, offsetof(vm_statistics64_data_t, f), sizeof(((vm_statistics64_data_t *)0)->f)}
static const struct {
    const char *name;
    size_t offset, size;
} vm_fields[] = {
    VM_FIELD(free_count), VM_FIELD(active_count), VM_FIELD(inactive_count),
    VM_FIELD(wire_count), VM_FIELD(zero_fill_count), VM_FIELD(reactivations),
    VM_FIELD(pageins), VM_FIELD(pageouts), VM_FIELD(faults), VM_FIELD(cow_faults),
    VM_FIELD(lookups), VM_FIELD(hits), VM_FIELD(purges), VM_FIELD(purgeable_count),
    VM_FIELD(speculative_count), VM_FIELD(decompressions), VM_FIELD(compressions),
    VM_FIELD(swapins), VM_FIELD(swapouts), VM_FIELD(compressor_page_count),
    VM_FIELD(throttled_count), VM_FIELD(external_page_count), VM_FIELD(internal_page_count),
    VM_FIELD(total_uncompressed_pages_in_compressor), VM_FIELD(swapped_count),
};

EXPORT int shim_vm_set(const char *field, uint64_t value)
{
    for (size_t i = 0; i < sizeof vm_fields / sizeof vm_fields[0]; i++) {
        if (strcmp(vm_fields[i].name, field) != 0)
            continue;
        LOCK();
        if (vm_fields[i].size == 4) {
            uint32_t v = (uint32_t)value;
            memcpy((char *)&vm_now + vm_fields[i].offset, &v, 4);
        } else {
            memcpy((char *)&vm_now + vm_fields[i].offset, &value, 8);
        }
        UNLOCK();
        return 0;
    }
    return -ENOENT;
}

mach_port_t mach_host_self(void)
{
    LOCK();
    ports_live++;
    UNLOCK();
    return HOST_PORT;
}

mach_port_t shim_mach_task_self(void) { return TASK_PORT; }

kern_return_t mach_port_deallocate(mach_port_t task, mach_port_t name)
{
    if (task != TASK_PORT || name != HOST_PORT)
        return KERN_INVALID_ARGUMENT;
    LOCK();
    ports_live--;
    UNLOCK();
    return KERN_SUCCESS;
}

static double shim_now(void);

kern_return_t host_statistics64(mach_port_t host, host_flavor_t flavor, host_info64_t info,
                                mach_msg_type_number_t *count)
{
    static const mach_msg_type_number_t rev_counts[] = {
        HOST_VM_INFO64_REV0_COUNT, HOST_VM_INFO64_REV1_COUNT, HOST_VM_INFO64_REV2_COUNT};
    mach_msg_type_number_t filled;
    long window;
    kern_return_t kr = KERN_SUCCESS;

    LOCK();
    host_calls++;
    if (host != HOST_PORT)
        kr = KERN_INVALID_HOST;
    else if (flavor != HOST_VM_INFO64 || *count < HOST_VM_INFO64_REV0_COUNT)
        kr = KERN_FAILURE;
    else if (host_kr != KERN_SUCCESS)
        kr = host_kr;
    if (kr != KERN_SUCCESS) {
        UNLOCK();
        return kr;
    }
    filled = rev_counts[host_revision < 0 ? 0 : host_revision > 2 ? 2 : host_revision];
    if (*count < filled)
        filled = *count < HOST_VM_INFO64_REV1_COUNT ? HOST_VM_INFO64_REV0_COUNT
                                                     : HOST_VM_INFO64_REV1_COUNT;
    /* xnu rate_limit_host_statistics: past the window's quota, the last reply again. */
    window = (long)shim_now();
    if (window != rate_window) {
        rate_window = window;
        rate_used = 0;
    }
    if (rate_fresh != 0 && rate_used >= rate_fresh && have_cached) {
        memcpy(info, &vm_cached, (size_t)filled * sizeof(integer_t));
    } else {
        rate_used++;
        vm_cached = vm_now;
        have_cached = 1;
        memcpy(info, &vm_now, (size_t)filled * sizeof(integer_t));
    }
    *count = filled;
    UNLOCK();
    return KERN_SUCCESS;
}

/* -------------------------------------------------------------------------------------------
 * Clock
 */

EXPORT void shim_clock_advance(double seconds) { clock_offset += seconds; }
EXPORT void shim_clock_fail(int32_t on) { clock_fails = on; }

int shim_clock_gettime(clockid_t clock, struct timespec *ts)
{
    double t;
    if (clock_fails) {
        errno = EINVAL;
        return -1;
    }
    if (clock_gettime(clock, ts) != 0)
        return -1;
    t = (double)ts->tv_sec + (double)ts->tv_nsec / 1e9 + clock_offset;
    ts->tv_sec = (time_t)t;
    ts->tv_nsec = (long)((t - (double)ts->tv_sec) * 1e9);
    return 0;
}

static double shim_now(void)
{
    struct timespec ts;
    if (shim_clock_gettime(CLOCK_MONOTONIC, &ts) != 0)
        return 0.0;
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* -------------------------------------------------------------------------------------------
 * Processes
 */

#define MAX_PROCS 32

struct proc_entry {
    int32_t pid;
    uint32_t uid;
    uint64_t start_sec, start_usec, rss, footprint, wired, peak;
    int fail_call, fail_err;
};
static struct proc_entry procs[MAX_PROCS];
static int64_t caller_uid = -1;

EXPORT void shim_caller_uid(int64_t uid) { caller_uid = uid; }

static uid_t caller(void) { return caller_uid < 0 ? geteuid() : (uid_t)caller_uid; }

static struct proc_entry *proc_find(int32_t pid, int create)
{
    for (int i = 0; i < MAX_PROCS; i++)
        if (procs[i].pid == pid && pid != 0)
            return &procs[i];
    if (!create)
        return NULL;
    for (int i = 0; i < MAX_PROCS; i++)
        if (procs[i].pid == 0) {
            memset(&procs[i], 0, sizeof procs[i]);
            procs[i].pid = pid;
            procs[i].fail_call = -1;
            return &procs[i];
        }
    return NULL;
}

EXPORT int shim_proc_set(int32_t pid, uint32_t uid, uint64_t start_sec, uint64_t start_usec,
                         uint64_t rss, uint64_t footprint, uint64_t wired, uint64_t peak)
{
    struct proc_entry *p;
    LOCK();
    p = proc_find(pid, 1);
    if (p) {
        p->uid = uid;
        p->start_sec = start_sec;
        p->start_usec = start_usec;
        p->rss = rss;
        p->footprint = footprint;
        p->wired = wired;
        p->peak = peak;
    }
    UNLOCK();
    return p ? 0 : -ENOMEM;
}

EXPORT int shim_proc_fail(int32_t pid, int32_t call, int32_t err)
{
    struct proc_entry *p;
    LOCK();
    p = proc_find(pid, 0);
    if (p) {
        p->fail_call = call;
        p->fail_err = err;
    }
    UNLOCK();
    return p ? 0 : -ENOENT;
}

/* A Linux process as libproc would describe it: 0, or -errno (ESRCH when gone). */
static int linux_proc(int32_t pid, struct proc_entry *out)
{
    char path[64], buf[4096], *p;
    unsigned long long start_ticks = 0, btime = 0, resident = 0;
    unsigned long long anon_kb = 0, swap_kb = 0, hwm_kb = 0, lck_kb = 0;
    struct stat st;
    FILE *f;
    int field;
    long ticks = sysconf(_SC_CLK_TCK);

    if (kill(pid, 0) != 0 && errno == ESRCH)
        return -ESRCH;
    memset(out, 0, sizeof *out);
    out->pid = pid;
    snprintf(path, sizeof path, "/proc/%d", pid);
    if (stat(path, &st) != 0)
        return -ESRCH;
    out->uid = st.st_uid;
    snprintf(path, sizeof path, "/proc/%d/stat", pid);
    if (!(f = fopen(path, "re")))
        return -ESRCH;
    buf[fread(buf, 1, sizeof buf - 1, f)] = '\0';
    fclose(f);
    /* proc(5): starttime is field 22; fields are counted after the last ')' of comm. */
    if (!(p = strrchr(buf, ')')))
        return -EIO;
    for (field = 2; field < 22 && (p = strchr(p + 1, ' ')); field++)
        ;
    if (!p || sscanf(p + 1, "%llu", &start_ticks) != 1)
        return -EIO;
    if ((f = fopen("/proc/stat", "re"))) {
        while (fgets(buf, sizeof buf, f))
            if (sscanf(buf, "btime %llu", &btime) == 1)
                break;
        fclose(f);
    }
    out->start_sec = btime + start_ticks / (unsigned long long)ticks;
    out->start_usec = (start_ticks % (unsigned long long)ticks) * 1000000ull /
                      (unsigned long long)ticks;
    snprintf(path, sizeof path, "/proc/%d/statm", pid);
    if ((f = fopen(path, "re"))) {
        if (fscanf(f, "%*u %llu", &resident) != 1)
            resident = 0;
        fclose(f);
    }
    snprintf(path, sizeof path, "/proc/%d/status", pid);
    if ((f = fopen(path, "re"))) {
        while (fgets(buf, sizeof buf, f)) {
            (void)(sscanf(buf, "RssAnon: %llu", &anon_kb) || sscanf(buf, "VmSwap: %llu", &swap_kb) ||
                   sscanf(buf, "VmHWM: %llu", &hwm_kb) || sscanf(buf, "VmLck: %llu", &lck_kb));
        }
        fclose(f);
    }
    out->rss = resident * (unsigned long long)sysconf(_SC_PAGESIZE);
    /* The nearest Linux analogue of phys_footprint: anonymous resident + swap (DESIGN.md). */
    out->footprint = (anon_kb + swap_kb) * 1024;
    out->peak = hwm_kb * 1024 > out->footprint ? hwm_kb * 1024 : out->footprint;
    out->wired = lck_kb * 1024;
    out->fail_call = -1;
    return 0;
}

static int lookup_proc(int32_t pid, struct proc_entry *out)
{
    struct proc_entry *p;
    LOCK();
    p = proc_find(pid, 0);
    if (p)
        *out = *p;
    UNLOCK();
    return p ? 0 : linux_proc(pid, out);
}

int proc_pidinfo(int pid, int flavor, uint64_t arg, void *buffer, int buffersize)
{
    struct proc_entry p;
    struct proc_bsdinfo bsd;
    int rc;

    if (flavor != PROC_PIDTBSDINFO || arg != 0 || buffersize < (int)sizeof bsd) {
        errno = EINVAL;
        return 0;
    }
    if ((rc = lookup_proc(pid, &p)) != 0) {
        errno = -rc;
        return 0;
    }
    if (p.fail_call == 0 && p.fail_err > 0) {
        errno = p.fail_err;
        return 0;
    }
    /* xnu bsd/kern/proc_info.c proc_pidinfo: PROC_PIDTBSDINFO is not among the flavors that
       "don't require privileges", so proc_security_policy(CHECK_SAME_USER) refuses another
       user's process unless the caller is root. */
    if (p.uid != caller() && caller() != 0) {
        errno = EPERM;
        return 0;
    }
    memset(&bsd, 0, sizeof bsd);
    bsd.pbi_pid = (uint32_t)pid;
    bsd.pbi_uid = bsd.pbi_ruid = bsd.pbi_svuid = p.uid;
    bsd.pbi_start_tvsec = p.start_sec;
    bsd.pbi_start_tvusec = p.start_usec;
    memcpy(buffer, &bsd, sizeof bsd);
    if (p.fail_call == 0 && p.fail_err < 0)
        return (int)sizeof bsd / 2;  /* a short reply */
    return (int)sizeof bsd;
}

/* xnu proc_pid_rusage: the caller's uid or root (§3.1), else EPERM. */
int proc_pid_rusage(int pid, int flavor, rusage_info_t *buffer)
{
    struct proc_entry p;
    struct rusage_info_v4 ri;
    int rc;

    if (flavor != RUSAGE_INFO_V4) {
        errno = EINVAL;
        return -1;
    }
    if ((rc = lookup_proc(pid, &p)) != 0) {
        errno = -rc;
        return -1;
    }
    if (p.fail_call == 1) {
        errno = p.fail_err;
        return -1;
    }
    if (p.uid != caller() && caller() != 0) {
        errno = EPERM;
        return -1;
    }
    memset(&ri, 0, sizeof ri);
    ri.ri_resident_size = p.rss;
    ri.ri_phys_footprint = p.footprint;
    ri.ri_wired_size = p.wired;
    ri.ri_lifetime_max_phys_footprint = p.peak;
    memcpy(buffer, &ri, sizeof ri);
    return 0;
}

/* -------------------------------------------------------------------------------------------
 * libc failures
 */

struct libc_fail {
    const char *name;
    int err, after, armed;
};
static struct libc_fail libc_fails[] = {
    {"calloc", 0, 0, 0}, {"pipe", 0, 0, 0}, {"fcntl", 0, 0, 0}, {"read", 0, 0, 0}, {"write", 0, 0, 0}};

EXPORT void shim_libc_fail(const char *call, int32_t err, int32_t after)
{
    for (size_t i = 0; i < sizeof libc_fails / sizeof libc_fails[0]; i++)
        if (strcmp(libc_fails[i].name, call) == 0) {
            libc_fails[i].err = err;
            libc_fails[i].after = after;
            libc_fails[i].armed = 1;
        }
}

static int libc_should_fail(int i)
{
    struct libc_fail *f = &libc_fails[i];
    if (!f->armed)
        return 0;
    if (f->after-- > 0)
        return 0;
    f->armed = 0;
    errno = f->err;
    return 1;
}

void *shim_calloc(size_t n, size_t size) { return libc_should_fail(0) ? NULL : calloc(n, size); }
int shim_pipe(int fds[2]) { return libc_should_fail(1) ? -1 : pipe(fds); }
ssize_t shim_read(int fd, void *buf, size_t n) { return libc_should_fail(3) ? -1 : read(fd, buf, n); }

ssize_t shim_write(int fd, const void *buf, size_t n)
{
    return libc_should_fail(4) ? -1 : write(fd, buf, n);
}

int shim_fcntl(int fd, int cmd, ...)
{
    va_list ap;
    int arg;
    if (libc_should_fail(2))
        return -1;
    if (cmd == F_GETFL || cmd == F_GETFD)
        return fcntl(fd, cmd);
    va_start(ap, cmd);
    arg = va_arg(ap, int);
    va_end(ap);
    return fcntl(fd, cmd, arg);
}

/* -------------------------------------------------------------------------------------------
 * Objective-C runtime and Metal
 */

enum { OBJ_DEVICE = 1, OBJ_ARRAY, OBJ_STRING };

struct obj {
    int kind;
    int refs;
    struct obj *child;  /* an array's device */
    char text[96];      /* a string's bytes */
};

#define MAX_SELECTORS 32
#define MAX_POOL 16
static char *selectors[MAX_SELECTORS];
static uint64_t selector_calls[MAX_SELECTORS];
static uint64_t unknown_calls;
static struct obj *pool[MAX_POOL];
static int pool_len;
static int64_t objects_live;
static int metal_default = 1, metal_listed = 1;
static uint64_t metal_working_set;
static int32_t metal_unified = 1;
static char metal_name[96];
static char not_responding[MAX_SELECTORS][64];

static struct obj *obj_new(int kind)
{
    struct obj *o = calloc(1, sizeof *o);
    if (!o)
        abort();
    o->kind = kind;
    o->refs = 1;
    objects_live++;
    return o;
}

static void obj_release(struct obj *o)
{
    if (--o->refs > 0)
        return;
    if (o->child)
        obj_release(o->child);
    objects_live--;
    free(o);
}

static SEL sel_register(const char *name)
{
    int i;
    LOCK();
    for (i = 0; i < MAX_SELECTORS && selectors[i]; i++)
        if (strcmp(selectors[i], name) == 0)
            break;
    if (i == MAX_SELECTORS)
        abort();
    if (!selectors[i])
        selectors[i] = strdup(name);
    UNLOCK();
    return (SEL)(void *)selectors[i];
}

static int sel_index(SEL sel)
{
    for (int i = 0; i < MAX_SELECTORS && selectors[i]; i++)
        if ((void *)selectors[i] == (void *)sel)
            return i;
    return -1;
}

static int sel_is(SEL sel, const char *name) { return strcmp((const char *)(void *)sel, name) == 0; }

static int device_responds(SEL sel)
{
    static const char *const known[] = {"recommendedMaxWorkingSetSize", "currentAllocatedSize",
                                         "hasUnifiedMemory", "name", "retain", "release"};
    int found = 0;
    for (size_t i = 0; i < sizeof known / sizeof known[0]; i++)
        found |= sel_is(sel, known[i]);
    for (int i = 0; i < MAX_SELECTORS; i++)
        if (not_responding[i][0] && sel_is(sel, not_responding[i]))
            return 0;
    return found;
}

static uintptr_t fake_msg_send(id self, SEL sel, uintptr_t arg)
{
    struct obj *o = (struct obj *)(void *)self, *s;
    int i = sel_index(sel);
    if (i >= 0)
        selector_calls[i]++;
    if (sel_is(sel, "retain")) {
        o->refs++;
        return (uintptr_t)self;
    }
    if (sel_is(sel, "release")) {
        obj_release(o);
        return 0;
    }
    if (o->kind == OBJ_ARRAY && sel_is(sel, "count"))
        return o->child ? (uintptr_t)metal_listed : 0;
    if (o->kind == OBJ_ARRAY && sel_is(sel, "objectAtIndex:"))
        return arg < (uintptr_t)metal_listed ? (uintptr_t)o->child : 0;
    if (o->kind == OBJ_STRING && sel_is(sel, "UTF8String"))
        return (uintptr_t)o->text;
    if (o->kind == OBJ_DEVICE && sel_is(sel, "respondsToSelector:"))
        return (uintptr_t)device_responds((SEL)(void *)arg);
    if (o->kind == OBJ_DEVICE && device_responds(sel)) {
        if (sel_is(sel, "recommendedMaxWorkingSetSize"))
            return (uintptr_t)metal_working_set;
        if (sel_is(sel, "currentAllocatedSize"))
            return 1u << 20;  /* this process's own device: never the system's figure */
        if (sel_is(sel, "hasUnifiedMemory"))
            return (uintptr_t)(metal_unified != 0);
        if (sel_is(sel, "name")) {
            /* An autoreleased NSString: the pool owns it. */
            s = obj_new(OBJ_STRING);
            snprintf(s->text, sizeof s->text, "%s", metal_name);
            if (pool_len < MAX_POOL)
                pool[pool_len++] = s;
            return (uintptr_t)s;
        }
    }
    unknown_calls++;
    return 0;
}

static void *pool_push(void) { return (void *)(intptr_t)(pool_len + 1); }

static void pool_pop(void *token)
{
    int mark = (int)(intptr_t)token - 1;
    while (pool_len > mark)
        obj_release(pool[--pool_len]);
}

static id create_device(void) { return metal_default ? (id)(void *)obj_new(OBJ_DEVICE) : NULL; }

static id copy_all_devices(void)
{
    struct obj *a;
    if (metal_listed < 0)
        return NULL;
    a = obj_new(OBJ_ARRAY);
    if (metal_listed > 0)
        a->child = obj_new(OBJ_DEVICE);
    return (id)(void *)a;
}

EXPORT void shim_metal_devices(int32_t default_device, int32_t listed)
{
    metal_default = default_device;
    metal_listed = listed;
}

EXPORT void shim_metal_responds(const char *selector, int32_t responds)
{
    for (int i = 0; i < MAX_SELECTORS; i++) {
        if (!responds && !not_responding[i][0]) {
            snprintf(not_responding[i], sizeof not_responding[i], "%s", selector);
            return;
        }
        if (responds && strcmp(not_responding[i], selector) == 0)
            not_responding[i][0] = '\0';
    }
}

EXPORT void shim_metal_values(uint64_t working_set, int32_t unified, const char *name)
{
    metal_working_set = working_set;
    metal_unified = unified;
    snprintf(metal_name, sizeof metal_name, "%s", name);
}

EXPORT uint64_t shim_metal_calls(const char *selector)
{
    if (strcmp(selector, "?") == 0)
        return unknown_calls;
    for (int i = 0; i < MAX_SELECTORS && selectors[i]; i++)
        if (strcmp(selectors[i], selector) == 0)
            return selector_calls[i];
    return 0;
}

EXPORT int64_t shim_objects_live(void) { return objects_live; }

/* -------------------------------------------------------------------------------------------
 * CoreFoundation and IOKit
 */

enum { CF_DICT = 1, CF_NUMBER, CF_STRING, CF_MATCHING };
#define MAX_ENTRIES 16

struct cf {
    int kind;
    int refs;
    char text[64];
    int64_t i;
    double f;
    int is_float;
    int n;
    struct cf *keys[MAX_ENTRIES], *values[MAX_ENTRIES];
};

struct entry {
    char key[64];
    int kind;  /* CF_NUMBER or CF_STRING */
    int64_t i;
    double f;
    int is_float;
    char text[64];
};

#define MAX_SERVICES 4
struct service {
    int stats;  /* 0 none, 1 a dictionary, 2 a string where the dictionary should be */
    int n;
    struct entry entries[MAX_ENTRIES];
};
static struct service services[MAX_SERVICES];
static int n_services;
static kern_return_t matching_kr;
static int64_t cf_live;

/* io_object_t values: 1..MAX_IO; an iterator remembers its position. */
#define MAX_IO 64
static struct {
    int refs;
    int service;   /* -1: an iterator */
    int position;
} io[MAX_IO + 1];
static int64_t io_live;

static struct cf *cf_new(int kind)
{
    struct cf *c = calloc(1, sizeof *c);
    if (!c)
        abort();
    c->kind = kind;
    c->refs = 1;
    cf_live++;
    return c;
}

static void cf_release(const void *ref)
{
    struct cf *c = (struct cf *)(uintptr_t)ref;
    if (!c || --c->refs > 0)
        return;
    for (int i = 0; i < c->n; i++) {
        cf_release(c->keys[i]);
        cf_release(c->values[i]);
    }
    cf_live--;
    free(c);
}

static int cf_string_fails;
EXPORT void shim_cf_string_fail(int32_t on) { cf_string_fails = on; }

static const void *cf_string(const void *alloc, const char *s, uint32_t encoding)
{
    struct cf *c;
    (void)alloc;
    if (encoding != 0x08000100u)
        abort();  /* darwin.c asks for UTF-8 only */
    if (cf_string_fails)
        return NULL;
    c = cf_new(CF_STRING);
    snprintf(c->text, sizeof c->text, "%s", s);
    return c;
}

static const void *cf_dict_get(const void *dict, const void *key)
{
    const struct cf *d = dict, *k = key;
    if (!d || d->kind != CF_DICT || !k || k->kind != CF_STRING)
        abort();  /* darwin.c checked the type first: anything else is a darwin.c bug */
    for (int i = 0; i < d->n; i++)
        if (strcmp(d->keys[i]->text, k->text) == 0)
            return d->values[i];
    return NULL;
}

static unsigned long cf_type_of(const void *ref) { return (unsigned long)((const struct cf *)ref)->kind; }
static unsigned long cf_dict_type(void) { return CF_DICT; }
static unsigned long cf_number_type(void) { return CF_NUMBER; }

/* CFNumberGetValue: false when the conversion to the asked type is lossy. */
static unsigned char cf_number_value(const void *ref, long type, void *out)
{
    const struct cf *c = ref;
    int64_t v;
    if (c->kind != CF_NUMBER || type != 4)
        abort();
    v = c->is_float ? (int64_t)c->f : c->i;
    memcpy(out, &v, sizeof v);
    return !c->is_float || (double)v == c->f;
}

static const void *io_matching(const char *name)
{
    struct cf *c = cf_new(CF_MATCHING);
    snprintf(c->text, sizeof c->text, "%s", name);
    return c;
}

static mach_port_t io_new(int service)
{
    for (int i = 1; i <= MAX_IO; i++)
        if (io[i].refs == 0) {
            io[i].refs = 1;
            io[i].service = service;
            io[i].position = 0;
            io_live++;
            return (mach_port_t)i;
        }
    abort();
}

static kern_return_t io_get_services(mach_port_t port, const void *matching, mach_port_t *it)
{
    const struct cf *m = matching;
    int accel = m && m->kind == CF_MATCHING && strcmp(m->text, "IOAccelerator") == 0;
    cf_release(matching);  /* consumed, also on failure */
    if (port != MACH_PORT_NULL)
        return KERN_INVALID_ARGUMENT;
    if (matching_kr != KERN_SUCCESS)
        return matching_kr;
    *it = io_new(-1);
    io[*it].position = accel ? 0 : n_services;
    return KERN_SUCCESS;
}

static mach_port_t io_next(mach_port_t it)
{
    if (it == 0 || it > MAX_IO || io[it].refs == 0 || io[it].service != -1)
        abort();
    if (io[it].position >= n_services)
        return 0;
    return io_new(io[it].position++);
}

static kern_return_t io_release(mach_port_t o)
{
    if (o == 0 || o > MAX_IO || io[o].refs == 0)
        return KERN_INVALID_ARGUMENT;
    if (--io[o].refs == 0)
        io_live--;
    return KERN_SUCCESS;
}

static const void *io_property(mach_port_t o, const void *key, const void *alloc, uint32_t opts)
{
    const struct cf *k = key;
    struct service *s;
    struct cf *d;
    (void)alloc, (void)opts;
    if (o == 0 || o > MAX_IO || io[o].refs == 0 || io[o].service < 0 || k->kind != CF_STRING)
        abort();
    s = &services[io[o].service];
    if (strcmp(k->text, "PerformanceStatistics") != 0 || !s->stats)
        return NULL;
    if (s->stats == 2)
        return cf_string(NULL, "not a dictionary", 0x08000100u);
    d = cf_new(CF_DICT);
    for (int i = 0; i < s->n; i++) {
        struct cf *v = cf_new(s->entries[i].kind);
        d->keys[i] = cf_new(CF_STRING);
        snprintf(d->keys[i]->text, sizeof d->keys[i]->text, "%s", s->entries[i].key);
        v->i = s->entries[i].i;
        v->f = s->entries[i].f;
        v->is_float = s->entries[i].is_float;
        snprintf(v->text, sizeof v->text, "%s", s->entries[i].text);
        d->values[i] = v;
    }
    d->n = s->n;
    return d;
}

EXPORT void shim_accel_clear(void) { n_services = 0; }
EXPORT void shim_accel_matching_result(int32_t kr) { matching_kr = kr; }
EXPORT int64_t shim_io_objects_live(void) { return io_live; }
EXPORT int64_t shim_cf_objects_live(void) { return cf_live; }

EXPORT int shim_accel_add(int32_t has_stats)
{
    if (n_services == MAX_SERVICES)
        return -ENOMEM;
    memset(&services[n_services], 0, sizeof services[n_services]);
    services[n_services].stats = has_stats ? 1 : 0;
    return n_services++;
}

EXPORT int shim_accel_stats_not_a_dictionary(int32_t service)
{
    if (service < 0 || service >= n_services)
        return -EINVAL;
    services[service].stats = 2;
    return 0;
}

static struct entry *accel_entry(int32_t service, const char *key)
{
    struct service *s;
    if (service < 0 || service >= n_services)
        return NULL;
    s = &services[service];
    for (int i = 0; i < s->n; i++)
        if (strcmp(s->entries[i].key, key) == 0)
            return &s->entries[i];
    if (s->n == MAX_ENTRIES)
        return NULL;
    memset(&s->entries[s->n], 0, sizeof s->entries[s->n]);
    snprintf(s->entries[s->n].key, sizeof s->entries[s->n].key, "%s", key);
    return &s->entries[s->n++];
}

EXPORT int shim_accel_number(int32_t service, const char *key, int64_t value)
{
    struct entry *e = accel_entry(service, key);
    if (!e)
        return -EINVAL;
    e->kind = CF_NUMBER;
    e->i = value;
    e->is_float = 0;
    return 0;
}

EXPORT int shim_accel_float(int32_t service, const char *key, double value)
{
    struct entry *e = accel_entry(service, key);
    if (!e)
        return -EINVAL;
    e->kind = CF_NUMBER;
    e->f = value;
    e->is_float = 1;
    return 0;
}

EXPORT int shim_accel_string(int32_t service, const char *key, const char *value)
{
    struct entry *e = accel_entry(service, key);
    if (!e)
        return -EINVAL;
    e->kind = CF_STRING;
    snprintf(e->text, sizeof e->text, "%s", value);
    return 0;
}

/* -------------------------------------------------------------------------------------------
 * dlopen / dlsym
 */

struct symbol {
    const char *name;
    void *fn;
};
struct library {
    const char *name;   /* shim_library's name */
    const char *path;   /* where darwin.c opens it */
    const struct symbol *symbols;
    int present;
    int open;
};

#define FN(f) ((void *)(uintptr_t)(f))
static const struct symbol objc_symbols[] = {
    {"sel_registerName", FN(sel_register)}, {"objc_autoreleasePoolPush", FN(pool_push)},
    {"objc_autoreleasePoolPop", FN(pool_pop)}, {"objc_msgSend", FN(fake_msg_send)}, {NULL, NULL}};
static const struct symbol metal_symbols[] = {
    {"MTLCreateSystemDefaultDevice", FN(create_device)},
    {"MTLCopyAllDevices", FN(copy_all_devices)}, {NULL, NULL}};
static const struct symbol iokit_symbols[] = {
    {"IOServiceMatching", FN(io_matching)}, {"IOServiceGetMatchingServices", FN(io_get_services)},
    {"IOIteratorNext", FN(io_next)}, {"IORegistryEntryCreateCFProperty", FN(io_property)},
    {"IOObjectRelease", FN(io_release)}, {NULL, NULL}};
static const struct symbol cf_symbols[] = {
    {"CFStringCreateWithCString", FN(cf_string)}, {"CFDictionaryGetValue", FN(cf_dict_get)},
    {"CFGetTypeID", FN(cf_type_of)}, {"CFDictionaryGetTypeID", FN(cf_dict_type)},
    {"CFNumberGetTypeID", FN(cf_number_type)}, {"CFNumberGetValue", FN(cf_number_value)},
    {"CFRelease", FN(cf_release)}, {NULL, NULL}};

static struct library libraries[] = {
    {"libobjc", "/usr/lib/libobjc.A.dylib", objc_symbols, 1, 0},
    {"Metal", "/System/Library/Frameworks/Metal.framework/Metal", metal_symbols, 1, 0},
    {"IOKit", "/System/Library/Frameworks/IOKit.framework/IOKit", iokit_symbols, 1, 0},
    {"CoreFoundation", "/System/Library/Frameworks/CoreFoundation.framework/CoreFoundation",
     cf_symbols, 1, 0},
};
#define N_LIBRARIES (sizeof libraries / sizeof libraries[0])
static char hidden_symbols[8][64];

EXPORT void shim_library(const char *name, int32_t present)
{
    for (size_t i = 0; i < N_LIBRARIES; i++)
        if (strcmp(libraries[i].name, name) == 0)
            libraries[i].present = present;
}

EXPORT void shim_symbol(const char *name, int32_t present)
{
    for (int i = 0; i < 8; i++) {
        if (!present && !hidden_symbols[i][0]) {
            snprintf(hidden_symbols[i], sizeof hidden_symbols[i], "%s", name);
            return;
        }
        if (present && strcmp(hidden_symbols[i], name) == 0)
            hidden_symbols[i][0] = '\0';
    }
}

EXPORT int64_t shim_handles_live(void)
{
    int64_t n = 0;
    for (size_t i = 0; i < N_LIBRARIES; i++)
        n += libraries[i].open;
    return n;
}

void *shim_dlopen(const char *path, int mode)
{
    (void)mode;
    for (size_t i = 0; i < N_LIBRARIES; i++)
        if (strcmp(libraries[i].path, path) == 0 && libraries[i].present) {
            libraries[i].open++;
            return &libraries[i];
        }
    return NULL;
}

void *shim_dlsym(void *handle, const char *symbol)
{
    struct library *lib = handle;
    for (int i = 0; i < 8; i++)
        if (strcmp(hidden_symbols[i], symbol) == 0)
            return NULL;
    for (const struct symbol *s = lib->symbols; s->name; s++)
        if (strcmp(s->name, symbol) == 0)
            return s->fn;
    return NULL;
}

int shim_dlclose(void *handle)
{
    struct library *lib = handle;
    if (lib->open <= 0)
        abort();  /* closing a handle twice is a darwin.c bug */
    lib->open--;
    return 0;
}

/* -------------------------------------------------------------------------------------------
 * libdispatch: a serial queue is a worker thread running jobs in order.
 */

enum { DISPATCH_QUEUE = 1, DISPATCH_SOURCE, DISPATCH_SEMAPHORE };

struct job {
    struct job *next;
    struct shim_dispatch_source *source;
    int cancel;
    uintptr_t data;
};

struct shim_dispatch_queue {
    int kind;
    pthread_t thread;
    pthread_mutex_t mutex;
    pthread_cond_t cond;
    struct job *head, *tail;
    int stop;
};

struct shim_dispatch_source {
    int kind;
    dispatch_queue_t queue;
    uintptr_t mask, data;
    void *context;
    dispatch_function_t handler, cancel_handler;
    int active, cancelled;
};

struct shim_dispatch_semaphore {
    int kind;
    pthread_mutex_t mutex;
    pthread_cond_t cond;
    long value;
};

struct shim_dispatch_source_type {
    int unused;
};
const struct shim_dispatch_source_type shim_dispatch_source_type_memorypressure = {0};

#define MAX_SOURCES 16
static struct shim_dispatch_source *sources[MAX_SOURCES];
static pthread_mutex_t sources_mutex = PTHREAD_MUTEX_INITIALIZER;
static char dispatch_failing[16];
static int64_t jobs_pending;  /* enqueued and not yet run, across queues */

EXPORT int64_t shim_dispatch_pending(void) { return __atomic_load_n(&jobs_pending, __ATOMIC_ACQUIRE); }

EXPORT void shim_dispatch_fail(const char *what)
{
    snprintf(dispatch_failing, sizeof dispatch_failing, "%s", what);
}

static void *queue_main(void *arg)
{
    dispatch_queue_t q = arg;
    pthread_mutex_lock(&q->mutex);
    for (;;) {
        struct job *j;
        while (!q->head && !q->stop)
            pthread_cond_wait(&q->cond, &q->mutex);
        if (!q->head)
            break;
        j = q->head;
        q->head = j->next;
        if (!q->head)
            q->tail = NULL;
        pthread_mutex_unlock(&q->mutex);
        if (j->cancel) {
            if (j->source->cancel_handler)
                j->source->cancel_handler(j->source->context);
        } else if (!__atomic_load_n(&j->source->cancelled, __ATOMIC_ACQUIRE)) {
            j->source->data = j->data;
            j->source->handler(j->source->context);
        }
        free(j);
        __atomic_sub_fetch(&jobs_pending, 1, __ATOMIC_RELEASE);
        pthread_mutex_lock(&q->mutex);
    }
    pthread_mutex_unlock(&q->mutex);
    return NULL;
}

static void enqueue(struct shim_dispatch_source *s, int cancel, uintptr_t data)
{
    dispatch_queue_t q = s->queue;
    struct job *j = calloc(1, sizeof *j);
    if (!j)
        abort();
    j->source = s;
    j->cancel = cancel;
    j->data = data;
    __atomic_add_fetch(&jobs_pending, 1, __ATOMIC_RELEASE);
    pthread_mutex_lock(&q->mutex);
    if (q->tail)
        q->tail->next = j;
    else
        q->head = j;
    q->tail = j;
    pthread_cond_signal(&q->cond);
    pthread_mutex_unlock(&q->mutex);
}

dispatch_queue_t dispatch_queue_create(const char *label, void *attr)
{
    dispatch_queue_t q;
    (void)label, (void)attr;
    if (strcmp(dispatch_failing, "queue") == 0 || !(q = calloc(1, sizeof *q)))
        return NULL;
    q->kind = DISPATCH_QUEUE;
    pthread_mutex_init(&q->mutex, NULL);
    pthread_cond_init(&q->cond, NULL);
    if (pthread_create(&q->thread, NULL, queue_main, q) != 0)
        abort();
    return q;
}

dispatch_semaphore_t dispatch_semaphore_create(long value)
{
    dispatch_semaphore_t s;
    if (strcmp(dispatch_failing, "semaphore") == 0 || !(s = calloc(1, sizeof *s)))
        return NULL;
    s->kind = DISPATCH_SEMAPHORE;
    s->value = value;
    pthread_mutex_init(&s->mutex, NULL);
    pthread_cond_init(&s->cond, NULL);
    return s;
}

long dispatch_semaphore_signal(dispatch_semaphore_t s)
{
    pthread_mutex_lock(&s->mutex);
    s->value++;
    pthread_cond_signal(&s->cond);
    pthread_mutex_unlock(&s->mutex);
    return 0;
}

long dispatch_semaphore_wait(dispatch_semaphore_t s, dispatch_time_t timeout)
{
    if (timeout != DISPATCH_TIME_FOREVER)
        abort();  /* darwin.c only waits forever */
    pthread_mutex_lock(&s->mutex);
    while (s->value <= 0)
        pthread_cond_wait(&s->cond, &s->mutex);
    s->value--;
    pthread_mutex_unlock(&s->mutex);
    return 0;
}

dispatch_source_t dispatch_source_create(dispatch_source_type_t type, uintptr_t handle,
                                         uintptr_t mask, dispatch_queue_t queue)
{
    dispatch_source_t s;
    if (type != DISPATCH_SOURCE_TYPE_MEMORYPRESSURE || handle != 0 || !queue ||
        (mask & ~(uintptr_t)0x37) != 0)
        return NULL;
    if (strcmp(dispatch_failing, "source") == 0 || !(s = calloc(1, sizeof *s)))
        return NULL;
    s->kind = DISPATCH_SOURCE;
    s->queue = queue;
    s->mask = mask;
    return s;
}

void dispatch_set_context(void *object, void *context)
{
    struct shim_dispatch_source *s = object;
    if (s->kind != DISPATCH_SOURCE)
        abort();
    s->context = context;
}

void dispatch_source_set_event_handler_f(dispatch_source_t s, dispatch_function_t handler)
{
    s->handler = handler;
}

void dispatch_source_set_cancel_handler_f(dispatch_source_t s, dispatch_function_t handler)
{
    s->cancel_handler = handler;
}

void dispatch_activate(void *object)
{
    struct shim_dispatch_source *s = object;
    if (s->kind != DISPATCH_SOURCE || s->active)
        abort();
    pthread_mutex_lock(&sources_mutex);
    for (int i = 0; i < MAX_SOURCES; i++)
        if (!sources[i]) {
            sources[i] = s;
            break;
        }
    s->active = 1;
    pthread_mutex_unlock(&sources_mutex);
}

uintptr_t dispatch_source_get_data(dispatch_source_t s) { return s->data; }

void dispatch_source_cancel(dispatch_source_t s)
{
    pthread_mutex_lock(&sources_mutex);
    for (int i = 0; i < MAX_SOURCES; i++)
        if (sources[i] == s)
            sources[i] = NULL;
    __atomic_store_n(&s->cancelled, 1, __ATOMIC_RELEASE);
    pthread_mutex_unlock(&sources_mutex);
    /* libdispatch runs the cancel handler on the queue even if the source never activated. */
    enqueue(s, 1, 0);
}

void dispatch_release(void *object)
{
    int kind = *(int *)object;
    if (kind == DISPATCH_QUEUE) {
        dispatch_queue_t q = object;
        pthread_mutex_lock(&q->mutex);
        q->stop = 1;
        pthread_cond_signal(&q->cond);
        pthread_mutex_unlock(&q->mutex);
        pthread_join(q->thread, NULL);
        pthread_mutex_destroy(&q->mutex);
        pthread_cond_destroy(&q->cond);
    } else if (kind == DISPATCH_SEMAPHORE) {
        dispatch_semaphore_t s = object;
        pthread_mutex_destroy(&s->mutex);
        pthread_cond_destroy(&s->cond);
    } else if (kind != DISPATCH_SOURCE) {
        abort();
    }
    free(object);
}

EXPORT int shim_pressure_fire(uint64_t flags)
{
    int n = 0;
    pthread_mutex_lock(&sources_mutex);
    for (int i = 0; i < MAX_SOURCES; i++)
        if (sources[i] && (sources[i]->mask & flags)) {
            enqueue(sources[i], 0, (uintptr_t)(sources[i]->mask & flags));
            n++;
        }
    pthread_mutex_unlock(&sources_mutex);
    return n;
}

EXPORT int shim_pressure_sources(void)
{
    int n = 0;
    pthread_mutex_lock(&sources_mutex);
    for (int i = 0; i < MAX_SOURCES; i++)
        n += sources[i] != NULL;
    pthread_mutex_unlock(&sources_mutex);
    return n;
}

/* -------------------------------------------------------------------------------------------
 * The recorded Mac every test starts from
 */

EXPORT void shim_reset(void)
{
    /* ollama/ollama#7255: full vm_stat of an Apple M1 (16 KiB pages; tests/fixtures/shared/
       macos-vm-samples.json "ollama-7255-m1"), whose RAM the notes put at 16 GB. */
    static const struct {
        const char *field;
        uint64_t value;
    } m1[] = {
        {"free_count", 355378 + 56413}, {"active_count", 222569}, {"inactive_count", 166967},
        {"speculative_count", 56413}, {"throttled_count", 0}, {"wire_count", 143109},
        {"purgeable_count", 3946}, {"external_page_count", 148451},
        {"internal_page_count", 297498}, {"total_uncompressed_pages_in_compressor", 950231},
        {"compressor_page_count", 55586}, {"pageins", 18811038}, {"pageouts", 1571431},
        {"swapins", 729059}, {"swapouts", 6987980}, {"decompressions", 17560851},
        {"compressions", 29079259},
    };
    struct xsw_usage swap = {2ull << 30, 1ull << 30, 1ull << 30, 16384, 1};

    LOCK();
    memset(sysctls, 0, sizeof sysctls);
    memset(&vm_now, 0, sizeof vm_now);
    memset(procs, 0, sizeof procs);
    caller_uid = -1;
    have_cached = 0;
    host_kr = KERN_SUCCESS;
    host_revision = 2;
    rate_fresh = rate_used = 0;
    rate_window = -1;
    clock_fails = 0;
    vm_kernel_page_size = 16384;
    for (size_t i = 0; i < sizeof m1 / sizeof m1[0]; i++)
        shim_vm_set(m1[i].field, m1[i].value);
    shim_sysctl_set("hw.memsize", 16ull << 30, 8);
    shim_sysctl_set("vm.page_free_count", 355378, 4);
    shim_sysctl_set("vm.page_speculative_count", 56413, 4);
    shim_sysctl_set("vm.page_pageable_internal_count", 297498, 4);
    shim_sysctl_set("vm.page_pageable_external_count", 148451, 4);
    shim_sysctl_set("vm.page_purgeable_count", 3946, 4);
    shim_sysctl_set_bytes("vm.swapusage", &swap, sizeof swap);
    shim_sysctl_set("kern.memorystatus_vm_pressure_level", 1, 4);
    shim_sysctl_set("iogpu.wired_limit_mb", 0, 4);
    UNLOCK();

    for (size_t i = 0; i < N_LIBRARIES; i++)
        libraries[i].present = 1;
    memset(hidden_symbols, 0, sizeof hidden_symbols);
    memset(not_responding, 0, sizeof not_responding);
    memset(libc_fails, 0, sizeof libc_fails);
    libc_fails[0].name = "calloc";
    libc_fails[1].name = "pipe";
    libc_fails[2].name = "fcntl";
    libc_fails[3].name = "read";
    libc_fails[4].name = "write";
    memset(selector_calls, 0, sizeof selector_calls);
    unknown_calls = 0;
    dispatch_failing[0] = '\0';
    /* ollama PR #17367: 16 GB -> recommendedMaxWorkingSetSize 10.7 GiB. */
    shim_metal_devices(1, 1);
    shim_metal_values(11453251584ull, 1, "Apple M1");
    /* exelban/stats#1094 (M1 Pro, macOS 12.6): `ioreg -r -d 1 -w 0 -c IOAccelerator`. */
    n_services = 0;
    matching_kr = KERN_SUCCESS;
    cf_string_fails = 0;
    shim_accel_add(1);
    shim_accel_number(0, "TiledSceneBytes", 1572864);
    shim_accel_number(0, "Alloc system memory", 1214005248);
    shim_accel_number(0, "Tiler Utilization %", 2);
    shim_accel_number(0, "recoveryCount", 0);
    shim_accel_number(0, "Renderer Utilization %", 2);
    shim_accel_number(0, "SplitSceneCount", 0);
    shim_accel_number(0, "Allocated PB Size", 17956864);
    shim_accel_number(0, "Device Utilization %", 2);
    shim_accel_number(0, "In use system memory", 340983808);
}

__attribute__((constructor)) static void shim_init(void) { shim_reset(); }
