"""No false WARNING from I/O (issue 14): on Linux pageout.rate is a memory signal (workingset
refaults), not pgpgout, which counts every block written.

600 MB of fsynced writes (6 x 100 MB, as the issue's dd) while a real watchdog with the default
policy samples the host: pgpgout rises by the 600 MB, and no tick reads WARNING.
"""

from __future__ import annotations

import pathlib
import subprocess
import sys

import pytest

import metalmem
from metalmem.pressure import Classifier, PressurePolicy, Signal
from metalmem.watchdog import Listeners, Watchdog

from .helpers import wait_for

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc/vmstat")

WRITER = r"""
import os, sys
block = os.urandom(1 << 20)
for i in range(6):
    fd = os.open(os.path.join(sys.argv[1], f"w{i}"), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    for _ in range(100):
        os.write(fd, block)
    os.fsync(fd)
    os.close(fd)
"""


def _vmstat(key: str) -> int:
    for line in pathlib.Path("/proc/vmstat").read_text().splitlines():
        name, _, value = line.partition(" ")
        if name == key:
            return int(value)
    raise LookupError(key)


def test_six_hundred_mb_of_fsynced_writes_raise_no_warning(tmp_path: pathlib.Path) -> None:
    policy = PressurePolicy()
    assessments: list[metalmem.Assessment] = []
    with metalmem.Sampler() as s:
        m = s.system()
        assert m.total and m.available is not None
        if m.available / m.total < policy.warning_available + policy.margin:
            pytest.skip("this host is short of memory already: WARNING would be true")
        dog = Watchdog(
            s, Classifier(policy, interval=0.2), (), interval=0.2, min_interval=0.1,
            listeners=Listeners(on_assessment=[assessments.append]),
        )  # fmt: skip
        before = _vmstat("pgpgout")
        with dog:
            wait_for(lambda: dog.state.seq >= 2, timeout=10, what="two ticks")
            subprocess.run([sys.executable, "-c", WRITER, str(tmp_path)], check=True)
            seq = dog.state.seq
            # Counters refresh once a second: let two more readings in after the writes.
            wait_for(lambda: dog.state.seq >= seq + 12, timeout=20, what="ticks after")
        written = (_vmstat("pgpgout") - before) * 1024
    # The writes were seen as block I/O (the old pageout.rate source)...
    assert written >= 550 * 10**6, written
    # ...and as no memory pressure at all.
    rates = [a.pageout_rate for a in assessments if a.pageout_rate is not None]
    assert rates, "the page-out rate was never known"
    warned = [a for a in assessments if a.level >= metalmem.Level.WARNING]
    assert not warned, [r.message for a in warned for r in a.reasons]
    assert not any(r.signal is Signal.PAGEOUT_RATE for a in assessments for r in a.reasons)
