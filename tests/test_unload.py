"""Model-level eviction (metalmem/unload.py) against stand-ins of the documented APIs.

The real llama-server router is exercised in tests/e2e/test_router_unload.py (``make e2e``).
Ollama and llama-swap cannot be built here; their stand-ins below answer the requests their
documentation and source define, and refuse any other shape:

- Ollama (docs/api.md, "Unload a model"): ``POST /api/generate`` with ``{"model": M,
  "keep_alive": 0}`` and no prompt answers ``{"model": M, "created_at": ..., "response": "",
  "done": true, "done_reason": "unload"}``; the model's ``ollama runner`` child exits.
- llama-swap (proxy/proxymanager_api.go, ``apiUnloadSingleModelHandler``): ``POST
  /api/models/unload/<model>`` stops that model's process and answers 200 ``OK``; a model it
  does not know is 404 ``{"error": "Model not found"}``.

Each stand-in owns a real child process for the model, and ends it (by pid) when the request
is right, so the verification is the real one: the process exits, or its footprint falls.
"""

from __future__ import annotations

import http.server
import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import metalmem
from metalmem.process import StopResult, stop
from metalmem.targets import StopMethod, Target, parse_target_specs
from metalmem.unload import RouterModels, UnloadAction, is_router, parse_unload, router_url

from .helpers import Child, Children

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="pidfd stops, /proc")
MiB = 1 << 20


# --- the request shapes -----------------------------------------------------------------------


def test_presets_build_the_documented_requests() -> None:
    url = "http://127.0.0.1:8080"
    assert UnloadAction("llama-server", url, "qwen/3:8b").request() == (
        "POST", url + "/models/unload", b'{"model": "qwen/3:8b"}',
    )  # fmt: skip
    assert UnloadAction("ollama", url + "/", 'a"b').request() == (
        "POST", url + "/api/generate", b'{"model": "a\\"b", "keep_alive": 0}',
    )  # fmt: skip
    assert UnloadAction("llama-swap", url, "qwen/3:8b").request() == (
        "POST", url + "/api/models/unload/qwen%2F3%3A8b", None,
    )  # fmt: skip
    custom = UnloadAction(
        "http", url, "m", method="delete", path="/v1/models/{model}", body='{"id": "{model}"}'
    )
    assert custom.request() == ("DELETE", url + "/v1/models/m", b'{"id": "m"}')


OLLAMA = {"unload": "ollama", "unload_url": "http://h:1"}
HTTP = {"unload": "http", "unload_url": "http://h:1"}


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ({"unload": "lmstudio", "unload_url": "http://h:1"}, "unload: must be one of"),
        ({"unload": "ollama"}, "unload_url: required"),
        ({"unload": "ollama", "unload_url": "unix:///run/o.sock"}, "unload_url:"),
        ({"unload": "ollama", "unload_url": "http://h:1?x=1"}, "unload_url:"),
        ({"unload_url": "http://h:1"}, "unload_url: needs unload"),
        ({**OLLAMA, "unload_verify": "rss"}, "unload_verify"),
        ({**OLLAMA, "unload_path": "/x"}, "unload_path: only"),
        ({**HTTP, "unload_path": "/x"}, "unload_method"),
        ({**HTTP, "unload_method": "POST"}, "unload_path"),
        ({**HTTP, "unload_method": "POST", "unload_path": "/u", "unload_body": "{"}, "unload_body"),
        ({**OLLAMA, "unload_timeout": 0}, "unload_timeout"),
        ({**OLLAMA, "unload_model": ""}, "unload_model"),
        ({**OLLAMA, "unload_model": 3}, "unload_model"),
        ({**OLLAMA, "stop_command": "true"}, "unload: cannot"),
        ({**OLLAMA, "process_group": True}, "unload: cannot"),
    ],
)
def test_bad_unload_settings_are_refused_naming_the_key(
    table: dict[str, Any], message: str
) -> None:
    with pytest.raises(ValueError, match="target\\[0\\]: " + message.replace("?", "\\?")):
        parse_target_specs([{"name": "m", "cmdline": "llama", **table}])


def test_unload_model_defaults_to_the_target_name() -> None:
    (spec,) = parse_target_specs(
        [{"name": "llama3.2", "cmdline": "ollama runner", "unload": "ollama",
          "unload_url": "http://127.0.0.1:11434"}]
    )  # fmt: skip
    assert spec.stop.unload == UnloadAction("ollama", "http://127.0.0.1:11434", "llama3.2")
    assert parse_unload({"cmdline": "x"}, "n") is None


def test_a_bad_unload_in_the_config_file_exits_2_with_one_line(tmp_path: Path) -> None:
    from .test_cli_edges import agent_cli, assert_one_line_usage_error

    config = tmp_path / "agent.toml"
    config.write_text(
        textwrap.dedent("""\
        [[target]]
        name = "chat"
        cmdline = "llama-server"
        unload = "ollama"
        unload_url = "ftp://127.0.0.1:11434"
        """)
    )
    r = agent_cli("explain", "--config", str(config))
    assert_one_line_usage_error(r, "agent.toml:5", "unload_url")


def test_router_command_lines() -> None:
    assert is_router(["llama-server", "--models-dir", "/m"])
    assert is_router(["llama-server", "--models-preset=/p.ini", "--port", "9"])
    assert not is_router(["llama-server", "-m", "/m/a.gguf"])
    assert not is_router(["llama-server"])  # no instances: nothing to unload
    assert is_router(["llama-server", "--port", "9"], has_instances=True)
    assert not is_router(["llama-server", "--alias", "a"], has_instances=True)
    assert router_url(["llama-server"]) == "http://127.0.0.1:8080"
    assert router_url(["x", "--host", "0.0.0.0", "--port=9000"]) == "http://127.0.0.1:9000"
    assert router_url(["x", "--host", "::1", "--port", "1"]) == "http://[::1]:1"


def test_router_models_asks_only_when_the_instances_change() -> None:
    calls: list[str] = []
    doc = {
        "data": [
            {"id": "a", "path": "/m/a.gguf", "status": {"value": "loaded"}},
            {"id": "b", "path": "/m/b.gguf", "status": {"value": "unloaded"}},
            {"id": "c", "status": {"value": "loaded"}},
        ]
    }
    now = [0.0]

    def fetch(url: str, timeout: float) -> Any:
        calls.append(url)
        return doc

    routers = RouterModels(fetch=fetch, clock=lambda: now[0], refresh=30.0)
    kids = {10: ("llama-server", "-m", "/m/a.gguf"), 11: ("llama-server", "--alias", "c")}
    assert routers.models(1, "http://r", kids) == {10: "a", 11: "c"}
    assert routers.models(1, "http://r", kids) == {10: "a", 11: "c"}
    assert calls == ["http://r/models"]
    assert routers.models(1, "http://r", {10: kids[10]}) == {10: "a"}  # an instance went
    now[0] = 31.0
    routers.models(1, "http://r", {10: kids[10]})
    assert len(calls) == 3

    def down(url: str, timeout: float) -> Any:
        raise OSError("connection refused")

    assert RouterModels(fetch=down).models(1, "http://r", kids) == {}


# --- stand-ins of the servers ---------------------------------------------------------------

Handler = Callable[[str, str, bytes], tuple[int, bytes]]


class _Stub(http.server.BaseHTTPRequestHandler):
    def _answer(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        self.server.requests.append((self.command, self.path, body))  # type: ignore[attr-defined]
        status, out = self.server.handler(self.command, self.path, body)  # type: ignore[attr-defined]
        self.send_response(status)
        self.send_header("Content-Length", str(len(out)))
        self.end_headers()
        self.wfile.write(out)

    do_GET = do_POST = do_DELETE = do_PUT = _answer

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def stub() -> Iterator[Callable[[Handler], tuple[str, list[tuple[str, str, bytes]]]]]:
    servers: list[http.server.HTTPServer] = []

    def start(handler: Handler) -> tuple[str, list[tuple[str, str, bytes]]]:
        server = http.server.HTTPServer(("127.0.0.1", 0), _Stub)
        server.handler = handler  # type: ignore[attr-defined]
        server.requests = []  # type: ignore[attr-defined]
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_port}", server.requests  # type: ignore[attr-defined]

    yield start
    for s in servers:
        s.shutdown()
        s.server_close()


def _target(s: metalmem.Sampler, pid: int, action: UnloadAction, grace: float = 3.0) -> Target:
    start = s.process(pid).start_time
    assert start is not None
    return Target(action.model, pid, start, stop=StopMethod(grace=grace, unload=action))


def _ollama(runner: Child, model: str) -> Handler:
    def handle(method: str, path: str, body: bytes) -> tuple[int, bytes]:
        doc = json.loads(body or b"{}")
        if (method, path) != ("POST", "/api/generate") or doc.get("model") != model:
            return 404, b'{"error": "model not found"}'
        if doc.get("keep_alive") != 0 or doc.get("prompt"):
            return 400, b'{"error": "not an unload"}'
        os.kill(runner.pid, signal.SIGTERM)
        return 200, json.dumps(
            {"model": model, "created_at": "2024-09-12T03:54:03.516566Z", "response": "",
             "done": True, "done_reason": "unload"}
        ).encode()  # fmt: skip

    return handle


def test_ollama_unload_stops_the_runner_only(
    sampler: metalmem.Sampler, children: Children, stub: Any, tmp_path: Path
) -> None:
    runner = children.spawn(allocate_mib=16, signal_log=tmp_path / "sig")
    url, requests = stub(_ollama(runner, "llama3.2"))
    rec = stop(_target(sampler, runner.pid, UnloadAction("ollama", url, "llama3.2")),
               sampler=sampler)  # fmt: skip
    assert rec.result is StopResult.UNLOADED and rec.steps == ("unload",), rec
    assert "done" not in rec.message and "exited" in rec.message
    assert requests == [("POST", "/api/generate", b'{"model": "llama3.2", "keep_alive": 0}')]
    assert runner.has_exited() and runner.signals() == [signal.SIGTERM]  # the stand-in's


def test_llama_swap_unload_and_an_unknown_model_falls_back_on_the_signal(
    sampler: metalmem.Sampler, children: Children, stub: Any, tmp_path: Path
) -> None:
    upstream = children.spawn(allocate_mib=8)

    def handle(method: str, path: str, body: bytes) -> tuple[int, bytes]:
        if method == "POST" and path == "/api/models/unload/qwen%2F3":
            os.kill(upstream.pid, signal.SIGTERM)
            return 200, b"OK"
        return 404, b'{"error": "Model not found"}'

    url, requests = stub(handle)
    rec = stop(_target(sampler, upstream.pid, UnloadAction("llama-swap", url, "qwen/3")),
               sampler=sampler)  # fmt: skip
    assert rec.result is StopResult.UNLOADED, rec
    assert requests == [("POST", "/api/models/unload/qwen%2F3", b"")]

    other = children.spawn(allocate_mib=8, signal_log=tmp_path / "other")
    rec = stop(_target(sampler, other.pid, UnloadAction("llama-swap", url, "nope")),
               sampler=sampler)  # fmt: skip
    assert rec.result is StopResult.TERMINATED and rec.steps == ("unload", "SIGTERM"), rec
    assert rec.message.startswith("unload refused (POST ") and "HTTP 404" in rec.message
    assert other.signals() == [signal.SIGTERM]


def test_an_unreachable_server_falls_back_on_the_signal(
    sampler: metalmem.Sampler, children: Children
) -> None:
    child = children.spawn()
    action = UnloadAction("llama-server", "http://127.0.0.1:9", "m", timeout=1.0)
    rec = stop(_target(sampler, child.pid, action), sampler=sampler)
    assert rec.result is StopResult.TERMINATED and rec.steps == ("unload", "SIGTERM"), rec
    assert "unload refused" in rec.message


def test_an_accepted_unload_whose_process_stays_is_killed_after_the_grace(
    sampler: metalmem.Sampler, children: Children, stub: Any
) -> None:
    stubborn = children.spawn(ignore_term=True)
    url, _ = stub(lambda m, p, b: (200, b'{"success": true}'))
    rec = stop(_target(sampler, stubborn.pid, UnloadAction("llama-server", url, "m"), grace=0.5),
               sampler=sampler)  # fmt: skip
    assert rec.result is StopResult.KILLED and rec.steps == ("unload", "SIGKILL"), rec
    assert "still running 0.5 s after the unload" in rec.message


def test_the_gate_is_asked_right_before_the_request(
    sampler: metalmem.Sampler, children: Children, stub: Any
) -> None:
    from metalmem.eviction import SkipReason
    from metalmem.gate import Refusal

    child = children.spawn()
    url, requests = stub(lambda m, p, b: (200, b"{}"))
    asked: list[int] = []

    def gate(t: Target) -> Refusal:
        asked.append(len(requests))
        return Refusal(SkipReason.FLOOR, "the last target")

    rec = stop(_target(sampler, child.pid, UnloadAction("llama-server", url, "m")),
               sampler=sampler, gate=gate)  # fmt: skip
    assert rec.result is StopResult.DENIED and rec.steps == (), rec
    assert asked == [0] and requests == [] and not child.has_exited()


# A server that unloads in-process: 64 MiB it frees on SIGUSR1 (and keeps on SIGUSR2).
SERVER = r"""
import signal, sys, time
hold = [bytearray(b"\x01") * (64 << 20)]
signal.signal(signal.SIGUSR1, lambda *a: hold.clear())
signal.signal(signal.SIGUSR2, lambda *a: None)
print("ready", flush=True)
time.sleep(120)
"""


@pytest.mark.parametrize("frees", [True, False])
def test_footprint_verification_of_a_server_that_unloads_in_process(
    sampler: metalmem.Sampler, stub: Any, frees: bool
) -> None:
    proc = subprocess.Popen([sys.executable, "-c", SERVER], stdout=subprocess.PIPE)
    try:
        assert proc.stdout is not None and proc.stdout.readline() == b"ready\n"
        sig = signal.SIGUSR1 if frees else signal.SIGUSR2
        url, _ = stub(lambda m, p, b: (os.kill(proc.pid, sig), (200, b"{}"))[1])
        action = UnloadAction(
            "http", url, "m", verify="footprint", method="POST", path="/unload/{model}"
        )
        rec = stop(_target(sampler, proc.pid, action, grace=1.0), sampler=sampler)
        assert proc.poll() is None, "a shared server is never signalled"
        if frees:
            assert rec.result is StopResult.UNLOADED and rec.steps == ("unload",), rec
            assert "footprint" in rec.message
        else:
            assert rec.result is StopResult.FAILED and rec.steps == ("unload",), rec
            assert "left running" in rec.message
    finally:
        proc.kill()
        proc.wait()


# --- router discovery on a stand-in process tree ------------------------------------------

# A "router" run through a path named llama-server: it starts two "instances" through the same
# path, with the arguments llama-server's router gives its children (--alias, --model), then
# waits; its children die with it (a pipe they read from closes).
FAKE_ROUTER = r"""
import subprocess, sys, time
exe = sys.executable  # the path named llama-server
kids = [
    subprocess.Popen([exe, "-c", "import sys; sys.stdin.read()", "--alias", name,
                      "--model", f"/models/{name}.gguf", "--host", "127.0.0.1", "--port", "1"],
                     stdin=subprocess.PIPE)
    for name in ("alpha", "beta")
]
print(" ".join(str(k.pid) for k in kids), flush=True)
time.sleep(120)
"""


def test_discovery_turns_a_routers_instances_into_unload_targets(
    sampler: metalmem.Sampler, tmp_path: Path
) -> None:
    from metalmem.targets import discover

    link = tmp_path / "bin" / "llama-server"
    link.parent.mkdir()
    link.symlink_to(os.path.realpath(sys.executable))
    port = 40000 + os.getpid() % 20000  # only a name here: nothing listens
    router = subprocess.Popen(
        [str(link), "-c", FAKE_ROUTER, "--models-dir", "/models", "--port", str(port)],
        stdout=subprocess.PIPE,
        executable=str(link),
    )
    try:
        assert router.stdout is not None
        kids = [int(p) for p in router.stdout.readline().split()]
        asked: list[str] = []

        def fetch(url: str, timeout: float) -> Any:
            asked.append(url)
            return {
                "data": [
                    {"id": "alpha", "path": "/models/alpha.gguf", "status": {"value": "loaded"}},
                    {"id": "beta", "path": "/models/beta.gguf", "status": {"value": "unloaded"}},
                ]
            }

        found = {
            t.pid: t
            for t in discover(sampler, "llama-server", routers=RouterModels(fetch=fetch))
            if t.pid in (router.pid, *kids)
        }
        url = f"http://127.0.0.1:{port}"
        assert asked == [url + "/models"]
        assert router.pid not in found, "the router is not a target"
        alpha, beta = found[kids[0]], found[kids[1]]
        assert alpha.key == "alpha" and alpha.stop.unload == UnloadAction(
            "llama-server", url, "alpha"
        )
        # An instance the router does not list as loaded stays a plain, signalled target.
        assert beta.key == "beta" and beta.stop.unload is None
    finally:
        router.kill()
        router.wait()
