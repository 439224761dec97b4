"""metalmem/doctor/gguf.py: the GGUF header reader behind doctor's model-fit check, on files
written here byte by byte (ggml docs/gguf.md), and the check's verdict once the KV cache is
counted. The e2e suite reads a model that llama-server really loads
(tests/e2e/test_doctor_gguf.py)."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest

from metalmem.doctor import ModelFile, Verdict, run_checks
from metalmem.doctor.gguf import GgufError, context_from_argv, kv_cache_bytes, read_header

from .test_doctor import GiB, mac


def _s(text: str) -> bytes:
    raw = text.encode()
    return struct.pack("<Q", len(raw)) + raw


def _kv(key: str, vtype: int, payload: bytes) -> bytes:
    return _s(key) + struct.pack("<I", vtype) + payload


def write_gguf(path: Path, *, layers: int = 32, ctx: int = 8192, kv_heads: int = 8) -> Path:
    u32 = lambda v: struct.pack("<I", v)  # noqa: E731
    pairs = [
        _kv("general.architecture", 8, _s("llama")),
        _kv("general.name", 8, _s("test")),
        _kv(
            "tokenizer.ggml.tokens", 9, u32(8) + struct.pack("<Q", 3) + _s("a") + _s("b") + _s("c")
        ),
        _kv(
            "tokenizer.ggml.scores", 9, u32(6) + struct.pack("<Q", 3) + struct.pack("<3f", 0, 0, 0)
        ),
        _kv("llama.context_length", 4, u32(ctx)),
        _kv("llama.embedding_length", 4, u32(4096)),
        _kv("llama.block_count", 4, u32(layers)),
        _kv("llama.attention.head_count", 4, u32(32)),
        _kv("llama.attention.head_count_kv", 4, u32(kv_heads)),
        _kv("llama.attention.layer_norm_rms_epsilon", 6, struct.pack("<f", 1e-5)),
    ]
    path.write_bytes(b"GGUF" + u32(3) + struct.pack("<QQ", 0, len(pairs)) + b"".join(pairs))
    return path


def test_header_and_kv_cache_of_a_llama_8b_shape(tmp_path: Path) -> None:
    meta = read_header(str(write_gguf(tmp_path / "m.gguf")))
    assert meta["general.architecture"] == "llama" and meta["llama.block_count"] == 32
    assert "tokenizer.ggml.tokens" not in meta
    # 2 x 32 layers x 8192 tokens x 8 kv heads x 128 x 2 bytes = 1 GiB (Llama 3 8B at 8k).
    assert kv_cache_bytes(meta, None) == (1 * GiB, 8192)
    assert kv_cache_bytes(meta, 4096) == (GiB // 2, 4096)
    assert kv_cache_bytes({"general.architecture": "llama"}, 4096) is None


@pytest.mark.parametrize("data", [b"", b"GGML", b"GGUF\x09\x00\x00\x00", b"GGUF\x03\x00\x00"])
def test_what_is_not_a_gguf_header_is_refused(tmp_path: Path, data: bytes) -> None:
    (tmp_path / "x").write_bytes(data)
    with pytest.raises(GgufError):
        read_header(str(tmp_path / "x"))


def test_context_from_the_command_line() -> None:
    assert context_from_argv(["llama-server", "-m", "x", "-c", "4096"]) == 4096
    assert context_from_argv(["llama-server", "--ctx-size=2048", "-c", "0"]) is None
    assert context_from_argv(["llama-server"]) is None


def test_model_fit_counts_the_kv_cache_the_header_implies() -> None:
    # 95 GiB of weights fit under 90 % of the 107.5 GiB ceiling; with a 10 GiB KV cache they
    # do not, and the finding says where the number came from.
    alone = ModelFile("m", "/models/m.gguf", 95 * GiB)
    with_kv = ModelFile("m", "/models/m.gguf", 95 * GiB, None, 10 * GiB, 81920)
    assert {f.check: f for f in run_checks(mac(models=(alone,), targets=1))}[
        "gpu.model_fit"
    ].verdict == Verdict.OK
    f = {f.check: f for f in run_checks(mac(models=(with_kv,), targets=1))}["gpu.model_fit"]
    assert f.verdict == Verdict.WARN, f
    assert "10.0 GiB KV cache at 81920 tokens (its GGUF header)" in f.finding, f
