"""Build csrc/darwin.c against the Apple API shim, run the tests on it, report its coverage.

``python tests/darwin_shim/build.py test`` (what ``make test-darwin-shim`` runs):

1. **layout**: ``layout.c`` asserts the sizes, offsets and constants of Apple's types that
   darwin.c relies on. It is compiled with zig for aarch64-macos and x86_64-macos against the
   SDK headers zig ships (the ones ``make check-darwin`` uses) and with the host compiler
   against ``include/``: both pass, so the shim's types are Apple's where darwin.c looks.
2. **build**: the cffi module ``_metalmem_darwin_shim``: csrc/metalmem.h's CDEF block plus
   shim.h's, over ``darwin_unit.c`` (darwin.c unchanged, with the shim's renames in force) and
   ``shim.c``, compiled with gcc's ``--coverage`` into ``build/darwin-shim/``.
3. **pytest**: the darwin-backend tests and the contract tests (the same
   tests/test_sampler_contract.py and tests/test_contracts.py the Linux backend passes) in a
   fresh interpreter with
   ``METALMEM_DARWIN_SHIM`` set: tests/conftest.py then installs the module as
   ``metalmem._native`` before metalmem is imported, so the Sampler runs on darwin.c.
4. **coverage**: gcov's line and branch figures for csrc/darwin.c (``--min-lines`` fails the
   run below a floor).

Needs gcc and gcov (gcc's own). Exit status: 0 passed, 1 failed, 2 usage.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import pathlib
import re
import shutil
import subprocess
import sys

HERE = pathlib.Path(__file__).resolve().parent
ROOT = HERE.parents[1]
CSRC = ROOT / "csrc"
OUT = ROOT / "build" / "darwin-shim"
MODULE = "_metalmem_darwin_shim"
ZIG_TARGETS = ("aarch64-macos.11.0", "x86_64-macos.10.13")
CFLAGS = ["-std=c11", "-O0", "-g", "-Wall", "-Wextra", "-Werror", "-D_DEFAULT_SOURCE"]
TESTS = [
    "tests/test_darwin_shim.py",
    "tests/test_sampler_contract.py",
    "tests/test_contracts.py",
    "tests/test_darwin.py",
]


def _run(cmd: list[str], **kw: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, check=False, **kw)  # type: ignore[call-overload,no-any-return]


def check_layout() -> list[str]:
    """Compile layout.c for macOS (zig, Apple's headers) and here (the shim's)."""
    problems = []
    for target in ZIG_TARGETS:
        r = _run(
            [sys.executable, "-m", "ziglang", "cc", "-target", target, *CFLAGS[:1], "-Werror",
             "-c", "-o", os.devnull, str(HERE / "layout.c")]
        )  # fmt: skip
        if r.returncode:
            problems.append(f"layout for {target} (Apple's headers):\n{r.stderr}")
    r = _run(["gcc", *CFLAGS, f"-I{HERE / 'include'}", "-fsyntax-only", str(HERE / "layout.c")])
    if r.returncode:
        problems.append(f"layout against the shim's headers:\n{r.stderr}")
    return problems


def _cdef_block(path: pathlib.Path, begin: str, end: str) -> str:
    text = path.read_text()
    return text[text.index(begin) + len(begin) : text.index(end)]


def build() -> pathlib.Path:
    """Compile the shim module with coverage; return the directory holding it."""
    from cffi import FFI

    sys.path.insert(0, str(CSRC))
    from build_ffi import read_cdef

    ffi = FFI()
    ffi.cdef(
        read_cdef() + _cdef_block(HERE / "shim.h", "/* BEGIN SHIM CDEF */", "/* END SHIM CDEF */")
    )
    ffi.set_source(
        MODULE,
        '#include "metalmem.h"\n#include "shim.h"',
        sources=[str(HERE / "darwin_unit.c"), str(HERE / "shim.c")],
        include_dirs=[str(HERE / "include"), str(CSRC), str(HERE)],
        extra_compile_args=[*CFLAGS, "--coverage"],
        extra_link_args=["--coverage", "-Wl,-Bsymbolic"],
        libraries=["pthread"],
    )
    OUT.mkdir(parents=True, exist_ok=True)
    # Objects too: distutils compares a source's mtime only, and darwin_unit.c includes
    # darwin.c, whose edits it would not see.
    for stale in [*OUT.rglob("*.gcda"), *OUT.rglob("*.o")]:
        stale.unlink()
    with contextlib.redirect_stdout(io.StringIO()):
        ffi.compile(tmpdir=str(OUT))
    return OUT


def run_tests(pytest_args: list[str]) -> int:
    """The darwin-backend tests in a fresh interpreter that loads the shim module."""
    env = dict(os.environ, METALMEM_DARWIN_SHIM=str(OUT))
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *TESTS, *pytest_args]
    return subprocess.run(cmd, cwd=ROOT, env=env, check=False).returncode


def coverage() -> tuple[float, int, float, int, str]:
    """gcov's (line %, lines, branch-taken %, branches, report) for csrc/darwin.c."""
    gcda = next(OUT.rglob("darwin_unit.gcda"))
    report_dir = OUT / "gcov"
    shutil.rmtree(report_dir, ignore_errors=True)
    report_dir.mkdir()
    r = _run(
        ["gcov", "-b", "-c", "-o", str(gcda.parent), str(HERE / "darwin_unit.c")], cwd=report_dir
    )
    if r.returncode:
        raise RuntimeError(f"gcov failed: {r.stderr}")
    block = r.stdout.split("File '")
    mine = next(b for b in block if b.split("'", 1)[0].endswith("csrc/darwin.c"))
    lines = re.search(r"Lines executed:([\d.]+)% of (\d+)", mine)
    taken = re.search(r"Taken at least once:([\d.]+)% of (\d+)", mine)
    if not lines or not taken:
        raise RuntimeError(f"unexpected gcov output:\n{mine}")
    return float(lines[1]), int(lines[2]), float(taken[1]), int(taken[2]), mine.strip()


def uncovered_lines() -> list[str]:
    """The darwin.c lines gcov marks as never executed (`#####`), for the report."""
    gcov = next((OUT / "gcov").glob("darwin.c.gcov"), None)
    if gcov is None:
        return []
    return [
        line.strip() for line in gcov.read_text().splitlines() if line.lstrip().startswith("#####")
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("step", choices=["layout", "build", "test"], help="what to run")
    parser.add_argument("--min-lines", type=float, default=0.0, help="fail below this line %%")
    parser.add_argument("pytest_args", nargs="*", help="extra pytest arguments (after --)")
    args = parser.parse_args(argv)
    if not sys.platform.startswith("linux"):
        # The shim wraps glibc's headers (#include_next); on a Mac the real APIs run instead.
        print(f"darwin-shim: skipped on {sys.platform}: the shim build needs Linux")
        return 0
    problems = check_layout()
    for p in problems:
        print(f"darwin-shim: FAIL {p}", file=sys.stderr)
    if problems:
        return 1
    print(f"darwin-shim: layout of Apple's types agrees ({', '.join(ZIG_TARGETS)} and here)")
    if args.step == "layout":
        return 0
    build()
    if args.step == "build":
        return 0
    rc = run_tests(args.pytest_args)
    line_pct, n_lines, branch_pct, n_branches, _ = coverage()
    print(
        f"darwin-shim: csrc/darwin.c coverage: lines {line_pct:.1f}% of {n_lines}, "
        f"branches taken {branch_pct:.1f}% of {n_branches} (gcov; build/darwin-shim/gcov/)"
    )
    for line in uncovered_lines():
        print(f"darwin-shim: never executed: {line}")
    if rc == 0 and line_pct < args.min_lines:
        print(f"darwin-shim: FAIL line coverage below {args.min_lines}%", file=sys.stderr)
        return 1
    return 1 if rc else 0


if __name__ == "__main__":
    sys.exit(main())
