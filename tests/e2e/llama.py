"""Real llama-server processes for the end-to-end suite: tiny GGUF models and a server wrapper.

Models are written at test time with PyPI's ``gguf`` package around the vocabulary-only GGUF
that ships in llama.cpp's tree (kept beside the cached binary by ``llama_build.py``): a
``llama``-architecture model with random weights, sized per test (``n_embd``, ``n_layer``).
Nothing here is vendored from llama.cpp; the binary is built on demand into a cache.

:class:`LlamaServer` starts one ``llama-server`` (a single model, or the router with
``--models-dir``), waits for ``/health``, keeps its log in a file, and stops it by pid at the
end (SIGTERM, then SIGKILL), whatever the test did.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from . import llama_build

MiB = 1 << 20


def binary() -> Path | None:
    """The cached llama-server, or None where ``make e2e`` has not built it."""
    return llama_build.server_path() if llama_build.cached() else None


def write_model(
    path: Path,
    *,
    n_embd: int = 64,
    n_layer: int = 2,
    n_ff: int | None = None,
    n_head: int = 4,
    n_ctx: int = 2048,
    seed: int = 0,
) -> Path:
    """A tiny llama model with random weights around llama.cpp's SentencePiece vocabulary.

    Size in bytes is about ``4 * (2 * 32000 * n_embd + n_layer * (4 * n_embd**2 + 3 * n_embd *
    n_ff))``: 17 MB at the defaults, 152 MB at ``n_embd=512``. All tensors F32.
    """
    import gguf  # the e2e extra: pip install -e '.[e2e]'
    import numpy as np

    n_ff = n_ff or 2 * n_embd
    vocab = gguf.GGUFReader(str(llama_build.vocab_path()))
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_name(path.stem)
    w.add_context_length(n_ctx)
    w.add_embedding_length(n_embd)
    w.add_block_count(n_layer)
    w.add_feed_forward_length(n_ff)
    w.add_head_count(n_head)
    w.add_head_count_kv(n_head)
    w.add_rope_dimension_count(n_embd // n_head)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_file_type(gguf.LlamaFileType.ALL_F32)
    n_vocab = 0
    for field in vocab.fields.values():
        if not field.name.startswith("tokenizer."):
            continue
        vtype = field.types[0]
        value = field.contents()
        if vtype == gguf.GGUFValueType.ARRAY:
            if field.name == "tokenizer.ggml.tokens":
                n_vocab = len(value)
            w.add_key_value(field.name, value, vtype, sub_type=field.types[-1])
        else:
            w.add_key_value(field.name, value, vtype)
    rng = np.random.default_rng(seed)

    def normal(*shape: int) -> Any:
        return (rng.standard_normal(shape, dtype=np.float32) * 0.02).astype(np.float32)

    ones = np.ones(n_embd, dtype=np.float32)
    w.add_tensor("token_embd.weight", normal(n_vocab, n_embd))
    w.add_tensor("output_norm.weight", ones)
    w.add_tensor("output.weight", normal(n_vocab, n_embd))
    for i in range(n_layer):
        w.add_tensor(f"blk.{i}.attn_norm.weight", ones)
        w.add_tensor(f"blk.{i}.ffn_norm.weight", ones)
        for t in ("attn_q", "attn_k", "attn_v", "attn_output"):
            w.add_tensor(f"blk.{i}.{t}.weight", normal(n_embd, n_embd))
        w.add_tensor(f"blk.{i}.ffn_gate.weight", normal(n_ff, n_embd))
        w.add_tensor(f"blk.{i}.ffn_up.weight", normal(n_ff, n_embd))
        w.add_tensor(f"blk.{i}.ffn_down.weight", normal(n_embd, n_ff))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def http(method: str, url: str, body: Any = None, timeout: float = 10.0) -> tuple[int, Any]:
    """``(status, parsed JSON or text)``; an HTTP error status is returned, not raised."""
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method)
    if data is not None:
        req.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            status, raw = resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        status, raw = exc.code, exc.read()
    try:
        return status, json.loads(raw)
    except ValueError:
        return status, raw.decode(errors="replace")


class LlamaServer:
    """One llama-server process: ``args`` after the binary, on 127.0.0.1 and a free port.

    ``popen`` (optional) starts it, e.g. ``MemoryCgroup.popen`` to start it inside a cgroup.
    The log (stdout and stderr) goes to ``log_path``.
    """

    def __init__(
        self,
        args: Sequence[str],
        log_path: Path,
        *,
        popen: Any = None,
        env: dict[str, str] | None = None,
    ) -> None:
        exe = binary()
        assert exe is not None, "llama-server is not built: run make e2e"
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        self.argv = [str(exe), *args, "--host", "127.0.0.1", "--port", str(self.port)]
        self._log = open(log_path, "wb")  # noqa: SIM115  closed in stop()
        start = popen or subprocess.Popen
        self.proc: subprocess.Popen[bytes] = start(
            self.argv,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env={**os.environ, **(env or {})},
        )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_healthy(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"llama-server exited with {self.proc.returncode}:\n{self.log()[-3000:]}"
                )
            with contextlib.suppress(OSError, ValueError):
                status, body = http("GET", self.url + "/health", timeout=2)
                if status == 200 and isinstance(body, dict) and body.get("status") == "ok":
                    return
            time.sleep(0.1)
        raise TimeoutError(f"llama-server not healthy within {timeout} s:\n{self.log()[-3000:]}")

    def complete(self, prompt: str = "Hello", n_predict: int = 4, **extra: Any) -> Any:
        status, body = http(
            "POST", self.url + "/completion", {"prompt": prompt, "n_predict": n_predict, **extra}
        )
        if status != 200:
            raise RuntimeError(f"/completion answered {status}: {body}")
        return body

    def stop(self, timeout: float = 15.0) -> int | None:
        """SIGTERM, then SIGKILL after ``timeout``; returns the exit status."""
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self._log.close()
        return self.proc.returncode

    def __enter__(self) -> LlamaServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def children_of(pid: int) -> list[int]:
    """The pids whose parent is ``pid`` (from /proc/PID/task/*/children)."""
    out: list[int] = []
    with contextlib.suppress(OSError):
        for task in os.listdir(f"/proc/{pid}/task"):
            with contextlib.suppress(OSError):
                out += [
                    int(p) for p in Path(f"/proc/{pid}/task/{task}/children").read_text().split()
                ]
    return sorted(set(out))


def proc_status(pid: int) -> dict[str, int]:
    """``/proc/PID/status`` memory lines in bytes (VmRSS, RssAnon, RssFile, VmLck, VmSwap...)."""
    out: dict[str, int] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, rest = line.partition(":")
        parts = rest.split()
        if len(parts) == 2 and parts[1] == "kB":
            out[key] = int(parts[0]) * 1024
    return out
