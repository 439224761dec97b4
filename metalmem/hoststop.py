"""A host application's own stop action, as the watchdog's stopper.

An owner that manages its processes (an orchestrator and its model servers) stops its own
children: terminate, wait, reap, release what it holds. The watchdog still asks the safety gate
right before the stopper runs, so the action is only ever handed a victim the gate passed.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from .errors import NoSuchProcess
from .process import StopRecord, StopResult
from .procstate import is_zombie
from .sampler import Sampler
from .targets import Target
from .watchdog import Stopper

__all__ = ["StopAction", "host_stopper"]

StopAction = Callable[[Target], object]
"""Stops one target the host owns and returns once it has exited, or returns a
:class:`~metalmem.StopRecord` saying what happened."""


def host_stopper(action: StopAction) -> Stopper:
    """The watchdog stopper that calls ``action``. Unless it returns a StopRecord, the target's
    exit is checked here: gone (or a zombie) is ``terminated``, still running ``failed``."""

    def stopper(target: Target, sampler: Sampler) -> StopRecord:
        started = time.monotonic()
        outcome = action(target)
        if isinstance(outcome, StopRecord):
            return outcome
        try:
            gone = sampler.process(target.pid).start_time != target.start_time
        except NoSuchProcess:
            gone = True
        gone = gone or is_zombie(sampler.root, target.pid)
        result, message = (
            (StopResult.TERMINATED, "the host's stop action ended it")
            if gone
            else (StopResult.FAILED, "still running after the host's stop action")
        )
        return StopRecord(
            target.key, target.pid, target.start_time, result, ("host",),
            time.monotonic() - started, message,
        )  # fmt: skip

    return stopper
