"""Fixtures of the end-to-end suite: the cached llama-server, tiny models, servers reaped."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from . import llama


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        item.add_marker(pytest.mark.slow)


@pytest.fixture(scope="session")
def llama_server() -> Path:
    exe = llama.binary()
    if exe is None:
        pytest.skip("llama-server is not built: run make e2e (tests/e2e/llama_build.py)")
    return exe


@pytest.fixture(scope="session")
def models(tmp_path_factory: pytest.TempPathFactory, llama_server: Path) -> dict[str, Path]:
    """The suite's models, written once per session: ``tiny`` (17 MB, n_embd 64) and ``big``
    (153 MB, n_embd 512), in a directory of their own."""
    d = tmp_path_factory.mktemp("models")
    return {
        "tiny": llama.write_model(d / "tiny.gguf"),
        "big": llama.write_model(d / "big.gguf", n_embd=512, seed=1),
    }


@pytest.fixture
def servers(tmp_path: Path) -> Iterator[list[llama.LlamaServer]]:
    """A list the test appends its servers to; every one is stopped at the end."""
    started: list[llama.LlamaServer] = []
    yield started
    for s in reversed(started):
        s.stop()
