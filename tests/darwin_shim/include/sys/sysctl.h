/* Shim of <sys/sysctl.h> (glibc has none since 2.32) (tests/darwin_shim). */
#ifndef SHIM_SYS_SYSCTL_H
#define SHIM_SYS_SYSCTL_H
#include "../shim_types.h"

#define CTL_MAXNAME 12

struct xsw_usage {
    uint64_t xsu_total;
    uint64_t xsu_avail;
    uint64_t xsu_used;
    uint32_t xsu_pagesize;
    boolean_t xsu_encrypted;
};

int sysctl(int *name, u_int namelen, void *oldp, size_t *oldlenp, void *newp, size_t newlen);
int sysctlnametomib(const char *name, int *mibp, size_t *sizep);
#endif
