/* The floor the sampler is measured against: the same preads on kept-open fds, no parsing,
   no records. Compiled by the benchmark suite itself (conftest.py). */
#include <stddef.h>
#include <unistd.h>

int floor_system(int meminfo_fd, int psi_fd)
{
    char buf[8192];
    ssize_t a = pread(meminfo_fd, buf, sizeof buf, 0);
    ssize_t b = psi_fd >= 0 ? pread(psi_fd, buf, sizeof buf, 0) : 0;
    return (a < 0 || b < 0) ? -1 : 0;
}

int floor_statm(const int *fds, size_t n)
{
    char buf[256];
    int bad = 0;
    for (size_t i = 0; i < n; i++)
        if (pread(fds[i], buf, sizeof buf, 0) <= 0)
            bad++;
    return bad;
}
