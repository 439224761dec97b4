"""Names a package loads from its submodules on first use (PEP 562), so that importing the
package costs only what is used (issue 15: the agent's RSS; issue 20: ``import metalmem``)."""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any

__all__ = ["lazy_attributes"]


def lazy_attributes(
    package: str, where: Mapping[str, str]
) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """A module's ``__getattr__`` and ``__dir__`` for ``where`` (name -> submodule): the first
    access imports the submodule and binds the name in the package, so later ones are plain
    attribute reads."""
    module = importlib.import_module(package)

    def getattr_(name: str) -> Any:
        sub = where.get(name)
        if sub is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(f".{sub}", package), name)
        setattr(module, name, value)
        return value

    def dir_() -> list[str]:
        return sorted({*vars(module), *where})

    return getattr_, dir_
