"""Scale: the full tick (sample, assess, plan, publish, collect) for 1, 2, 4, ... 1024 live
targets. report.py fits a line through the medians and draws docs/performance-scale.png.

The targets are ``sleep`` children (conftest.sleepers): a process's sampling cost is a few
/proc reads whatever it runs, and 1024 Python children would not fit a 2-core machine.
``METALMEM_BENCH_SCALE_MAX`` caps the sweep.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

import metalmem

from .common import SKIP
from .conftest import Loop, make_targets, scale_sizes

pytestmark = pytest.mark.skipif("scale" in SKIP, reason="METALMEM_BENCH_SKIP contains scale")


@pytest.fixture(scope="module")
def sampler() -> Iterator[metalmem.Sampler]:
    with metalmem.Sampler() as s:
        yield s


@pytest.mark.parametrize("n", scale_sizes())
def test_scale_tick(benchmark: Any, sampler: metalmem.Sampler, sleepers: list[int], n: int) -> None:
    benchmark.group = "scale"
    benchmark.extra_info["targets"] = n
    loop = Loop(sampler, make_targets(sampler, sleepers[:n]), critical=False)
    assert benchmark(loop.full_tick) > 0
    assert len(loop.dog.state.processes) == n
