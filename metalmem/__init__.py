"""metalmem: keep LLM inference hosts alive under memory pressure.

The public API, re-exported; nothing else lives here. Importing metalmem samples, registers,
starts and imports (kubernetes) nothing.
"""

from __future__ import annotations

from .darwin import derive_darwin
from .errors import AccessDenied, Error, NoSuchProcess, Unsupported
from .level import Level
from .sampler import (
    PSI,
    GpuMemory,
    PressureEvents,
    ProcessMemory,
    Sampler,
    SystemMemory,
    process_memory,
    system_memory,
)

__version__ = "0.1.0"

__all__ = [
    "PSI",
    "AccessDenied",
    "Error",
    "GpuMemory",
    "Level",
    "NoSuchProcess",
    "PressureEvents",
    "ProcessMemory",
    "Sampler",
    "SystemMemory",
    "Unsupported",
    "__version__",
    "derive_darwin",
    "process_memory",
    "system_memory",
]
