"""A file descriptor that becomes readable when a file may have changed (Linux inotify).

The agent's main thread used to wake every second to compare the config file's mtime: one of
the agent's wake-ups per second while idle (issue 15: idle wake-ups at most the tick rate).
inotify tells it instead. The directory is watched, not the file, because editors and config
management replace the file (write a temporary, rename it over), which a watch on the old
inode would not see. Where inotify is missing (macOS, a sandbox that refuses it) ``open``
returns ``None`` and the caller polls as before.
"""

from __future__ import annotations

import ctypes
import os
import sys

# linux/inotify.h
_IN_MODIFY = 0x002
_IN_ATTRIB = 0x004
_IN_CLOSE_WRITE = 0x008
_IN_MOVED_FROM = 0x040
_IN_MOVED_TO = 0x080
_IN_CREATE = 0x100
_IN_DELETE = 0x200
_IN_DELETE_SELF = 0x400
_IN_MOVE_SELF = 0x800
_MASK = (
    _IN_MODIFY | _IN_ATTRIB | _IN_CLOSE_WRITE | _IN_MOVED_FROM | _IN_MOVED_TO | _IN_CREATE
    | _IN_DELETE | _IN_DELETE_SELF | _IN_MOVE_SELF
)  # fmt: skip
_IN_NONBLOCK = os.O_NONBLOCK
_IN_CLOEXEC = os.O_CLOEXEC


class FileWatch:
    """inotify on the directory of one file; :meth:`drain` after the fd is readable."""

    def __init__(self, fd: int) -> None:
        self.fd = fd

    def fileno(self) -> int:
        return self.fd

    def drain(self) -> None:
        """Read what is pending (the events say only "something in the directory moved";
        the caller compares the file's mtime and size, as it did when polling)."""
        try:
            while os.read(self.fd, 65536):
                pass
        except BlockingIOError:
            pass

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def open_watch(path: str) -> FileWatch | None:
    """A watch on ``path``'s directory, or ``None`` where inotify is unavailable."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None, use_errno=True)  # libc is loaded already
        init1, add = libc.inotify_init1, libc.inotify_add_watch
    except (OSError, AttributeError):
        return None
    init1.argtypes, init1.restype = [ctypes.c_int], ctypes.c_int
    add.argtypes, add.restype = [ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32], ctypes.c_int
    fd = init1(_IN_NONBLOCK | _IN_CLOEXEC)
    if fd < 0:
        return None
    directory = os.path.dirname(os.path.abspath(path)) or "/"
    if add(fd, os.fsencode(directory), _MASK) < 0:
        os.close(fd)
        return None
    return FileWatch(fd)
