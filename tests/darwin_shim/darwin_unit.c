/* csrc/darwin.c, compiled unchanged with the shim's renames of dlopen, clock_gettime, calloc,
   pipe and fcntl in force (tests/darwin_shim/include). */
#define SHIM_RENAME 1
#include "../../csrc/darwin.c"
