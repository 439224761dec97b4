/* Shim of <libproc.h> (tests/darwin_shim). */
#ifndef SHIM_LIBPROC_H
#define SHIM_LIBPROC_H
#include <sys/proc_info.h>
#include <sys/resource.h>
int proc_pidinfo(int pid, int flavor, uint64_t arg, void *buffer, int buffersize);
int proc_pid_rusage(int pid, int flavor, rusage_info_t *buffer);
#endif
