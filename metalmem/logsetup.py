"""The agent's log output: the library's ``key=value`` lines as text or as JSON objects.

The library only logs (``logging.getLogger("metalmem...")``); where the lines go is the
application's choice. ``metalmem-agent`` calls :func:`setup_logging`; a host application may
too, or route the ``metalmem`` loggers itself.
"""

from __future__ import annotations

import json
import logging
import re
import sys
from collections.abc import Mapping
from typing import IO, Any

from .systemd import JournalPriority, stderr_is_journal

__all__ = ["JsonFormatter", "setup_logging"]

# key=value pairs as the library writes them: values are bare tokens or %r-quoted strings.
_PAIRS = re.compile(r"""(?:^|\s)([A-Za-z_]\w*)=('(?:[^'\\]|\\.)*'|"(?:[^"\\]|\\.)*"|\S*)""")


class JsonFormatter(logging.Formatter):
    """One JSON object per line; ``key=value`` pairs of the message become fields too."""

    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        doc: dict[str, Any] = {
            "time": round(record.created, 3),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": message,
        }
        for key, value in _PAIRS.findall(message):
            if key not in doc:
                doc[key] = value[1:-1] if value[:1] in "'\"" and len(value) > 1 else value
        if record.exc_info:
            doc["exception"] = self.formatException(record.exc_info)
        return json.dumps(doc, separators=(",", ":"))


def setup_logging(
    fmt: str, level: str, stream: IO[str] | None = None, environ: Mapping[str, str] | None = None
) -> None:
    """Route the ``metalmem`` loggers to ``stream`` (stderr) in ``fmt`` (idempotent). When
    ``environ`` (the process's, which only the caller reads) says ``stream`` is the journal,
    each line gets its syslog priority."""
    handler = logging.StreamHandler(stream or sys.stderr)
    formatter: logging.Formatter = (
        JsonFormatter()
        if fmt == "json"
        else logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s")
    )
    if environ is not None and stderr_is_journal(
        environ, handler.stream
    ):  # `journalctl -p` filters on <N>
        formatter = JournalPriority(formatter)
    handler.setFormatter(formatter)
    root = logging.getLogger("metalmem")
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    root.propagate = False
