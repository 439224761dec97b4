"""Pressure levels: the vocabulary shared by the sampler (the OS's own level) and the classifier."""

from __future__ import annotations

import enum


class Level(enum.IntEnum):
    """Memory pressure level; ordered, so ``max()`` of votes is the assessment."""

    NORMAL = 0
    WARNING = 1
    CRITICAL = 2

    def __str__(self) -> str:
        return self.name
