/* Shim of <unistd.h>: pipe, read and write can be made to fail (tests/darwin_shim). */
#ifndef SHIM_UNISTD_H
#define SHIM_UNISTD_H
#include_next <unistd.h>
int shim_pipe(int fds[2]);
ssize_t shim_read(int fd, void *buf, size_t n);
ssize_t shim_write(int fd, const void *buf, size_t n);
#ifdef SHIM_RENAME
#define pipe shim_pipe
#define read shim_read
#define write shim_write
#endif
#endif
