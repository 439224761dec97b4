"""cffi out-of-line API build of metalmem._native.

Lives outside the package (bcrypt 3.x, PyNaCl): the cdef is the block of csrc/metalmem.h
between its CDEF markers, so the header is the one truth for C and Python, and the platform
file is picked here.
"""

from __future__ import annotations

import pathlib
import sys

from cffi import FFI

HERE = pathlib.Path(__file__).resolve().parent
HEADER = HERE / "metalmem.h"


def read_cdef(header: pathlib.Path = HEADER) -> str:
    """Return the declarations between the CDEF markers of the header."""
    text = header.read_text()
    start = text.index("/* BEGIN CDEF */") + len("/* BEGIN CDEF */")
    end = text.index("/* END CDEF */")
    return text[start:end]


def platform_source(platform: str = sys.platform) -> str:
    """Name the C file for a platform; anything but macOS uses the Linux sampler."""
    if platform == "darwin":
        return "darwin.c"
    if platform.startswith("linux"):
        return "linux.c"
    raise RuntimeError(f"metalmem: unsupported platform {platform!r}")


def _relative(path: pathlib.Path) -> str:
    # setuptools wants source paths relative to setup.py.
    try:
        return str(path.relative_to(pathlib.Path.cwd()))
    except ValueError:
        return str(path)


ffibuilder = FFI()
ffibuilder.cdef(read_cdef())
ffibuilder.set_source(
    "metalmem._native",
    '#include "metalmem.h"',
    sources=[_relative(HERE / platform_source())],
    include_dirs=[_relative(HERE)],
    extra_compile_args=["-std=c11", "-O2", "-Wall", "-Wextra", "-Werror"],
    libraries=["dl", "pthread"] if sys.platform.startswith("linux") else [],
)

if __name__ == "__main__":
    ffibuilder.compile(verbose=True)
