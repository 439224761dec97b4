/* Shim of <stdlib.h>: calloc can be made to fail (tests/darwin_shim). */
#ifndef SHIM_STDLIB_H
#define SHIM_STDLIB_H
#include_next <stdlib.h>
void *shim_calloc(size_t n, size_t size);
#ifdef SHIM_RENAME
#define calloc shim_calloc
#endif
#endif
