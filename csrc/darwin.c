/*
 * darwin.c - the macOS sampler: page counters from sysctl and host_statistics64, hw.memsize,
 * vm.swapusage, kern.memorystatus_vm_pressure_level, proc_pid_rusage + proc_pidinfo per
 * process, Metal through the Objective-C runtime, and a dispatch memory-pressure source.
 *
 * Links against libSystem only: libobjc, Metal, IOKit and CoreFoundation are dlopen'ed by
 * mm_open, so the module loads and samples everything but the GPU where they are absent (STYLE
 * rule 12). Facts, units and traps are cited by section of reference/macos-memory.md.
 *
 * GPU memory in use is the system's, not this process's: the IORegistry's IOAccelerator
 * "PerformanceStatistics" dictionary ("In use system memory", "Alloc system memory"; §6,
 * docs/wired-memory.md §9), readable without root (scalene reads it through ioreg). Metal's
 * currentAllocatedSize counts only the allocations of the device object this process created
 * (ours: none), so it never feeds the signal; Metal still gives the ceiling and the name.
 *
 * Rate limit (§1.3; xnu osfmk/kern/host.c rate_limit_host_statistics): a non-platform binary
 * gets 2..10 fresh host_statistics64 replies per 1 s window, a window shared with every other
 * third-party caller, and the last cached reply after that. So the counters that only
 * host_statistics64 has (active, inactive, wired, throttled, compressor, pageins..swapouts) are
 * read at most once per MM_SLOW_PERIOD, and the ones with plain, unthrottled sysctls (free,
 * speculative, pageable internal/external, purgeable; xnu bsd/vm/vm_unix.c) on every call.
 * Page counts stay in pages: metalmem.derive_darwin turns them into bytes (DESIGN.md).
 */
#include "metalmem.h"

#include <dispatch/dispatch.h>
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <libproc.h>
#include <mach/mach.h>
#include <mach/vm_page_size.h>
#include <objc/objc.h>
#include <stdlib.h>
#include <string.h>
#include <sys/proc_info.h>
#include <sys/resource.h>
#include <sys/sysctl.h>
#include <time.h>
#include <unistd.h>

#define MM_SLOW_PERIOD 1.0

enum {
    CALL_NONE, CALL_OPEN_SCOPE, CALL_HOST_STATISTICS, CALL_PROC_PIDINFO, CALL_PROC_RUSAGE,
    CALL_GPU, CALL_PIPE, CALL_DISPATCH, CALL_ALLOC, CALL_UNSUPPORTED, CALL_COUNT
};

static const char *const call_names[CALL_COUNT] = {
    "", "open cgroup scope (macOS has none)", "host_statistics64(HOST_VM_INFO64)",
    "proc_pidinfo(PROC_PIDTBSDINFO)", "proc_pid_rusage(RUSAGE_INFO_V4)",
    "GPU (Metal device or IOAccelerator)",
    "pipe", "dispatch_source_create(MEMORYPRESSURE)", "allocate", "not on macOS",
};

/* A sysctl name resolved once by mm_open; len 0: this kernel does not have it. */
struct mib {
    int name[CTL_MAXNAME];
    u_int len;
};

/*
 * The Objective-C runtime and Metal, resolved with dlsym. objc_msgSend is kept as the neutral
 * void (*)(void) and cast to the exact non-variadic type of each method before the call:
 * calling it through a variadic prototype passes arguments wrongly on arm64 (§4.2).
 */
typedef void (*objc_fn)(void);
typedef SEL (*sel_register_fn)(const char *);
typedef void *(*pool_push_fn)(void);
typedef void (*pool_pop_fn)(void *);
typedef id (*create_device_fn)(void);
typedef id (*copy_devices_fn)(void);
typedef uint64_t (*msg_u64_fn)(id, SEL);
typedef unsigned long (*msg_ulong_fn)(id, SEL);
typedef BOOL (*msg_bool_fn)(id, SEL);
typedef BOOL (*msg_responds_fn)(id, SEL, SEL);
typedef id (*msg_id_fn)(id, SEL);
typedef id (*msg_index_fn)(id, SEL, unsigned long);
typedef const char *(*msg_cstr_fn)(id, SEL);
typedef void (*msg_void_fn)(id, SEL);

struct metal {
    void *objc, *framework;
    objc_fn msg;
    id device;                  /* retained by mm_open, released by mm_close */
    SEL max_working_set;        /* NULL where the device does not respond to it */
    SEL release;
    int32_t unified;            /* -1: unknown */
    char name[96];
};

/*
 * IOKit and CoreFoundation, resolved with dlsym (§6). The SDK's types are spelled out here:
 * io_object_t is a mach_port_t (IOKit/IOTypes.h), CFTypeRef a const void *, CFIndex a signed
 * long, CFStringEncoding and IOOptionBits 32-bit; zig's Apple headers have no IOKit or
 * CoreFoundation, and the dylib must not link them (check_darwin.py).
 */
typedef const void *cf_ref;
typedef unsigned long cf_type_id;
typedef mach_port_t io_object;
typedef cf_ref (*io_matching_fn)(const char *);
typedef kern_return_t (*io_services_fn)(mach_port_t, cf_ref, io_object *);
typedef io_object (*io_next_fn)(io_object);
typedef cf_ref (*io_property_fn)(io_object, cf_ref, cf_ref, uint32_t);
typedef kern_return_t (*io_release_fn)(io_object);
typedef cf_ref (*cf_string_fn)(cf_ref, const char *, uint32_t);
typedef cf_ref (*cf_get_value_fn)(cf_ref, const void *);
typedef cf_type_id (*cf_type_of_fn)(cf_ref);
typedef cf_type_id (*cf_type_id_fn)(void);
typedef unsigned char (*cf_number_value_fn)(cf_ref, long, void *);
typedef void (*cf_release_fn)(cf_ref);

#define CF_STRING_ENCODING_UTF8 0x08000100u  /* kCFStringEncodingUTF8 */
#define CF_NUMBER_SINT64 4L                  /* kCFNumberSInt64Type */
#define IO_MAIN_PORT_DEFAULT MACH_PORT_NULL  /* kIOMainPortDefault (kIOMasterPortDefault) */

enum { ACCEL_IN_USE, ACCEL_ALLOC, ACCEL_KEYS };

/* "In use system memory" is what the GPU's allocations of every process hold now; "Alloc
   system memory" is the larger figure the driver reports beside it, whose exact meaning Apple
   does not document (docs/wired-memory.md §10). exelban/stats#1094, an M1 Pro on macOS 12.6:
   340983808 in use, 1214005248 allocated. */
static const char *const accel_keys[ACCEL_KEYS] = {"In use system memory", "Alloc system memory"};

struct accel {
    void *iokit, *cf;
    io_property_fn property;
    io_release_fn release;
    cf_get_value_fn get_value;
    cf_type_of_fn type_of;
    cf_number_value_fn number_value;
    cf_release_fn cf_release;
    cf_type_id dict_type, number_type;
    io_object service;          /* the first IOAccelerator with PerformanceStatistics; 0: none */
    cf_ref stats_key;
    cf_ref keys[ACCEL_KEYS];
};

struct mm_handle {
    uint64_t page_size;
    uint64_t total;
    int have_total;
    mach_port_t host;
    struct mib free, speculative, internal, external, purgeable;  /* every call */
    struct mib swapusage, pressure_level;                         /* every call */
    struct mib wired_limit_mb, wired_limit_bytes;                 /* per slow period */
    struct mm_system slow;      /* host_statistics64 and GPU parts of the last slow refresh */
    struct metal metal;
    struct accel accel;
};

int mm_abi_version(void) { return MM_ABI_VERSION; }
const char *mm_platform(void) { return "darwin"; }
double mm_slow_period(void) { return MM_SLOW_PERIOD; }

const char *mm_call_name(int32_t call)
{
    if (call < 0 || call >= CALL_COUNT)
        return "unknown";
    return call_names[call];
}

/* CLOCK_UPTIME_RAW is mach_absolute_time, the clock behind Python's time.monotonic here. */
static double now_uptime(void)
{
    struct timespec ts;
    if (clock_gettime(CLOCK_UPTIME_RAW, &ts) != 0)
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

static int kern_errno(kern_return_t kr)
{
    switch (kr) {
    case KERN_INVALID_ARGUMENT:
    case KERN_INVALID_HOST:
        return EINVAL;
    case KERN_RESOURCE_SHORTAGE:
        return ENOMEM;
    case KERN_NO_ACCESS:
    case KERN_PROTECTION_FAILURE:
        return EPERM;
    default:
        return EIO;
    }
}

static void close_fd(int *fd)
{
    if (*fd >= 0) {
        close(*fd);
        *fd = -1;
    }
}

/* ---------------------------------------------------------------------------------------
 * sysctl
 */

static void mib_lookup(struct mib *m, const char *name)
{
    size_t len = CTL_MAXNAME;
    if (sysctlnametomib(name, m->name, &len) != 0)
        len = 0;
    m->len = (u_int)len;
}

/* An integer sysctl of either width: the vm.page_* counters and the pressure level are 32-bit
   (SYSCTL_UINT/SYSCTL_INT), hw.memsize is 64-bit. Returns 0 or -errno. */
static int mib_u64(struct mib *m, uint64_t *out)
{
    union {
        uint32_t u32;
        uint64_t u64;
    } v;
    size_t len = sizeof v;
    if (m->len == 0)
        return -ENOENT;
    memset(&v, 0, sizeof v);
    if (sysctl(m->name, m->len, &v, &len, NULL, 0) != 0)
        return -errno;
    if (len == sizeof v.u64)
        *out = v.u64;
    else if (len == sizeof v.u32)
        *out = v.u32;
    else
        return -EINVAL;
    return 0;
}

/* ---------------------------------------------------------------------------------------
 * Metal via the Objective-C runtime (§4.1, §4.2)
 */

static int responds(struct metal *m, msg_responds_fn responds_to, SEL query, SEL sel)
{
    return sel && responds_to(m->device, query, sel) ? 1 : 0;
}

/* Load libobjc and Metal and keep one device for the handle's lifetime. Anything missing
   leaves m->device NULL: the GPU is then reported as absent, never as a crash. */
static void metal_load(struct metal *m)
{
    sel_register_fn sel;
    pool_push_fn push;
    pool_pop_fn pop;
    create_device_fn create;
    copy_devices_fn copy_all;
    msg_responds_fn responds_to;
    SEL query, unified, name, utf8;
    void *pool;

    m->unified = -1;
    m->objc = dlopen("/usr/lib/libobjc.A.dylib", RTLD_NOW | RTLD_LOCAL);
    if (!m->objc)
        return;
    m->framework = dlopen("/System/Library/Frameworks/Metal.framework/Metal",
                          RTLD_NOW | RTLD_LOCAL);
    sel = (sel_register_fn)dlsym(m->objc, "sel_registerName");
    push = (pool_push_fn)dlsym(m->objc, "objc_autoreleasePoolPush");
    pop = (pool_pop_fn)dlsym(m->objc, "objc_autoreleasePoolPop");
    m->msg = (objc_fn)dlsym(m->objc, "objc_msgSend");
    if (!m->framework || !sel || !push || !pop || !m->msg)
        goto absent;
    create = (create_device_fn)dlsym(m->framework, "MTLCreateSystemDefaultDevice");
    copy_all = (copy_devices_fn)dlsym(m->framework, "MTLCopyAllDevices");
    if (!create)
        goto absent;

    /* Property getters return autoreleased objects (the name string): drain them here. */
    pool = push();
    m->device = create();
    if (!m->device && copy_all) {
        /* Apple's MTLCreateSystemDefaultDevice documentation: a process that does not link
           CoreGraphics (a command-line tool, a Python interpreter) may get no default device;
           the device list has no such condition. */
        id all = copy_all();
        if (all) {
            if (((msg_ulong_fn)m->msg)(all, sel("count")) > 0) {
                m->device = ((msg_index_fn)m->msg)(all, sel("objectAtIndex:"), 0);
                if (m->device)
                    ((msg_id_fn)m->msg)(m->device, sel("retain"));
            }
            ((msg_void_fn)m->msg)(all, sel("release"));
        }
    }
    if (m->device) {
        responds_to = (msg_responds_fn)m->msg;
        query = sel("respondsToSelector:");
        m->release = sel("release");
        m->max_working_set = sel("recommendedMaxWorkingSetSize");
        unified = sel("hasUnifiedMemory");
        name = sel("name");
        utf8 = sel("UTF8String");
        if (!responds(m, responds_to, query, m->max_working_set))
            m->max_working_set = NULL;  /* macOS < 10.12 */
        if (responds(m, responds_to, query, unified))
            m->unified = ((msg_bool_fn)m->msg)(m->device, unified) ? 1 : 0;
        if (responds(m, responds_to, query, name)) {
            id s = ((msg_id_fn)m->msg)(m->device, name);
            const char *c = s ? ((msg_cstr_fn)m->msg)(s, utf8) : NULL;
            if (c) {
                strncpy(m->name, c, sizeof m->name - 1);
                m->name[sizeof m->name - 1] = '\0';
            }
        }
    }
    pop(pool);
    if (m->device)
        return;
absent:
    if (m->framework)
        dlclose(m->framework);
    dlclose(m->objc);
    m->framework = m->objc = NULL;
    m->msg = NULL;
}

static void metal_close(struct metal *m)
{
    if (!m->device)
        return;
    ((msg_void_fn)m->msg)(m->device, m->release);
    m->device = NULL;
    /* Balances mm_open's dlopen; dyld never unmaps an image that registered ObjC classes,
       so this only drops the reference count. */
    dlclose(m->framework);
    dlclose(m->objc);
    m->framework = m->objc = NULL;
}

/* Recommended working set: what the GPU may use "without affecting its runtime performance";
   currentAllocatedSize may exceed it (§4.1), so readers clamp headroom at 0. */
static int metal_working_set(struct metal *m, uint64_t *out)
{
    if (!m->device || !m->max_working_set)
        return -ENOTSUP;
    *out = ((msg_u64_fn)m->msg)(m->device, m->max_working_set);
    return 0;
}

/* ---------------------------------------------------------------------------------------
 * IOAccelerator PerformanceStatistics through IOKit and CoreFoundation (§6)
 */

static void accel_close(struct accel *a)
{
    if (a->service)
        (void)a->release(a->service);  /* nothing to do on failure */
    for (int i = 0; i < ACCEL_KEYS; i++)
        if (a->keys[i])
            a->cf_release(a->keys[i]);
    if (a->stats_key)
        a->cf_release(a->stats_key);
    if (a->cf)
        dlclose(a->cf);
    if (a->iokit)
        dlclose(a->iokit);
    memset(a, 0, sizeof *a);
}

/* The service's PerformanceStatistics, or NULL where it has none (or not a dictionary). The
   caller releases it. */
static cf_ref accel_stats(struct accel *a, io_object service)
{
    cf_ref d = a->property(service, a->stats_key, NULL, 0);
    if (d && a->type_of(d) != a->dict_type) {
        a->cf_release(d);
        d = NULL;
    }
    return d;
}

/* Resolve IOKit and CoreFoundation and keep the first IOAccelerator service that publishes
   PerformanceStatistics. Apple Silicon has one (AGXAccelerator*); a Mac with several GPUs
   (Intel + AMD) lists the integrated one first, whose keys differ (docs/wired-memory.md §10).
   Anything missing leaves a->service 0: GPU use is then unknown, not 0. */
static void accel_load(struct accel *a)
{
    io_matching_fn matching;
    io_services_fn services;
    io_next_fn next;
    cf_string_fn string;
    cf_type_id_fn dict_id, number_id;
    io_object it = 0, s;

    a->iokit = dlopen("/System/Library/Frameworks/IOKit.framework/IOKit", RTLD_NOW | RTLD_LOCAL);
    a->cf = dlopen("/System/Library/Frameworks/CoreFoundation.framework/CoreFoundation",
                   RTLD_NOW | RTLD_LOCAL);
    if (!a->iokit || !a->cf)
        goto absent;
    matching = (io_matching_fn)dlsym(a->iokit, "IOServiceMatching");
    services = (io_services_fn)dlsym(a->iokit, "IOServiceGetMatchingServices");
    next = (io_next_fn)dlsym(a->iokit, "IOIteratorNext");
    a->property = (io_property_fn)dlsym(a->iokit, "IORegistryEntryCreateCFProperty");
    a->release = (io_release_fn)dlsym(a->iokit, "IOObjectRelease");
    string = (cf_string_fn)dlsym(a->cf, "CFStringCreateWithCString");
    a->get_value = (cf_get_value_fn)dlsym(a->cf, "CFDictionaryGetValue");
    a->type_of = (cf_type_of_fn)dlsym(a->cf, "CFGetTypeID");
    dict_id = (cf_type_id_fn)dlsym(a->cf, "CFDictionaryGetTypeID");
    number_id = (cf_type_id_fn)dlsym(a->cf, "CFNumberGetTypeID");
    a->number_value = (cf_number_value_fn)dlsym(a->cf, "CFNumberGetValue");
    a->cf_release = (cf_release_fn)dlsym(a->cf, "CFRelease");
    if (!matching || !services || !next || !a->property || !a->release || !string ||
        !a->get_value || !a->type_of || !dict_id || !number_id || !a->number_value ||
        !a->cf_release)
        goto absent;
    a->dict_type = dict_id();
    a->number_type = number_id();
    a->stats_key = string(NULL, "PerformanceStatistics", CF_STRING_ENCODING_UTF8);
    for (int i = 0; i < ACCEL_KEYS; i++)
        a->keys[i] = string(NULL, accel_keys[i], CF_STRING_ENCODING_UTF8);
    if (!a->stats_key || !a->keys[ACCEL_IN_USE] || !a->keys[ACCEL_ALLOC])
        goto absent;
    /* IOServiceGetMatchingServices consumes the matching dictionary, even on failure. */
    if (services(IO_MAIN_PORT_DEFAULT, matching("IOAccelerator"), &it) != KERN_SUCCESS)
        goto absent;
    while ((s = next(it)) != 0) {
        cf_ref d = a->service ? NULL : accel_stats(a, s);
        if (d) {
            a->cf_release(d);
            a->service = s;
        } else {
            (void)a->release(s);
        }
    }
    (void)a->release(it);
    if (a->service)
        return;
absent:
    accel_close(a);
}

/* One number of the dictionary, checked: a missing key, another type or a value that does not
   fit an int64 >= 0 is unknown (-ENOENT), never 0. */
static int accel_number(struct accel *a, cf_ref stats, int key, uint64_t *out)
{
    cf_ref v = a->get_value(stats, a->keys[key]);
    int64_t n;
    if (!v || a->type_of(v) != a->number_type || !a->number_value(v, CF_NUMBER_SINT64, &n) ||
        n < 0)
        return -ENOENT;
    *out = (uint64_t)n;
    return 0;
}

/* Read the system-wide figures into values[ACCEL_KEYS]; returns a bitmask of those known. */
static unsigned accel_read(struct accel *a, uint64_t values[ACCEL_KEYS])
{
    unsigned known = 0;
    cf_ref d;
    if (!a->service || !(d = accel_stats(a, a->service)))
        return 0;
    for (int i = 0; i < ACCEL_KEYS; i++)
        if (accel_number(a, d, i, &values[i]) == 0)
            known |= 1u << i;
    a->cf_release(d);
    return known;
}

/* The GPU's wiring budget: iogpu.wired_limit_mb when an administrator set it (macOS 14+, MB;
   0 = the default policy), debug.iogpu.wired_limit on macOS 13 (bytes), else Metal's
   recommendedMaxWorkingSetSize, which is what the default policy allows (§4.5). */
static int gpu_limit(mm_handle *h, uint64_t *out)
{
    uint64_t v;
    if (mib_u64(&h->wired_limit_mb, &v) == 0 && v > 0 && v <= (UINT64_MAX >> 20)) {
        *out = v << 20;
        return 0;
    }
    if (mib_u64(&h->wired_limit_bytes, &v) == 0 && v > 0) {
        *out = v;
        return 0;
    }
    return metal_working_set(&h->metal, out);
}

/* ---------------------------------------------------------------------------------------
 * Handle
 */

int mm_open(const char *root, const char *scope, mm_handle **out, struct mm_error *err)
{
    mm_handle *h;
    uint64_t v;
    (void)root;  /* proc/ and sys/ do not exist here */

    *out = NULL;
    if (scope && *scope)
        return fail(err, CALL_OPEN_SCOPE, ENOTSUP);
    h = calloc(1, sizeof *h);
    if (!h)
        return fail(err, CALL_ALLOC, ENOMEM);
    /* Counters are in kernel pages: 16 KiB on Apple Silicon even for an x86_64 process under
       Rosetta, whose getpagesize() says 4096 (§1.2, gopsutil PR #1334). */
    h->page_size = (uint64_t)vm_kernel_page_size;
    h->host = mach_host_self();
    h->slow.slow_at = -1e18;
    mib_lookup(&h->free, "vm.page_free_count");
    mib_lookup(&h->speculative, "vm.page_speculative_count");
    mib_lookup(&h->internal, "vm.page_pageable_internal_count");
    mib_lookup(&h->external, "vm.page_pageable_external_count");
    mib_lookup(&h->purgeable, "vm.page_purgeable_count");
    mib_lookup(&h->swapusage, "vm.swapusage");
    /* Masked (hidden from sysctl -a) but readable without privilege on macOS (§2.1). */
    mib_lookup(&h->pressure_level, "kern.memorystatus_vm_pressure_level");
    mib_lookup(&h->wired_limit_mb, "iogpu.wired_limit_mb");
    mib_lookup(&h->wired_limit_bytes, "debug.iogpu.wired_limit");
    {
        struct mib memsize;
        mib_lookup(&memsize, "hw.memsize");
        /* Without it total stays unknown and derive_darwin sums the page queues instead. */
        if (mib_u64(&memsize, &v) == 0 && v > 0) {
            h->total = v;
            h->have_total = 1;
        }
    }
    metal_load(&h->metal);
    accel_load(&h->accel);
    *out = h;
    return 0;
}

void mm_close(mm_handle *h)
{
    if (!h)
        return;
    metal_close(&h->metal);
    accel_close(&h->accel);
    if (h->host != MACH_PORT_NULL)
        (void)mach_port_deallocate(mach_task_self(), h->host);  /* nothing to do on failure */
    free(h);
}

uint64_t mm_capabilities(mm_handle *h)
{
    uint64_t caps = MM_CAP_EVENTS;
    if (h->metal.device || h->accel.service)
        caps |= MM_CAP_GPU;
    return caps;
}

/* ---------------------------------------------------------------------------------------
 * System
 */

/* host_statistics64 and the GPU, at most once per MM_SLOW_PERIOD (see the rate limit above). */
static int refresh_slow(mm_handle *h, double now, struct mm_error *err)
{
    vm_statistics64_data_t vm;
    mach_msg_type_number_t count = HOST_VM_INFO64_COUNT;
    struct mm_system s;
    kern_return_t kr;
    uint64_t v, gpu[ACCEL_KEYS];

    memset(&vm, 0, sizeof vm);
    kr = host_statistics64(h->host, HOST_VM_INFO64, (host_info64_t)&vm, &count);
    if (kr != KERN_SUCCESS)
        return fail(err, CALL_HOST_STATISTICS, kern_errno(kr));
    /* The kernel fills the revisions it knows and says which in count (xnu host.c
       host_statistics64: "*count = HOST_VM_INFO64_REV1_COUNT" ...), so a kernel older than
       the SDK answers short of HOST_VM_INFO64_COUNT (macOS 26's SDK has REV6). Everything
       read here is in REV1; REV0 lacks the compressor and internal/external fields (§1.1). */
    if (count < HOST_VM_INFO64_REV1_COUNT)
        return fail(err, CALL_HOST_STATISTICS, ENOTSUP);

    memset(&s, 0, sizeof s);
    /* vm_stat's meanings (§1.1): the kernel's free_count includes speculative pages. */
    s.vm_free = vm.free_count >= vm.speculative_count ? vm.free_count - vm.speculative_count : 0;
    s.vm_active = vm.active_count;
    s.vm_inactive = vm.inactive_count;
    s.vm_speculative = vm.speculative_count;
    s.vm_throttled = vm.throttled_count;
    s.vm_wired = vm.wire_count;  /* macOS: includes throttled and lopage free pages */
    s.vm_purgeable = vm.purgeable_count;
    s.vm_external = vm.external_page_count;
    s.vm_internal = vm.internal_page_count;
    s.vm_compressor_stored = vm.total_uncompressed_pages_in_compressor;
    s.vm_compressor_occupied = vm.compressor_page_count;
    s.vm_pageins = vm.pageins;
    s.vm_pageouts = vm.pageouts;
    s.vm_swapins = vm.swapins;
    s.vm_swapouts = vm.swapouts;
    s.have = MM_HAVE_VM_PAGES | MM_HAVE_VM_EVENTS;

    if (gpu_limit(h, &v) == 0) {
        s.gpu_limit = v;
        s.have |= MM_HAVE_GPU_LIMIT;
    }
    if (accel_read(&h->accel, gpu) & (1u << ACCEL_IN_USE)) {
        s.gpu_used = gpu[ACCEL_IN_USE];
        s.have |= MM_HAVE_GPU_USED;
    }
    s.slow_at = now;
    h->slow = s;
    return 0;
}

/* The unthrottled page counters. All five or none, so one sample never mixes two sources
   for the same group; a kernel without them keeps host_statistics64's values. The pageable
   counts exclude the per-CPU local queues that vm_stats() adds, a few pages per CPU. */
static void read_fast_pages(mm_handle *h, struct mm_system *out)
{
    uint64_t free_pages, spec, internal, external, purgeable;
    if (mib_u64(&h->free, &free_pages) != 0 || mib_u64(&h->speculative, &spec) != 0 ||
        mib_u64(&h->internal, &internal) != 0 || mib_u64(&h->external, &external) != 0 ||
        mib_u64(&h->purgeable, &purgeable) != 0)
        return;
    out->vm_free = free_pages;  /* vm_page_free_count: already without speculative */
    out->vm_speculative = spec;
    out->vm_internal = internal;
    out->vm_external = external;
    out->vm_purgeable = purgeable;
}

int mm_system(mm_handle *h, struct mm_system *out, struct mm_error *err)
{
    struct xsw_usage swap;
    size_t len = sizeof swap;
    double now = now_uptime();
    uint64_t level;
    int rc;

    if (now - h->slow.slow_at >= MM_SLOW_PERIOD && (rc = refresh_slow(h, now, err)) != 0) {
        memset(out, 0, sizeof *out);
        return rc;
    }
    *out = h->slow;
    read_fast_pages(h, out);
    out->page_size = h->page_size;
    if (h->have_total) {
        out->total = h->total;
        out->have |= MM_HAVE_TOTAL;
    }
    /* struct xsw_usage is 32 bytes of byte counts (§1.4); another size is another ABI. */
    if (h->swapusage.len &&
        sysctl(h->swapusage.name, h->swapusage.len, &swap, &len, NULL, 0) == 0 &&
        len == sizeof swap && swap.xsu_used <= swap.xsu_total) {
        out->swap_total = swap.xsu_total;
        out->swap_used = swap.xsu_used;
        out->have |= MM_HAVE_SWAP;
    }
    /* 1 normal, 2 warn, 4 critical (NOTE_MEMORYSTATUS_PRESSURE_*); sampler.py maps them. */
    if (mib_u64(&h->pressure_level, &level) == 0 && level <= INT32_MAX) {
        out->os_level = (int32_t)level;
        out->have |= MM_HAVE_OS_LEVEL;
    }
    out->sampled_at = now;
    return 0;
}

/* ---------------------------------------------------------------------------------------
 * Processes
 */

static int proc_error(struct mm_proc *p, int call, int e)
{
    p->err = e;
    p->call = call;
    p->have = 0;
    return -e;
}

/*
 * Start time (the identity, with the pid) from PROC_PIDTBSDINFO, memory from
 * proc_pid_rusage V4 (§3.1): footprint = ri_phys_footprint (includes Metal buffers and
 * compressed pages, §3.4), peak = ri_lifetime_max_phys_footprint. Both need the caller's uid or
 * root: EPERM otherwise; a gone pid is ESRCH. The two calls are microseconds apart: a pid reused
 * in between would pair the new process's memory with the old start time, which the caller's
 * identity check against its previous sample catches on the next one.
 */
static int sample_one(int32_t pid, struct mm_proc *p, double now)
{
    struct proc_bsdinfo bsd;
    struct rusage_info_v4 ri;
    int n;

    memset(p, 0, sizeof *p);
    p->pid = pid;
    if (pid <= 0)
        return proc_error(p, CALL_PROC_PIDINFO, ESRCH);
    errno = 0;
    n = proc_pidinfo(pid, PROC_PIDTBSDINFO, 0, &bsd, (int)sizeof bsd);
    if (n <= 0)
        return proc_error(p, CALL_PROC_PIDINFO, errno ? errno : ESRCH);
    if (n < (int)sizeof bsd)
        return proc_error(p, CALL_PROC_PIDINFO, EIO);  /* psutil treats a short reply so */
    if (proc_pid_rusage(pid, RUSAGE_INFO_V4, (rusage_info_t *)&ri) != 0)
        return proc_error(p, CALL_PROC_RUSAGE, errno ? errno : EIO);
    p->start_time = (double)bsd.pbi_start_tvsec + (double)bsd.pbi_start_tvusec / 1e6;
    p->rss = ri.ri_resident_size;
    p->footprint = ri.ri_phys_footprint;
    p->wired = ri.ri_wired_size;
    p->peak = ri.ri_lifetime_max_phys_footprint;
    p->have = MM_PHAVE_START | MM_PHAVE_RSS | MM_PHAVE_FOOTPRINT | MM_PHAVE_WIRED |
              MM_PHAVE_PEAK;
    p->detail_at = now;
    return 0;
}

/* proc_pid_rusage has no swap or anonymous figure, so no item is ever MM_PHAVE_ALL here and
   Python always takes its field-by-field path. */
int mm_processes(mm_handle *h, const int32_t *pids, size_t n, struct mm_proc *out)
{
    double now = now_uptime();
    int incomplete = 0;
    (void)h;
    for (size_t i = 0; i < n; i++) {
        (void)sample_one(pids[i], &out[i], now);
        out[i].sampled_at = now;
        if (out[i].err || out[i].have != MM_PHAVE_ALL)
            incomplete++;
    }
    return incomplete;
}

/* ---------------------------------------------------------------------------------------
 * GPU (Metal)
 */

/* A GPU is there when Metal has a device or the IORegistry an accelerator with statistics. */
static int has_gpu(mm_handle *h) { return h->metal.device || h->accel.service; }

int mm_gpu_count(mm_handle *h, uint32_t *count)
{
    *count = has_gpu(h) ? 1 : 0;
    return has_gpu(h) ? 0 : -ENOTSUP;
}

int mm_gpu(mm_handle *h, uint32_t index, struct mm_gpu *out, struct mm_error *err)
{
    uint64_t v, gpu[ACCEL_KEYS];
    unsigned known;
    memset(out, 0, sizeof *out);
    if (!has_gpu(h))
        return fail(err, CALL_GPU, ENOTSUP);
    if (index != 0)
        return fail(err, CALL_GPU, ENODEV);
    if (gpu_limit(h, &v) == 0) {
        out->limit = v;
        out->have |= MM_GHAVE_LIMIT;
    }
    known = accel_read(&h->accel, gpu);
    if (known & (1u << ACCEL_IN_USE)) {
        out->used = gpu[ACCEL_IN_USE];
        out->have |= MM_GHAVE_USED;
    }
    if (known & (1u << ACCEL_ALLOC)) {
        out->allocated = gpu[ACCEL_ALLOC];
        out->have |= MM_GHAVE_ALLOCATED;
    }
    if (h->metal.unified >= 0) {
        out->unified = h->metal.unified;
        out->have |= MM_GHAVE_UNIFIED;
    }
    memcpy(out->name, h->metal.name, sizeof out->name);
    return 0;
}

/* ---------------------------------------------------------------------------------------
 * Linux text formats: nothing to parse here.
 */

int mm_parse_meminfo(const char *buf, size_t len, struct mm_system *out)
{
    (void)buf, (void)len, (void)out;
    return -ENOTSUP;
}

int mm_parse_vmstat(const char *buf, size_t len, struct mm_system *out)
{
    (void)buf, (void)len, (void)out;
    return -ENOTSUP;
}

int mm_parse_psi(const char *buf, size_t len, struct mm_system *out)
{
    (void)buf, (void)len, (void)out;
    return -ENOTSUP;
}

int mm_parse_statm(const char *buf, size_t len, uint64_t page_size, struct mm_proc *out)
{
    (void)buf, (void)len, (void)page_size, (void)out;
    return -ENOTSUP;
}

int mm_parse_status(const char *buf, size_t len, struct mm_proc *out)
{
    (void)buf, (void)len, (void)out;
    return -ENOTSUP;
}

int mm_parse_stat_start(const char *buf, size_t len, uint64_t ticks_per_second,
                        struct mm_proc *out)
{
    (void)buf, (void)len, (void)ticks_per_second, (void)out;
    return -ENOTSUP;
}

/* ---------------------------------------------------------------------------------------
 * Pressure events: a dispatch memory-pressure source (§2.3; the public EVFILT_VM kevent is
 * dead, EVFILT_MEMORYSTATUS is private). Its handler runs on a libdispatch worker and only
 * write(2)s one level byte into a non-blocking pipe: no locks, no allocation, no Python.
 * The OS decides when to signal, so the PSI thresholds of the Linux contract do not apply.
 */

struct mm_events {
    dispatch_queue_t queue;
    dispatch_source_t source;
    dispatch_semaphore_t cancelled;
    int active;
    int pipe_r, pipe_w;
};

static void post(int fd, unsigned char level)
{
    ssize_t w;
    do {
        w = write(fd, &level, 1);
    } while (w < 0 && errno == EINTR);
    /* EAGAIN: the pipe is full of unread events; the reader will see a level anyway. */
}

static void on_pressure(void *ctx)
{
    mm_events *ev = ctx;
    uintptr_t flags = dispatch_source_get_data(ev->source);
    unsigned char level = MM_LEVEL_NORMAL;
    if (flags & DISPATCH_MEMORYPRESSURE_CRITICAL)
        level = MM_LEVEL_CRITICAL;
    else if (flags & DISPATCH_MEMORYPRESSURE_WARN)
        level = MM_LEVEL_WARNING;
    post(ev->pipe_w, level);
}

/* Submitted once the event handler has returned for the last time (dispatch_source_cancel). */
static void on_cancel(void *ctx)
{
    mm_events *ev = ctx;
    dispatch_semaphore_signal(ev->cancelled);
}

static int set_nonblock_cloexec(int fd)
{
    int fl = fcntl(fd, F_GETFL);
    if (fl < 0 || fcntl(fd, F_SETFL, fl | O_NONBLOCK) != 0 ||
        fcntl(fd, F_SETFD, FD_CLOEXEC) != 0)
        return -errno;
    return 0;
}

int mm_events_open(mm_handle *h, uint32_t some_us, uint32_t full_us, uint32_t window_us,
                   mm_events **out, struct mm_error *err)
{
    mm_events *ev;
    int p[2], rc;
    (void)h, (void)some_us, (void)full_us, (void)window_us;

    *out = NULL;
    ev = calloc(1, sizeof *ev);
    if (!ev)
        return fail(err, CALL_ALLOC, ENOMEM);
    ev->pipe_r = ev->pipe_w = -1;
    if (pipe(p) != 0) {
        rc = fail(err, CALL_PIPE, errno);
        goto error;
    }
    ev->pipe_r = p[0];
    ev->pipe_w = p[1];
    if ((rc = set_nonblock_cloexec(p[0])) != 0 || (rc = set_nonblock_cloexec(p[1])) != 0) {
        rc = fail(err, CALL_PIPE, -rc);
        goto error;
    }
    ev->queue = dispatch_queue_create("metalmem.pressure", DISPATCH_QUEUE_SERIAL);
    ev->cancelled = dispatch_semaphore_create(0);
    if (!ev->queue || !ev->cancelled) {
        rc = fail(err, CALL_DISPATCH, ENOMEM);
        goto error;
    }
    ev->source = dispatch_source_create(
        DISPATCH_SOURCE_TYPE_MEMORYPRESSURE, 0,
        DISPATCH_MEMORYPRESSURE_NORMAL | DISPATCH_MEMORYPRESSURE_WARN |
            DISPATCH_MEMORYPRESSURE_CRITICAL,
        ev->queue);
    if (!ev->source) {
        rc = fail(err, CALL_DISPATCH, ENOTSUP);
        goto error;
    }
    dispatch_set_context(ev->source, ev);
    dispatch_source_set_event_handler_f(ev->source, on_pressure);
    dispatch_source_set_cancel_handler_f(ev->source, on_cancel);
    dispatch_activate(ev->source);
    ev->active = 1;
    *out = ev;
    return 0;
error:
    mm_events_close(ev);
    return rc;
}

int mm_events_fd(mm_events *ev) { return ev->pipe_r; }

int mm_events_read(mm_events *ev, int32_t *level)
{
    unsigned char buf[64];
    int lvl = -1;
    for (;;) {
        ssize_t n = read(ev->pipe_r, buf, sizeof buf);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            break;
        for (ssize_t i = 0; i < n; i++)
            if ((int)buf[i] > lvl)
                lvl = buf[i];
    }
    if (lvl < 0)
        return -EAGAIN;
    *level = lvl;
    return 0;
}

void mm_events_close(mm_events *ev)
{
    if (!ev)
        return;
    if (ev->source) {
        dispatch_source_cancel(ev->source);
        /* Wait for the cancel handler: after it no handler can still write to the pipe. */
        if (ev->active)
            dispatch_semaphore_wait(ev->cancelled, DISPATCH_TIME_FOREVER);
        dispatch_release(ev->source);
    }
    if (ev->cancelled)
        dispatch_release(ev->cancelled);
    if (ev->queue)
        dispatch_release(ev->queue);
    close_fd(&ev->pipe_r);
    close_fd(&ev->pipe_w);
    free(ev);
}

/* The OS decides when the dispatch source fires: there are no thresholds to arm here. */
int mm_events_arm(mm_events *ev, uint64_t warning_available, uint64_t critical_available,
                  double min_period, double max_period, int paced_by_reader)
{
    (void)ev, (void)warning_available, (void)critical_available, (void)min_period,
        (void)max_period, (void)paced_by_reader;
    return -ENOTSUP;
}

/* Nothing to watch: see mm_events_arm. */
int mm_events_watch(mm_events *ev, double *next_period)
{
    (void)ev;
    *next_period = 0;
    return -ENOENT;
}

uint32_t mm_events_sources(mm_events *ev, int32_t *psi_err)
{
    (void)ev;
    *psi_err = ENOTSUP;
    return MM_SRC_DISPATCH;
}

uint64_t mm_events_polls(mm_events *ev)
{
    (void)ev;
    return 0;
}
