"""Fixtures shared by the tests that sample the live host or start children."""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Iterator

import pytest

# `make test-darwin-shim` (tests/darwin_shim/build.py) sets this to the directory of the shim
# build of csrc/darwin.c: it becomes metalmem._native before metalmem is first imported, so
# the Sampler runs on the darwin backend here. Nothing else changes.
if _shim_dir := os.environ.get("METALMEM_DARWIN_SHIM"):
    if "metalmem" in sys.modules:
        raise RuntimeError("METALMEM_DARWIN_SHIM is set but metalmem was imported before it")
    sys.path.insert(0, _shim_dir)
    sys.modules["metalmem._native"] = importlib.import_module("_metalmem_darwin_shim")

import metalmem

from .helpers import Children
from .kubereal import RealKube, install, start_server, stop_server

# tests/e2e/ runs real llama-server processes: `make e2e` builds the server and sets this.
# `make test` leaves the directory out, so its time budget holds on a fresh machine.
collect_ignore = [] if os.environ.get("METALMEM_E2E") else ["e2e"]  # extended below


@pytest.fixture
def sampler() -> Iterator[metalmem.Sampler]:
    """A Sampler of this host, closed after the test."""
    with metalmem.Sampler() as s:
        yield s


@pytest.fixture
def children() -> Iterator[Children]:
    """Spawns the test's own children and reaps every one of them, by pid, at the end."""
    with Children() as c:
        yield c


# --- the real kube-apiserver of `make e2e-kube` --------------------------------------------------
# METALMEM_KUBE_APISERVER names the binary tests/kube_apiserver/build.sh built. Without it the
# end-to-end suite (tests/e2e_kube/) is not collected and the "real" contract tests skip, so the
# default `make test` never needs Go.
KUBE_APISERVER = os.environ.get("METALMEM_KUBE_APISERVER", "")
if not KUBE_APISERVER:
    collect_ignore.append("e2e_kube")


@pytest.fixture(scope="session")
def real_kube(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RealKube]:
    """One real kube-apiserver (embedded etcd) for the session, with LLMKube's CRD and
    deploy/kubernetes/rbac.yaml applied; stopped by SIGTERM at the end, which must be clean."""
    if not KUBE_APISERVER:
        pytest.skip("real kube-apiserver: METALMEM_KUBE_APISERVER unset (run `make e2e-kube`)")
    tmp = tmp_path_factory.mktemp("kube-apiserver")
    kube = start_server(KUBE_APISERVER, tmp / "kube-apiserver.log")
    try:
        install(kube, tmp)
        print(f"\nkube-apiserver ready in {kube.ready['start_seconds']:.1f} s at {kube.url}")
        yield kube
    finally:
        code = stop_server(kube)
    assert code == 0, f"kube-apiserver did not stop cleanly on SIGTERM (exit {code})"
