"""doctor's model-fit check on a model that a real llama-server loaded: the KV cache it reads
from the GGUF header (metalmem/doctor/gguf.py) is the one llama-server reports allocating."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from metalmem.doctor.gguf import kv_cache_bytes, read_header

from .llama import LlamaServer, MiB

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="/proc")
AGENT = str(Path(sys.executable).with_name("metalmem-agent"))


def test_doctor_sizes_the_kv_cache_from_the_gguf_header(
    servers: list[LlamaServer], tmp_path: Path, models: dict[str, Path]
) -> None:
    model = models["big"]
    server = LlamaServer(
        ["-m", str(model), "-c", "2048", "-t", "1", "--no-warmup", "-np", "1", "-lv", "4"],
        tmp_path / "server.log",
    )
    servers.append(server)
    server.wait_healthy()
    kv, ctx = kv_cache_bytes(read_header(str(model)), 2048) or (None, None)
    assert ctx == 2048 and kv == 2 * 2 * 2048 * 512 * 2  # K and V, 2 layers, F16
    # llama.cpp's own figure (at -lv 4): "llama_kv_cache: CPU KV buffer size = 8.00 MiB"
    sizes = re.findall(r"KV buffer size\s*=\s*([\d.]+) MiB", server.log())
    assert sizes, server.log()[-3000:]
    assert sum(float(x) for x in sizes) * MiB == kv, sizes

    config = tmp_path / "agent.toml"
    config.write_text(f'[[target]]\nname = "big"\npid = {server.pid}\n')
    r = subprocess.run(
        [AGENT, "doctor", "--json", "--config", str(config)],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert r.returncode in (0, 1), r.stderr
    doc = json.loads(r.stdout)
    (fit,) = [f for f in doc["checks"] if f["check"] == "gpu.model_fit"]
    assert str(model) in fit["finding"], fit
    assert "8.0 MiB KV cache at 2048 tokens (its GGUF header)" in fit["finding"], fit
