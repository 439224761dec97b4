"""What a GGUF file's header says about the memory its model needs, for ``doctor``.

A GGUF file starts with ``GGUF``, a version (2 or 3), the tensor and key-value counts, then the
key-value pairs (ggml's ``docs/gguf.md``): little-endian, strings as a u64 length and bytes,
arrays as an element type, a u64 count and the elements. Only the keys that size a model are
kept (``general.*`` and the architecture's own); arrays (the tokenizer's 32k to 250k tokens)
are skipped without being kept. No third-party package is needed, and nothing past the
key-value section is read.

:func:`kv_cache_bytes` turns the header into the KV cache a llama.cpp server allocates for a
context of ``n_ctx`` tokens at F16: ``2 (K and V) x layers x n_ctx x kv_heads x head_dim x 2
bytes``, where ``head_dim`` is ``attention.key_length`` or ``embedding_length / head_count``.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from typing import IO, Any

__all__ = ["GgufError", "context_from_argv", "kv_cache_bytes", "read_header"]

_SCALARS = {
    0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?",
    10: "<Q", 11: "<q", 12: "<d",
}  # fmt: skip
_STRING, _ARRAY = 8, 9
MAX_KV = 1 << 16  # key-value pairs: real models have a few dozen
MAX_STRING = 1 << 24


class GgufError(ValueError):
    """Not a GGUF file, or a header this reader cannot walk."""


def _read(f: IO[bytes], n: int) -> bytes:
    data = f.read(n)
    if len(data) != n:
        raise GgufError("truncated header")
    return data


def _u64(f: IO[bytes]) -> int:
    return int(struct.unpack("<Q", _read(f, 8))[0])


def _string(f: IO[bytes], keep: bool = True) -> str | None:
    n = _u64(f)
    if n > MAX_STRING:
        raise GgufError(f"string of {n} bytes")
    if not keep:
        f.seek(n, 1)
        return None
    return _read(f, n).decode("utf-8", errors="replace")


def _value(f: IO[bytes], vtype: int, keep: bool) -> Any:
    if vtype in _SCALARS:
        fmt = _SCALARS[vtype]
        return struct.unpack(fmt, _read(f, struct.calcsize(fmt)))[0]
    if vtype == _STRING:
        return _string(f, keep)
    if vtype == _ARRAY:
        etype = struct.unpack("<I", _read(f, 4))[0]
        count = _u64(f)
        if etype in _SCALARS:
            f.seek(count * struct.calcsize(_SCALARS[etype]), 1)
        else:
            for _ in range(count):
                _value(f, etype, False)
        return None
    raise GgufError(f"unknown value type {vtype}")


def read_header(path: str) -> dict[str, Any]:
    """The sizing keys of a GGUF file: ``general.*`` and ``<architecture>.*`` scalars and
    strings. Raises :class:`GgufError` (not GGUF, an unknown type) or ``OSError``."""
    with open(path, "rb") as f:
        if _read(f, 4) != b"GGUF":
            raise GgufError("not a GGUF file")
        version = struct.unpack("<I", _read(f, 4))[0]
        if version not in (2, 3):
            raise GgufError(f"GGUF version {version}")
        _u64(f)  # tensors
        n_kv = _u64(f)
        if n_kv > MAX_KV:
            raise GgufError(f"{n_kv} key-value pairs")
        out: dict[str, Any] = {"gguf.version": version}
        arch = None
        for _ in range(n_kv):
            key = _string(f) or ""
            vtype = struct.unpack("<I", _read(f, 4))[0]
            keep = key.startswith("general.") or (arch is not None and key.startswith(arch))
            value = _value(f, vtype, keep and vtype != _ARRAY)
            if keep and value is not None:
                out[key] = value
            if key == "general.architecture" and isinstance(value, str):
                arch = value + "."
        return out


def _int(meta: dict[str, Any], key: str) -> int | None:
    value = meta.get(key)
    return int(value) if isinstance(value, int) and not isinstance(value, bool) else None


def kv_cache_bytes(meta: dict[str, Any], n_ctx: int | None) -> tuple[int, int] | None:
    """``(bytes, n_ctx)``: the F16 KV cache for ``n_ctx`` tokens (``None`` or 0: the model's
    trained ``context_length``), or ``None`` where the header lacks what it takes."""
    arch = meta.get("general.architecture")
    if not isinstance(arch, str):
        return None
    layers = _int(meta, f"{arch}.block_count")
    embd = _int(meta, f"{arch}.embedding_length")
    heads = _int(meta, f"{arch}.attention.head_count")
    kv_heads = _int(meta, f"{arch}.attention.head_count_kv") or heads
    key_len = _int(meta, f"{arch}.attention.key_length")
    value_len = _int(meta, f"{arch}.attention.value_length")
    ctx = n_ctx or _int(meta, f"{arch}.context_length")
    if not layers or not kv_heads or not ctx:
        return None
    if key_len is None:
        if not embd or not heads:
            return None
        key_len = embd // heads
    value_len = value_len or key_len
    return layers * ctx * kv_heads * (key_len + value_len) * 2, ctx


def context_from_argv(argv: Sequence[str]) -> int | None:
    """The ``-c``/``--ctx-size`` of a llama-server command line (the last one wins); ``None``
    where it is absent, 0 (the model's own) or not a number."""
    found = None
    args = list(argv[1:])
    for i, arg in enumerate(args):
        for flag in ("-c", "--ctx-size"):
            if arg == flag and i + 1 < len(args):
                found = args[i + 1]
            elif arg.startswith(flag + "="):
                found = arg[len(flag) + 1 :]
    if found is None or not found.isdigit() or int(found) == 0:
        return None
    return int(found)
