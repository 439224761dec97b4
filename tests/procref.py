"""An independent pure-Python reading of /proc text formats: the truth the C parsers are
checked against (psutil checks itself against `free`). Deliberately simple and strict: only
complete lines count, the first occurrence of a key wins, numbers must fit in 64 bits.
"""

from __future__ import annotations

import re

_U64 = 2**64 - 1
_KV_KB = re.compile(rb"^([^:\n]*):[ \t]*([0-9]+)[ \t]*(kB)?[ \t]*$")
_DEC = rb"([0-9]+(?:\.[0-9]+)?)"
_PSI = re.compile(
    rb"^(some|full) [ \t]*avg10="
    + _DEC
    + rb"[ \t]*avg60="
    + _DEC
    + rb"[ \t]*avg300="
    + _DEC
    + rb"[ \t]*total=([0-9]+)[ \t]*$"
)


def complete_lines(data: bytes) -> list[bytes]:
    lines = data.split(b"\n")
    return lines[:-1]  # the part after the last newline is incomplete


def kv_kb(data: bytes) -> dict[str, int]:
    out: dict[str, int] = {}
    for line in complete_lines(data):
        m = _KV_KB.match(line)
        if not m:
            continue
        key = m.group(1).decode("latin-1")
        value = int(m.group(2))
        if m.group(3):
            value *= 1024
        if value > _U64 or key in out:
            continue
        out[key] = value
    return out


def meminfo(data: bytes) -> dict[str, int | None]:
    kv = kv_kb(data)
    swap_total, swap_free = kv.get("SwapTotal"), kv.get("SwapFree")
    swap_used = None
    if swap_total is not None and swap_free is not None and swap_free <= swap_total:
        swap_used = swap_total - swap_free
    out: dict[str, int | None] = {
        "total": kv.get("MemTotal"),
        "available": kv.get("MemAvailable"),
        "free": kv.get("MemFree"),
        "wired": kv.get("Unevictable"),
        "compressed": kv.get("Zswap"),
        "swap_total": swap_total if swap_used is not None else None,
        "swap_used": swap_used,
    }
    total = out["total"]
    if total is not None and any(
        v is not None and v > total for v in (out["available"], out["free"])
    ):
        out["total"] = out["available"] = out["free"] = None
    return out


def psi(data: bytes) -> dict[str, tuple[float, float, int]]:
    out: dict[str, tuple[float, float, int]] = {}
    for line in complete_lines(data):
        m = _PSI.match(line)
        if not m or m.group(1).decode() in out:
            continue
        a10, a60, a300 = (float(m.group(i)) for i in (2, 3, 4))
        total = int(m.group(5))
        if max(a10, a60, a300) > 100 or total > _U64 or int(float(m.group(2))) > 2**40:
            continue
        out[m.group(1).decode()] = (a10, a60, total)
    return out


def statm(data: bytes, page_size: int) -> tuple[int, int | None] | None:
    """(rss, anon) in bytes, or None when the first line does not parse."""
    lines = complete_lines(data)
    if not lines:
        return None
    fields = lines[0].split()
    head = re.match(rb"^[ \t]*([0-9]+)[ \t]+([0-9]+)[ \t]+([0-9]+)(?:[ \t]|$)", lines[0])
    if head is None:
        return None
    fields = list(head.groups())
    size, resident, shared = (int(f) for f in fields[:3])
    if max(size, resident, shared) > _U64 or resident * page_size > _U64:
        return None
    anon = (resident - shared) * page_size if shared <= resident else None
    return resident * page_size, anon


def status(data: bytes) -> dict[str, int | None]:
    kv = kv_kb(data)
    lck, pin = kv.get("VmLck"), kv.get("VmPin")
    return {
        "swap": kv.get("VmSwap"),
        "peak": kv.get("VmHWM"),
        "wired": lck + pin if lck is not None and pin is not None and lck + pin <= _U64 else None,
    }


def stat_start_ticks(data: bytes) -> int | None:
    """Field 22 of /proc/PID/stat counted after the last ')'."""
    close = data.rfind(b")")
    if close < 0:
        return None
    rest = data[close + 1 :].split(b"\n", 1)[0]
    if not rest.startswith(b" "):
        return None
    fields = rest[1:].split(b" ")
    if len(fields) < 20 or any(not f for f in fields[:20]):
        return None
    if not re.fullmatch(rb"[0-9]+", fields[19]):
        return None
    value = int(fields[19])
    return value if value <= _U64 else None
