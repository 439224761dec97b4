"""The Prometheus text formats, written directly (issue 15).

prometheus-client renders a scrape by building a ``Metric`` and a ``Sample`` per series and
formatting each one anew: at one scrape a second that was most of the agent's CPU, and
importing it (with ``http.server`` and ``urllib``) ~7-12 MiB of its RSS. Here a family's
header lines are built once and a sample's line is cached while its labels and value repeat
(counters at rest, thresholds, modes), so a scrape is mostly dictionary lookups and one join.

The output is byte for byte what prometheus-client 0.26 writes for the same families
(``exposition.generate_latest`` and ``openmetrics.exposition.generate_latest``); the tests
compare the two. Only what metalmem exposes is covered: legacy metric and label names (no
UTF-8 name escaping), no timestamps, exemplars or native histograms.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import NamedTuple, cast

__all__ = [
    "CONTENT_TYPE_OPENMETRICS",
    "CONTENT_TYPE_TEXT",
    "Family",
    "Series",
    "float_text",
    "render",
    "wants_openmetrics",
]

CONTENT_TYPE_TEXT = "text/plain; version=0.0.4; charset=utf-8"
CONTENT_TYPE_OPENMETRICS = "application/openmetrics-text; version=1.0.0; charset=utf-8"


class Family(NamedTuple):
    """One exported family: its exposed name (counters with ``_total``), type, help, labels."""

    name: str
    kind: str  # gauge | counter | histogram
    doc: str
    labels: tuple[str, ...] = ()
    unit: str = ""

    @property
    def base(self) -> str:
        """The OpenMetrics family name: a counter's without ``_total``."""
        return self.name.removesuffix("_total") if self.kind == "counter" else self.name


Series = tuple[str, tuple[str, ...], tuple[str, ...], float]
"""One sample: ``(sample name, label names, label values, value)``. The sample name is the
family's for gauges and counters (``..._total``), ``_bucket``/``_count``/``_sum`` for a
histogram's."""


def float_text(value: float) -> str:
    """A value as Go (and so Prometheus and prometheus-client) prints it."""
    d = float(value)
    if d == math.inf:
        return "+Inf"
    if d == -math.inf:
        return "-Inf"
    if d != d:
        return "NaN"
    s = repr(d)
    dot = s.find(".")
    if d > 0 and dot > 6:  # Go switches to exponents sooner than Python
        mantissa = f"{s[0]}.{s[1:dot]}{s[dot + 1 :]}".rstrip("0.")
        return f"{mantissa}e+{dot - 1:02d}"
    return s


def _escape_value(v: str) -> str:
    return v.replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\"")


_HEADERS: dict[tuple[Family, bool], str] = {}


def _header(family: Family, openmetrics: bool) -> str:
    key = (family, openmetrics)
    text = _HEADERS.get(key)
    if text is None:
        if openmetrics:
            name = family.base
            text = f"# HELP {name} {_escape_value(family.doc)}\n# TYPE {name} {family.kind}\n"
            if family.unit:
                text += f"# UNIT {name} {family.unit}\n"
        else:
            doc = family.doc.replace("\\", r"\\").replace("\n", r"\n")
            text = f"# HELP {family.name} {doc}\n# TYPE {family.name} {family.kind}\n"
        _HEADERS[key] = text
    return text


_LINES: dict[tuple[str, tuple[str, ...], tuple[str, ...], type, float], str] = {}
_LINES_MAX = 8192


def _line(series: Series) -> str:
    name, names, values, value = series
    key = (name, names, values, value.__class__, value)  # 1 and 1.0 hash alike, print alike
    line = _LINES.get(key)
    if line is None:
        if len(_LINES) >= _LINES_MAX:
            _LINES.clear()  # values that moved on; the current ones come back at once
        if names:
            pairs = sorted(zip(names, values, strict=True))
            labels = "{" + ",".join(f'{k}="{_escape_value(v)}"' for k, v in pairs) + "}"
        else:
            labels = ""
        line = f"{name}{labels} {float_text(value)}\n"
        if value or value.__class__ is not float:  # 0.0 == -0.0, but they print apart
            _LINES[key] = line
    return line


_BLOCKS: dict[tuple[Family, bool], tuple[tuple[Series, ...], str]] = {}


def render(families: Iterable[tuple[Family, Sequence[Series]]], openmetrics: bool) -> bytes:
    """The exposition of ``families`` in order, each with its samples in order.

    A family whose samples come as the same tuple object as in the last call (a memoised
    section of the collector: immutable, so unchanged) reuses that call's text."""
    out: list[str] = []
    append = out.append
    for family, series in families:
        if series.__class__ is tuple:
            block = _BLOCKS.get((family, openmetrics))
            if block is None or block[0] is not series:
                text = _header(family, openmetrics) + "".join(_line(s) for s in series)
                block = _BLOCKS[(family, openmetrics)] = (cast(tuple[Series, ...], series), text)
            append(block[1])
            continue
        append(_header(family, openmetrics))
        for s in series:
            append(_LINES.get((s[0], s[1], s[2], s[3].__class__, s[3])) or _line(s))
    if openmetrics:
        append("# EOF\n")
    return "".join(out).encode()


def wants_openmetrics(accept: str | None) -> bool:
    """Whether an ``Accept`` header asks for OpenMetrics 1.x, as prometheus-client decides
    (Prometheus lists it first by default): a media type without a version, or one >= 1."""
    for part in (accept or "").split(","):
        media, *params = part.split(";")
        if media.strip() != "application/openmetrics-text":
            continue
        version = next(
            (v.strip() for k, _, v in (p.partition("=") for p in params) if k.strip() == "version"),
            "",
        )
        major = version.split(".", 1)[0]
        if not version or (major.isdigit() and int(major) >= 1):
            return True
    return False
