/* Shim of <fcntl.h>: fcntl can be made to fail (tests/darwin_shim). */
#ifndef SHIM_FCNTL_H
#define SHIM_FCNTL_H
#include_next <fcntl.h>
int shim_fcntl(int fd, int cmd, ...);
#ifdef SHIM_RENAME
#define fcntl shim_fcntl
#endif
#endif
