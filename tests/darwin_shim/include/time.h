/* Shim of <time.h>: CLOCK_UPTIME_RAW (mach_absolute_time) as CLOCK_MONOTONIC, the clock behind
   Python's time.monotonic on Linux, plus an offset tests can advance (tests/darwin_shim). */
#ifndef SHIM_TIME_H
#define SHIM_TIME_H
#include_next <time.h>
#define CLOCK_UPTIME_RAW CLOCK_MONOTONIC
int shim_clock_gettime(clockid_t clock, struct timespec *ts);
#ifdef SHIM_RENAME
#define clock_gettime shim_clock_gettime
#endif
#endif
