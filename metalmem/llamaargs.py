"""Reading llama-server's command line: shared by discovery (names) and router detection."""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["flag_value"]


def flag_value(argv: Sequence[str], flags: Sequence[str]) -> str | None:
    """The value of the last ``FLAG VALUE`` or ``FLAG=VALUE`` in argv (llama.cpp's arg parser
    lets a later flag win)."""
    found = None
    for i, arg in enumerate(argv):
        for flag in flags:
            if arg == flag and i + 1 < len(argv):
                found = argv[i + 1]
            elif arg.startswith(flag + "="):
                found = arg[len(flag) + 1 :]
    return found
