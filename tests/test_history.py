"""The published history (metalmem/history.py): each State's snapshot stays as it was, and a
tick publishes it without copying the points (issue 15: the tuple copy grew with history)."""

from __future__ import annotations

import pytest

import metalmem
from metalmem.history import Ring
from metalmem.pressure import Classifier
from metalmem.watchdog import Watchdog


def test_views_keep_their_moment_across_appends_and_rollovers() -> None:
    ring: Ring[int] = Ring(3)
    views = []
    for i in range(20):  # rolls over to a new list every 6 appends
        ring.append(i)
        views.append((i, ring.view()))
    for i, view in views:
        want = tuple(range(max(0, i - 2), i + 1))
        assert tuple(view) == want and len(view) == len(want)
        assert view == want and view[-1] == i and view[0] == want[0]
        assert view[:] == want and view[1:] == want[1:]
    with pytest.raises(IndexError):
        views[-1][1][3]
    assert len(ring) == 3


def test_capacity_one_and_refusal() -> None:
    ring: Ring[str] = Ring(1)
    for s in "abcd":
        ring.append(s)
        assert tuple(ring.view()) == (s,)
    with pytest.raises(ValueError):
        Ring(0)


def test_ticks_share_the_points_instead_of_copying_them(sampler: metalmem.Sampler) -> None:
    dog = Watchdog(sampler, Classifier(), interval=1.0, history=300)
    states = [dog.tick() for _ in range(50)]
    assert [len(s.history) for s in states] == list(range(1, 51))
    assert all(s.history[-1].timestamp == s.heartbeat for s in states)
    # Every published view is a window on one list the loop only appends to: no per-tick copy.
    assert len({id(s.history._items) for s in states}) == 1
    assert states[10].history == tuple(states[49].history)[:11]
