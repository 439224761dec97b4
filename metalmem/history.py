"""A bounded history that is published every tick without being copied every tick.

The loop publishes an immutable State per tick. Copying a 300-point deque into a tuple for it
cost a per-tick copy that grows with the history (issue 15). Here the points live in a list
the writer only ever appends to; a snapshot is (list, start, stop) and stays valid for ever,
because no published slot is ever changed. When the list reaches twice the capacity the writer
starts a new one with the last ``capacity`` points: one copy per ``capacity`` appends, O(1)
amortised, and old snapshots keep the old list.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Generic, TypeVar, overload

T = TypeVar("T")


class HistoryView(Sequence[T], Generic[T]):
    """An immutable window onto a Ring at one moment: what a State publishes."""

    __slots__ = ("_items", "_start", "_stop")

    def __init__(self, items: list[T], start: int, stop: int) -> None:
        self._items, self._start, self._stop = items, start, stop

    def __len__(self) -> int:
        return self._stop - self._start

    @overload
    def __getitem__(self, index: int) -> T: ...
    @overload
    def __getitem__(self, index: slice) -> tuple[T, ...]: ...
    def __getitem__(self, index: int | slice) -> T | tuple[T, ...]:
        if isinstance(index, slice):
            return tuple(self._items[self._start : self._stop][index])
        n = self._stop - self._start
        if index < 0:
            index += n
        if not 0 <= index < n:
            raise IndexError("history index out of range")
        return self._items[self._start + index]

    def __iter__(self) -> Iterator[T]:
        items = self._items
        for i in range(self._start, self._stop):
            yield items[i]

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Sequence) and not isinstance(other, str | bytes):
            return len(self) == len(other) and all(
                a == b for a, b in zip(self, other, strict=False)
            )
        return NotImplemented

    def __hash__(self) -> int:
        return hash(tuple(self))

    def __repr__(self) -> str:
        return f"HistoryView({list(self)!r})"


class Ring(Generic[T]):
    """The writer's side: append one point per tick, publish a HistoryView of the last
    ``capacity`` points. Single writer (the loop thread); views may be read from any thread."""

    __slots__ = ("_items", "capacity")

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError("history capacity must be >= 1")
        self.capacity = capacity
        self._items: list[T] = []

    def append(self, item: T) -> None:
        items = self._items
        if len(items) >= 2 * self.capacity:
            # Start a new list: published views keep the old one, unchanged.
            items = self._items = items[-(self.capacity - 1) :] if self.capacity > 1 else []
        items.append(item)

    def view(self) -> HistoryView[T]:
        n = len(self._items)
        return HistoryView(self._items, max(0, n - self.capacity), n)

    def clear(self) -> None:
        self._items = []

    def __len__(self) -> int:
        return min(len(self._items), self.capacity)
