/* Shim of <dlfcn.h>: libobjc, Metal, IOKit and CoreFoundation are served by shim.c. */
#ifndef SHIM_DLFCN_H
#define SHIM_DLFCN_H
#include_next <dlfcn.h>
void *shim_dlopen(const char *path, int mode);
void *shim_dlsym(void *handle, const char *symbol);
int shim_dlclose(void *handle);
#ifdef SHIM_RENAME
#define dlopen shim_dlopen
#define dlsym shim_dlsym
#define dlclose shim_dlclose
#endif
#endif
