"""Compile and link the macOS sampler for macOS from any host: `make check-darwin`.

zig ships Apple's libc, mach, libproc, dispatch and objc headers and a libSystem stub, so
`python -m ziglang cc -target aarch64-macos` type-checks csrc/darwin.c against the real SDK
declarations and links it as a Mach-O dylib on Linux (DESIGN.md, Conventions). Per target:

1. darwin.c alone, as a dylib, with -Wall -Wextra -Werror. zig's Mach-O linker refuses any
   symbol that libSystem does not export, so a direct call into Metal or libobjc (which must go
   through dlopen) fails here. The output must export every function of the header's CDEF
   block and load no library but libSystem.
2. The cffi-generated module (csrc/build_ffi.py's ffibuilder, emitted as C) together with
   darwin.c, as a Python extension. Python's own symbols resolve when the interpreter loads the
   module (-undefined dynamic_lookup, as for every macOS extension), so they are the only
   symbols allowed to stay unresolved. This compiles against the *running* interpreter's
   headers: under Py_LIMITED_API (cffi's default) what the module uses of them is the stable
   ABI, whose layout does not depend on the platform's pyconfig.h for 64-bit targets.

The deployment targets are the oldest macOS metalmem supports per architecture (arm64 Macs
start at 11.0; x86_64 at 10.13), and -Wunguarded-availability turns a call into an API newer
than that into an error. Measured on the 2-vCPU reference machine: 6 s for the whole check
with an empty zig cache (it builds per-target libSystem stubs), 0.5 s once cached.

Exit status: 0 when every step passes, 1 when any fails (the reasons are printed), 2 for bad
usage.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import pathlib
import re
import struct
import subprocess
import sys
import sysconfig
import tempfile
import time
from typing import NamedTuple

HERE = pathlib.Path(__file__).resolve().parent
SOURCE = HERE / "darwin.c"
TARGETS = ("aarch64-macos.11.0", "x86_64-macos.10.13")
CFLAGS = (
    # build_ffi.py's flags, plus what python.org's macOS Pythons add to every extension build
    # (sysconfig CFLAGS: -Wsign-compare -Wunreachable-code -fno-common -fwrapv).
    *("-std=c11", "-O2", "-Wall", "-Wextra", "-Werror"),
    *("-Wsign-compare", "-Wunreachable-code", "-fno-common", "-fwrapv"),
    "-Wunguarded-availability",
)
LIBSYSTEM = "/usr/lib/libSystem.B.dylib"

# Mach-O constants (mach-o/loader.h, mach-o/nlist.h).
_MH_MAGIC_64 = 0xFEEDFACF
_CPU_TYPES = {"aarch64": 0x0100000C, "x86_64": 0x01000007}
_LC_SYMTAB = 0x2
_LC_DYLIB_KINDS = {0xC, 0x20, 0x80000018, 0x8000001F}  # load, lazy, weak, reexport
_N_STAB, _N_TYPE, _N_EXT, _N_SECT = 0xE0, 0x0E, 0x01, 0x0E


class MachO(NamedTuple):
    """What the check needs from a linked Mach-O file."""

    cputype: int
    dylibs: tuple[str, ...]
    exported: frozenset[str]
    unbound: frozenset[str]  # undefined symbols bound to no linked dylib: left for load time


def read_macho(path: pathlib.Path) -> MachO:
    """Parse the header, the dylib load commands and the symbol table of a 64-bit Mach-O."""
    data = path.read_bytes()
    magic, cputype, _sub, _ftype, ncmds, _size, _flags, _res = struct.unpack_from("<8I", data)
    if magic != _MH_MAGIC_64:
        raise ValueError(f"{path}: not a 64-bit little-endian Mach-O file")
    dylibs: list[str] = []
    exported: set[str] = set()
    undefined: dict[str, int] = {}
    off = 32
    for _ in range(ncmds):
        cmd, cmdsize = struct.unpack_from("<2I", data, off)
        if cmd in _LC_DYLIB_KINDS:
            (name_off,) = struct.unpack_from("<I", data, off + 8)
            raw = data[off + name_off : off + cmdsize]
            dylibs.append(raw.split(b"\0", 1)[0].decode())
        elif cmd == _LC_SYMTAB:
            symoff, nsyms, stroff, _strsize = struct.unpack_from("<4I", data, off + 8)
            for i in range(nsyms):
                strx, ntype, _sect, desc, _value = struct.unpack_from(
                    "<IBBHQ", data, symoff + 16 * i
                )
                if ntype & _N_STAB or not ntype & _N_EXT:
                    continue
                end = data.index(b"\0", stroff + strx)
                name = data[stroff + strx : end].decode()
                if ntype & _N_TYPE == _N_SECT:
                    exported.add(name)
                elif ntype & _N_TYPE == 0:
                    undefined[name] = (desc >> 8) & 0xFF  # the library ordinal, 1-based
        off += cmdsize
    # Ordinal 1..n names a dylib load command; 0 (zig's choice), 0xFE (ld64's dynamic lookup)
    # and 0xFF (the loading executable) all mean "resolved when the image is loaded".
    unbound = frozenset(n for n, o in undefined.items() if not 1 <= o <= len(dylibs))
    return MachO(cputype, tuple(dylibs), frozenset(exported), unbound)


def contract_functions() -> frozenset[str]:
    """The functions declared in metalmem.h's CDEF block, as Mach-O symbols (`_mm_...`)."""
    sys.path.insert(0, str(HERE))
    from build_ffi import read_cdef

    return frozenset("_" + n for n in re.findall(r"\b(mm_\w+)\s*\(", read_cdef()))


def zig_cc(args: list[str]) -> subprocess.CompletedProcess[str]:
    """Run zig's clang driver; output is captured and returned, never raised on."""
    cmd = [sys.executable, "-m", "ziglang", "cc", *args]
    return subprocess.run(cmd, capture_output=True, text=True, check=False)


def _check_common(macho: MachO, arch: str, what: str) -> list[str]:
    problems = []
    if macho.cputype != _CPU_TYPES[arch]:
        problems.append(f"{what}: cputype {macho.cputype:#x}, expected {arch}")
    extra = [d for d in macho.dylibs if d != LIBSYSTEM]
    if extra:
        problems.append(f"{what}: loads {extra}; only {LIBSYSTEM} is allowed (dlopen the rest)")
    return problems


def check_target(
    source: pathlib.Path, target: str, out: pathlib.Path, *, with_cffi: bool
) -> list[str]:
    """Build source for one target; return what went wrong (empty: passed)."""
    arch = target.split("-", 1)[0]
    includes = [f"-I{source.parent}", f"-I{HERE}"]
    problems: list[str] = []

    dylib = out / f"libmetalmem-{target}.dylib"
    r = zig_cc(["-target", target, "-shared", *CFLAGS, *includes, "-o", str(dylib), str(source)])
    if r.returncode != 0:
        return [f"{target}: {source.name} does not compile and link:\n{r.stderr.strip()}"]
    macho = read_macho(dylib)
    problems += _check_common(macho, arch, f"{target} dylib")
    if macho.unbound:
        problems.append(f"{target}: dylib leaves symbols unbound: {sorted(macho.unbound)}")
    missing = sorted(contract_functions() - macho.exported)
    if missing:
        problems.append(f"{target}: the CDEF block declares but {source.name} lacks {missing}")
    if not with_cffi:
        return problems

    generated = out / "_native.c"
    if not generated.exists():
        sys.path.insert(0, str(HERE))
        from build_ffi import ffibuilder

        with contextlib.redirect_stdout(io.StringIO()):  # cffi prints "generating ..."
            ffibuilder.emit_c_code(str(generated))
    pyinc = pathlib.Path(sysconfig.get_paths()["include"])
    if not (pyinc / "Python.h").exists():
        return [*problems, f"{target}: no Python.h under {pyinc} for the cffi module"]
    module = out / f"_native-{target}.so"
    r = zig_cc(
        ["-target", target, "-shared", *CFLAGS, *includes, f"-I{pyinc}",
         "-Wl,-undefined,dynamic_lookup", "-o", str(module), str(generated), str(source)]
    )  # fmt: skip
    if r.returncode != 0:
        return [*problems, f"{target}: the cffi module does not compile and link:\n{r.stderr}"]
    macho = read_macho(module)
    problems += _check_common(macho, arch, f"{target} cffi module")
    if "_PyInit__native" not in macho.exported:
        problems.append(f"{target}: the cffi module does not export PyInit__native")
    unresolved = sorted(s for s in macho.unbound if not s.startswith(("_Py", "__Py")))
    if unresolved:
        problems.append(f"{target}: cffi module leaves non-Python symbols unresolved: {unresolved}")
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--source", type=pathlib.Path, default=SOURCE, help="the C file")
    parser.add_argument("--target", action="append", help=f"zig target (default {TARGETS})")
    parser.add_argument("--no-cffi", action="store_true", help="skip the cffi module build")
    parser.add_argument("--out", type=pathlib.Path, help="keep the outputs in this directory")
    args = parser.parse_args(argv)
    source = args.source.resolve()
    if not source.is_file():
        parser.error(f"no such file: {source}")
    failed = False
    with tempfile.TemporaryDirectory(prefix="check-darwin-") as tmp:
        out = args.out or pathlib.Path(tmp)
        out.mkdir(parents=True, exist_ok=True)
        for target in args.target or TARGETS:
            started = time.monotonic()
            problems = check_target(source, target, out, with_cffi=not args.no_cffi)
            took = time.monotonic() - started
            for p in problems:
                print(f"check-darwin: FAIL {p}", file=sys.stderr)
            if problems:
                failed = True
            else:
                print(f"check-darwin: ok {target} {source.name} ({took:.1f} s)")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
