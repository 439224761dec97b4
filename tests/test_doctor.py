"""`metalmem-agent doctor`: the real command on this host, and every check's verdicts.

The command runs as a subprocess against real sockets, real child processes and real files.
The macOS rows cannot run here, so they are checked over :class:`HostFacts` built from values
recorded on real Macs (tests/fixtures/shared/macos-vm-samples.json and
reference/macos-memory.md §4.5): a 128 GiB Mac whose default GPU ceiling is 107.5 GiB
(ollama/ollama#17367, macOS 26; 107.52 GiB on two machines in antirez/ds4#890).
"""

from __future__ import annotations

import dataclasses
import http.server
import json
import os
import plistlib
import socket
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from metalmem.darwin import derive_darwin
from metalmem.doctor import (
    BOOT_PLIST_LABEL,
    CHECKS,
    AgentProcess,
    BootPlist,
    CgroupLayout,
    DoctorOptions,
    HostFacts,
    KubeProbe,
    ModelFile,
    PortProbe,
    UnsizedTarget,
    Verdict,
    cgroup_layout,
    gather_facts,
    is_agent_argv,
    model_paths,
    model_size,
    read_boot_plist,
    recommended_wired_limit_mb,
    report_to_dict,
    run_checks,
)
from metalmem.level import Level
from metalmem.pressure import PressurePolicy
from metalmem.sampler import GpuMemory, SystemMemory

from .helpers import Children

REPO = Path(__file__).resolve().parent.parent
AGENT = os.path.join(os.path.dirname(sys.executable), "metalmem-agent")
SCHEMA = json.loads((REPO / "docs" / "doctor.schema.json").read_text())
SAMPLES_FILE = Path(__file__).parent / "fixtures" / "shared" / "macos-vm-samples.json"
SAMPLES = {s["id"]: s for s in json.loads(SAMPLES_FILE.read_text())}
PLIST = REPO / "deploy" / "macos" / f"{BOOT_PLIST_LABEL}.plist"
GiB = 1 << 30
MiB = 1 << 20
LINUX_CHECKS = [c.name for c in CHECKS if "linux" in c.platforms and c.name != "kube"]
DARWIN_CHECKS = [c.name for c in CHECKS if "darwin" in c.platforms and c.name != "kube"]


# --- the command on this host --------------------------------------------------------------


def doctor(*args: str, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("METALMEM_")}
    return subprocess.run(
        [AGENT, "doctor", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        stdin=subprocess.DEVNULL,
        check=False,
    )


def doctor_json(*args: str) -> tuple[dict[str, Any], int]:
    r = doctor("--json", *args)
    assert r.returncode in (0, 1), r.stderr
    doc = json.loads(r.stdout)
    jsonschema.validate(doc, SCHEMA)
    return doc, r.returncode


def by_check(doc: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["check"]: c for c in doc["checks"]}


@pytest.fixture
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


@pytest.mark.skipif(sys.platform != "linux", reason="the Linux checks run on Linux")
def test_doctor_table_gives_a_verdict_for_every_check(free_port: int) -> None:
    r = doctor("--listen", f"127.0.0.1:{free_port}")
    lines = r.stdout.splitlines()
    assert lines[0].split() == ["CHECK", "VERDICT", "FINDING"]
    verdicts = {}
    for line in lines[1:-1]:
        if line.startswith(" "):
            assert line.strip().startswith("fix: "), line
            continue
        name, verdict, finding = line.split(None, 2)
        assert verdict in ("ok", "warn", "fail") and finding, line
        verdicts[name] = verdict
    assert list(verdicts) == LINUX_CHECKS
    counts = {v: list(verdicts.values()).count(v) for v in ("ok", "warn", "fail")}
    assert lines[-1] == f"{counts['ok']} ok, {counts['warn']} warn, {counts['fail']} fail"
    assert r.returncode == (1 if counts["fail"] else 0), r.stdout


@pytest.mark.skipif(sys.platform != "linux", reason="the Linux checks run on Linux")
def test_doctor_json_validates_and_exit_code_matches_verdicts() -> None:
    doc, rc = doctor_json()  # the default --listen, as an operator runs it
    assert doc["platform"] == "linux"
    assert [c["check"] for c in doc["checks"]] == LINUX_CHECKS
    summary = doc["summary"]
    for verdict in ("ok", "warn", "fail"):
        assert summary[verdict] == sum(1 for c in doc["checks"] if c["verdict"] == verdict)
    assert summary["exit_code"] == rc == (1 if summary["fail"] else 0)
    for c in doc["checks"]:  # a warning or a failure always says what to do
        assert c["verdict"] == "ok" or c["fix"], c


def test_doctor_port_check_fails_while_a_socket_listens_on_the_port() -> None:
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen(1)
        port = held.getsockname()[1]
        doc, rc = doctor_json("--listen", f"127.0.0.1:{port}")
    check = by_check(doc)["http.port"]
    assert check["verdict"] == "fail", check
    assert f"127.0.0.1:{port}" in check["finding"] and "in use" in check["finding"]
    assert str(port) in check["fix"]
    assert rc == 1
    doc, _ = doctor_json("--listen", f"127.0.0.1:{port}")  # released: free again
    assert by_check(doc)["http.port"]["verdict"] == "ok"


class _FakeAgent(http.server.BaseHTTPRequestHandler):
    """Serves /metrics the way a running metalmem agent does (its build_info line)."""

    def do_GET(self) -> None:
        body = (
            b"# TYPE metalmem_build_info gauge\n"
            b'metalmem_build_info{version="9.9.9",platform="linux"} 1.0\n'
        )
        self.send_response(200 if self.path == "/metrics" else 404)
        self.send_header("Content-Type", "text/plain; version=0.0.4")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


Handler = type[http.server.BaseHTTPRequestHandler]
StartServer = Callable[[Handler], http.server.ThreadingHTTPServer]


@pytest.fixture
def http_server() -> Iterator[StartServer]:
    """Starts real HTTP servers on 127.0.0.1 (port 0) in threads; shuts them down after."""
    servers: list[http.server.ThreadingHTTPServer] = []

    def start(handler: Handler) -> http.server.ThreadingHTTPServer:
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


def test_doctor_port_check_warns_when_a_metalmem_agent_holds_the_port(
    http_server: StartServer,
) -> None:
    server = http_server(_FakeAgent)
    port = server.server_address[1]
    doc, _ = doctor_json("--listen", f"127.0.0.1:{port}")
    check = by_check(doc)["http.port"]
    assert check["verdict"] == "warn", check
    assert "metalmem agent 9.9.9" in check["finding"]


class _FakeKube(http.server.BaseHTTPRequestHandler):
    """The one endpoint the kube check calls: GET /version, as an API server answers it."""

    def do_GET(self) -> None:
        info = {"major": "1", "minor": "31", "gitVersion": "v1.31.0", "gitCommit": "0" * 40,
                "gitTreeState": "clean", "buildDate": "2024-08-13T07:28:49Z",
                "goVersion": "go1.22.5", "compiler": "gc", "platform": "linux/amd64"}  # fmt: skip
        body = json.dumps(info).encode()
        found = self.path.rstrip("/") == "/version"
        self.send_response(200 if found else 404)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


def _kubeconfig(path: Path, server: str) -> Path:
    path.write_text(
        "apiVersion: v1\nkind: Config\n"
        f"clusters: [{{name: c, cluster: {{server: '{server}'}}}}]\n"
        "users: [{name: u, user: {token: t}}]\n"
        "contexts: [{name: x, context: {cluster: c, user: u}}]\ncurrent-context: x\n"
    )
    return path


def test_doctor_kube_check_reaches_an_api_server(http_server: StartServer, tmp_path: Path) -> None:
    pytest.importorskip("kubernetes")
    server = http_server(_FakeKube)
    config = _kubeconfig(tmp_path / "kubeconfig", f"http://127.0.0.1:{server.server_address[1]}")
    doc, _ = doctor_json("--kube", "--kubeconfig", str(config))
    check = by_check(doc)["kube"]
    assert check["verdict"] == "ok", check
    assert "v1.31.0" in check["finding"]


def test_doctor_kube_check_fails_when_nothing_answers(tmp_path: Path, free_port: int) -> None:
    pytest.importorskip("kubernetes")
    config = _kubeconfig(tmp_path / "kubeconfig", f"http://127.0.0.1:{free_port}")
    doc, rc = doctor_json("--kube", "--kubeconfig", str(config))
    check = by_check(doc)["kube"]
    assert check["verdict"] == "fail" and check["fix"], check
    assert rc == 1
    assert "kube" not in by_check(doctor_json()[0])  # only when asked


@pytest.mark.skipif(sys.platform != "linux", reason="reads the targets' argv from /proc")
def test_doctor_sizes_model_files_on_the_targets_command_lines(
    tmp_path: Path, children: Children
) -> None:
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    big = tmp_path / "big.gguf"
    with open(big, "wb") as f:
        f.truncate(2 * total)  # sparse: the size of a model that cannot fit, no disk used
    small = tmp_path / "small.gguf"
    small.write_bytes(b"GGUF" * 1024)
    marker = f"doctor-test-{os.getpid()}"
    child = children.spawn(args=("--alias", marker, "-m", str(big)))
    config = tmp_path / "metalmem.toml"
    config.write_text(f'[[target]]\nname = "big"\ncmdline = "--alias {marker}"\n')
    doc, rc = doctor_json("--config", str(config))
    check = by_check(doc)["gpu.model_fit"]
    assert check["verdict"] == "fail", check
    assert str(big) in check["finding"] and check["fix"]
    assert rc == 1
    children.spawn(args=("--alias", marker, "--model", str(small)))
    config.write_text(f'[[target]]\nname = "m"\ncmdline = "--alias {marker} --model"\n')
    doc, _ = doctor_json("--config", str(config))
    check = by_check(doc)["gpu.model_fit"]
    assert check["verdict"] == "ok" and str(small) in check["finding"], check
    assert child.pid > 0


@pytest.mark.skipif(sys.platform != "linux", reason="the priority of a Linux child")
def test_doctor_agent_priority_warns_for_a_niced_agent(children: Children) -> None:
    child = children.spawn(args=("metalmem-agent", "run", "--listen", "127.0.0.1:0"))
    doc, _ = doctor_json()
    check = by_check(doc)["agent.priority"]
    assert f"pid {child.pid} nice 0" in check["finding"], check
    os.setpriority(os.PRIO_PROCESS, child.pid, 5)  # raising our own child's nice is allowed
    doc, _ = doctor_json()
    check = by_check(doc)["agent.priority"]
    assert check["verdict"] == "warn" and f"pid {child.pid} nice 5" in check["finding"], check


@pytest.mark.parametrize(
    ("args", "option"),
    [
        (("--listen", "nonsense"), "--listen"),
        (("--listen", "127.0.0.1:99999"), "--listen"),
        (("--config", "/nonexistent/metalmem.toml"), "--config"),
        (("--discover", "(unclosed"), "--discover"),
        (("--scope", "/nonexistent/cgroup"), "--scope"),
        (("--kubeconfig", "/nonexistent/kubeconfig"), "--kubeconfig"),
    ],
)
def test_doctor_bad_input_exits_2_naming_the_option(args: tuple[str, ...], option: str) -> None:
    r = doctor(*args)
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert r.stdout == ""
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("metalmem-agent: error: "), r.stderr
    assert option in lines[0]


def test_doctor_bad_config_value_names_the_file(tmp_path: Path) -> None:
    config = tmp_path / "bad.toml"
    config.write_text('[agent]\nlisten = "no-port"\n')
    r = doctor("--config", str(config))
    assert r.returncode == 2 and "--config" in r.stderr and "agent.listen" in r.stderr


# --- pure helpers --------------------------------------------------------------------------

THIS_HOST_MOUNTINFO = """\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
"""  # recorded on the development machine (hybrid, memory controller on v1)


@pytest.mark.parametrize(
    ("mountinfo", "expected"),
    [
        (THIS_HOST_MOUNTINFO, CgroupLayout("hybrid", "v1")),
        ("25 19 0:22 / /sys/fs/cgroup rw,nosuid shared:4 - cgroup2 cgroup2 rw,nsdelegate\n",
         CgroupLayout("v2", "v2")),
        ("35 31 0:32 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory\n",
         CgroupLayout("v1", "v1")),
        ("32 31 0:29 / /sys/fs/cgroup/cpu rw - cgroup cgroup rw,cpu\n", CgroupLayout("v1", None)),
        ("22 1 8:1 / / rw - ext4 /dev/sda1 rw\n", CgroupLayout("none", None)),
        ("", CgroupLayout("none", None)),
        ("garbage without separator cgroup2\n- cgroup2\n - \n", CgroupLayout("none", None)),
    ],
)  # fmt: skip
def test_cgroup_layout_from_mountinfo(mountinfo: str, expected: CgroupLayout) -> None:
    assert cgroup_layout(mountinfo) == expected


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["llama-server", "-m", "/m/a.gguf", "--port", "8080"], ("/m/a.gguf",)),
        (["llama-server", "--model=/m/a.gguf"], ("/m/a.gguf",)),
        (["llama-server", "--model", "/m/dir", "--lora", "/m/l.gguf"], ("/m/dir", "/m/l.gguf")),
        (["x", "/m/a.GGUF", "-m", "/m/a.GGUF"], ("/m/a.GGUF",)),
        (["llama-server", "-m"], ()),
        (["llama-server", "--alias", "chat"], ()),
        (["llama-server", "--not-a.gguf"], ()),
    ],
)
def test_model_paths_from_argv(argv: list[str], expected: tuple[str, ...]) -> None:
    assert model_paths(argv) == expected


def test_model_size_sums_split_gguf_parts_and_directories(tmp_path: Path) -> None:
    for i, size in enumerate((100, 200, 300), 1):
        (tmp_path / f"m-{i:05d}-of-00003.gguf").write_bytes(b"x" * size)
    assert model_size(str(tmp_path / "m-00001-of-00003.gguf")) == 600
    shards = tmp_path / "shards"
    shards.mkdir()
    (shards / "a.safetensors").write_bytes(b"x" * 10)
    (shards / "b.safetensors").write_bytes(b"x" * 20)
    assert model_size(str(shards)) == 30
    (tmp_path / "m-00002-of-00003.gguf").unlink()
    with pytest.raises(FileNotFoundError):
        model_size(str(tmp_path / "m-00001-of-00003.gguf"))


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["/usr/local/bin/metalmem-agent", "run", "--config", "x"], True),
        ([".venv/bin/python", "/v/bin/metalmem-agent", "run"], True),
        (["python", "-m", "metalmem_cli", "run"], True),
        (["metalmem-agent", "doctor", "--discover", "run"], False),
        (["metalmem-agent"], False),
        (["llama-server", "run"], False),
    ],
)
def test_is_agent_argv(argv: list[str], expected: bool) -> None:
    assert is_agent_argv(argv) is expected


def test_boot_plist_ships_as_a_noop_that_doctor_reads(tmp_path: Path) -> None:
    with open(PLIST, "rb") as f:
        doc = plistlib.load(f)
    assert doc["Label"] == BOOT_PLIST_LABEL == PLIST.stem
    assert doc["ProgramArguments"] == ["/usr/sbin/sysctl", "iogpu.wired_limit_mb=0"]
    assert doc["RunAtLoad"] is True and "KeepAlive" not in doc
    assert read_boot_plist(str(PLIST)) == BootPlist(str(PLIST), True, 0)
    # What the documented PlistBuddy step produces: the same file with the operator's value.
    doc["ProgramArguments"][1] = "iogpu.wired_limit_mb=104857"
    installed = tmp_path / PLIST.name
    installed.write_bytes(plistlib.dumps(doc))
    assert read_boot_plist(str(installed)).value_mb == 104857
    assert read_boot_plist(str(tmp_path / "absent.plist")) == BootPlist(
        str(tmp_path / "absent.plist"), False
    )
    installed.write_bytes(b"not a plist")
    broken = read_boot_plist(str(installed))
    assert broken.present and broken.value_mb is None and broken.error


# --- macOS checks over recorded values -----------------------------------------------------

_PAGE_KEYS = ("free", "active", "inactive", "speculative", "wired_down", "purgeable",
              "file_backed", "anonymous", "occupied_by_compressor")  # fmt: skip
_EVENT_KEYS = ("pageins", "pageouts", "swapins", "swapouts")
DEFAULT_CEILING_128 = int(107.5 * GiB)  # ollama/ollama#17367: M5 Max 128 GB, macOS 26


def recorded_mac(sample_id: str, gpu_limit: int | None = None) -> SystemMemory:
    """A SystemMemory from page counters recorded on a real Mac, through derive_darwin."""
    s = SAMPLES[sample_id]
    counters = {k: s[k] for k in _PAGE_KEYS}
    counters.update({k: s[k] for k in _EVENT_KEYS if k in s})
    d = derive_darwin(counters, s["page_size"], s.get("memsize_bytes"))
    return SystemMemory(
        total=d["total"], available=d["available"], free=d["free"], wired=d["wired"],
        compressed=d["compressed"], swap_total=None, swap_used=None, pageouts=d.get("pageouts"),
        swapouts=d.get("swapouts"), oom_kills=None, os_level=None, psi=None,
        gpu_limit=gpu_limit, gpu_used=None, scope="host", timestamp=1000.0,
        counters_timestamp=None, limited=False,
    )  # fmt: skip


MAC_128 = recorded_mac("edgecontrol-17-128g", DEFAULT_CEILING_128)
GPU_128 = GpuMemory("Apple GPU", True, DEFAULT_CEILING_128, 0, 0)


def mac(**changes: Any) -> HostFacts:
    """The 128 GiB Mac at its default policy (iogpu.wired_limit_mb=0), then ``changes``."""
    base = HostFacts(
        platform="darwin", system=MAC_128, gpu=GPU_128, wired_limit_mb=0,
        wired_collector_disabled=0, boot_plist=BootPlist("/L/x.plist", False),
        port=PortProbe("127.0.0.1", 9438),
    )  # fmt: skip
    return dataclasses.replace(base, **changes)


def verdict(facts: HostFacts, check: str) -> Verdict:
    return {f.check: f for f in run_checks(facts)}[check].verdict


def test_recorded_mac_is_what_the_reference_says() -> None:
    assert MAC_128.total == 128 * GiB
    # Activity Monitor showed 63 % used for these counters; derive_darwin gives 61.3 %.
    assert MAC_128.available is not None
    assert 0.60 < 1 - MAC_128.available / MAC_128.total < 0.64
    names = [f.check for f in run_checks(mac())]
    assert names == DARWIN_CHECKS


def test_wired_limit_default_on_128_gib_warns_because_the_gpu_alone_reaches_warning() -> None:
    findings = {f.check: f for f in run_checks(mac())}
    f = findings["gpu.wired_limit"]
    assert f.verdict == Verdict.WARN
    assert "107.5 GiB = 84%" in f.finding
    # Even with nothing else running, 107.5 GiB exceeds the formula's 104857 MiB at 128 GiB.
    assert recommended_wired_limit_mb(128 * GiB, 0, 0.20) * MiB < DEFAULT_CEILING_128
    base = 128 * GiB - (MAC_128.available or 0)
    rec = recommended_wired_limit_mb(128 * GiB, base, PressurePolicy().warning_available)
    assert f.fix is not None and f"sudo sysctl iogpu.wired_limit_mb={rec}" in f.fix


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({}, Verdict.WARN),
        # the formula's own value: a full GPU then stops at the WARNING threshold
        ({"wired_limit_mb": recommended_wired_limit_mb(
            128 * GiB, 128 * GiB - (MAC_128.available or 0), 0.20)}, Verdict.OK),
        ({"wired_limit_mb": 128 * 1024}, Verdict.FAIL),  # all of RAM
        ({"wired_limit_mb": None, "gpu": None, "system": MAC_128._replace(
            gpu_limit=None)}, Verdict.WARN),  # Intel Mac or macOS 13
    ],
)  # fmt: skip
def test_wired_limit_verdicts(changes: dict[str, Any], expected: Verdict) -> None:
    assert verdict(mac(**changes), "gpu.wired_limit") == expected


def test_wired_limit_uses_the_managed_footprint_to_find_the_baseline() -> None:
    # The same host with its 78 GiB of used memory belonging to managed models: the baseline
    # is then small, and a ceiling near the formula's value for B = 0 is fine.
    used = 128 * GiB - (MAC_128.available or 0)
    facts = mac(wired_limit_mb=100 * 1024, managed_footprint=used)
    assert verdict(facts, "gpu.wired_limit") == Verdict.OK
    assert verdict(mac(wired_limit_mb=100 * 1024), "gpu.wired_limit") == Verdict.WARN


@pytest.mark.parametrize(
    ("limit", "plist", "expected"),
    [
        (0, BootPlist("/L/x.plist", False), Verdict.OK),
        (None, None, Verdict.OK),
        (104857, BootPlist("/L/x.plist", False), Verdict.WARN),  # resets at reboot
        (104857, BootPlist("/L/x.plist", True, 104857), Verdict.OK),
        (0, BootPlist("/L/x.plist", True, 104857), Verdict.WARN),  # installed, not applied
        (104857, BootPlist("/L/x.plist", True, None, "InvalidFileException: bad"), Verdict.WARN),
    ],
)
def test_wired_limit_boot_verdicts(
    limit: int | None, plist: BootPlist | None, expected: Verdict
) -> None:
    assert verdict(mac(wired_limit_mb=limit, boot_plist=plist), "gpu.wired_limit.boot") == expected


@pytest.mark.parametrize(("value", "expected"), [(0, Verdict.OK), (None, Verdict.OK),
                                                 (1, Verdict.WARN)])  # fmt: skip
def test_wired_collector_verdicts(value: int | None, expected: Verdict) -> None:
    assert verdict(mac(wired_collector_disabled=value), "gpu.wired_collector") == expected


@pytest.mark.parametrize(
    ("sizes", "expected"),
    [
        ((), Verdict.OK),
        ((40 * GiB,), Verdict.OK),
        ((100 * GiB,), Verdict.WARN),  # over 90 % of 107.5 GiB: little room for the KV cache
        ((60 * GiB, 60 * GiB), Verdict.WARN),  # each fits, both do not
        ((110 * GiB,), Verdict.FAIL),  # more than the ceiling
        ((None,), Verdict.WARN),  # cannot be sized
    ],
)
def test_model_fit_verdicts(sizes: tuple[int | None, ...], expected: Verdict) -> None:
    models = tuple(
        ModelFile(f"t{i}", f"/models/m{i}.gguf", size, None if size else "No such file")
        for i, size in enumerate(sizes)
    )
    assert verdict(mac(models=models, targets=len(models)), "gpu.model_fit") == expected


def test_model_fit_fix_names_the_limit_the_model_needs() -> None:
    facts = mac(models=(ModelFile("big", "/models/big.gguf", 110 * GiB),), targets=1)
    f = {f.check: f for f in run_checks(facts)}["gpu.model_fit"]
    assert f.fix is not None and "iogpu.wired_limit_mb=125156" in f.fix  # ceil(110 GiB/0.9)


# An NVIDIA H200 as NVML reported it to doctor on a device run of this project (143771 MiB,
# as nvidia-smi shows it there): the same check against NVML's total instead of a Metal ceiling.
H200 = GpuMemory("NVIDIA H200", False, 143771 * MiB, 0, 0)


@pytest.mark.parametrize(
    ("size", "expected"),
    [(10 * GiB, Verdict.OK), (130 * GiB, Verdict.WARN), (200 * GiB, Verdict.FAIL)],
)
def test_model_fit_on_an_nvidia_host_uses_nvml_and_linux_advice(
    size: int, expected: Verdict
) -> None:
    facts = HostFacts(
        platform="linux",
        system=MAC_128._replace(gpu_limit=None),
        gpu=H200,
        models=(ModelFile("m", "/models/m.gguf", size),),
        targets=1,
    )
    f = {f.check: f for f in run_checks(facts)}["gpu.model_fit"]
    assert f.verdict == expected and "NVML total" in f.finding, f
    assert f.fix is None or ("iogpu" not in f.fix and "-ngl" in f.fix), f


@pytest.mark.parametrize(
    ("sample", "swap_used", "expected"),
    [
        ("mini2-openclaw-2026-05-24", None, Verdict.OK),  # swapouts 0 since boot
        ("waired-835-m4-cache-small", None, Verdict.WARN),  # 5.1 GiB swapped out since boot
        ("mini2-openclaw-2026-05-24", 512 * MiB, Verdict.WARN),
    ],
)
def test_swap_verdicts_over_recorded_macs(
    sample: str, swap_used: int | None, expected: Verdict
) -> None:
    system = recorded_mac(sample)
    if swap_used is not None:
        system = system._replace(swap_total=GiB, swap_used=swap_used)
    assert verdict(mac(system=system), "swap") == expected


@pytest.mark.parametrize(
    ("agents", "expected"),
    [
        ((), Verdict.OK),
        ((AgentProcess(501, 0),), Verdict.OK),
        ((AgentProcess(501, 10),), Verdict.WARN),
    ],
)
def test_agent_priority_verdicts(agents: tuple[AgentProcess, ...], expected: Verdict) -> None:
    assert verdict(mac(agents=agents), "agent.priority") == expected


DENIED = UnsizedTarget("llama", 812, True, 502, "permission denied (proc_pid_rusage) (pid=812)")


@pytest.mark.parametrize(
    ("changes", "expected", "in_finding", "in_fix"),
    [
        ({}, Verdict.OK, "no targets", None),
        ({"targets": 2}, Verdict.OK, "all 2 target(s) sized", None),
        # A non-root agent, another user's llama-server: it can be neither sized nor stopped.
        ({"targets": 1, "unsized": (DENIED,), "agent_uid": 501}, Verdict.FAIL,
         "uid 501, not root", "LaunchDaemons"),
        ({"targets": 2, "unsized": (DENIED,), "agent_uid": 501}, Verdict.WARN,
         "llama (pid 812, uid 502)", "(uid 502): add UserName"),
        # As root the refusal has another cause: the error is shown, not "run as root".
        ({"targets": 1, "unsized": (DENIED,), "agent_uid": 0}, Verdict.FAIL,
         "permission denied", "snapshot --pid"),
        ({"targets": 3, "agent_uid": 501,
          "unsized": (UnsizedTarget("m", 9, False, None, "footprint unknown"),)},
         Verdict.WARN, "m (pid 9, uid ?)", "snapshot --pid"),
        # macOS: not even adopted (no start time), so the tracker reports 0 targets.
        ({"targets": 0, "agent_uid": 501,
          "unsized": (dataclasses.replace(DENIED, key="llama-server", adopted=False),)},
         Verdict.FAIL, "llama-server (pid 812, uid 502, not adopted)", "LaunchDaemons"),
    ],
)  # fmt: skip
def test_targets_sized_names_the_cause_and_the_fix(
    changes: dict[str, Any], expected: Verdict, in_finding: str, in_fix: str | None
) -> None:
    f = {f.check: f for f in run_checks(mac(**changes))}["targets.sized"]
    assert f.verdict == expected
    assert in_finding in f.finding
    assert f.fix is None if in_fix is None else (f.fix is not None and in_fix in f.fix)


def test_targets_sized_on_linux_points_at_the_systemd_unit() -> None:
    facts = HostFacts(platform="linux", targets=1, unsized=(DENIED,), agent_uid=1000)
    f = {f.check: f for f in run_checks(facts)}["targets.sized"]
    assert f.verdict == Verdict.FAIL and f.fix is not None
    assert "metalmem.service" in f.fix and "User=" in f.fix and "/PID" in f.finding


def test_pressure_and_port_and_kube_verdicts_on_a_mac() -> None:
    assert verdict(mac(), "memory.pressure") == Verdict.OK
    critical = MAC_128._replace(os_level=Level.CRITICAL)
    assert verdict(mac(system=critical), "memory.pressure") == Verdict.FAIL
    warning = MAC_128._replace(os_level=Level.WARNING)
    assert verdict(mac(system=warning), "memory.pressure") == Verdict.WARN
    held = PortProbe("127.0.0.1", 9438, "Address already in use", 98)
    f = {f.check: f for f in run_checks(mac(port=held))}["http.port"]
    assert f.verdict == Verdict.FAIL and f.fix is not None and "lsof" in f.fix
    facts = mac(kube=KubeProbe("~/.kube/config", "https://k:6443", None, "timed out"))
    assert verdict(facts, "kube") == Verdict.FAIL
    assert verdict(mac(sample_error="OSError: boom", system=None), "sampler") == Verdict.FAIL


class RecordedMacSampler:
    """A sampler double for the macOS gathering path: answers with the recorded 128 GiB Mac."""

    root = "/"

    def system(self) -> SystemMemory:
        return MAC_128

    def gpu(self) -> GpuMemory:
        return GPU_128

    def processes(self, pids: Any) -> dict[int, Any]:
        return {}


def test_gather_facts_reads_sysctls_and_the_boot_plist_on_macos(tmp_path: Path) -> None:
    with open(PLIST, "rb") as f:
        doc = plistlib.load(f)
    doc["ProgramArguments"][1] = "iogpu.wired_limit_mb=0"
    (tmp_path / PLIST.name).write_bytes(plistlib.dumps(doc))
    sysctls = {"iogpu.wired_limit_mb": "0", "iogpu.disable_wired_collector": "1"}
    facts = gather_facts(
        DoctorOptions(listen=("127.0.0.1", 0)),
        RecordedMacSampler(),  # type: ignore[arg-type]
        platform="darwin",
        sysctl=sysctls.get,
        launchd_dir=str(tmp_path),
    )
    assert facts.wired_limit_mb == 0 and facts.wired_collector_disabled == 1
    assert facts.boot_plist == BootPlist(str(tmp_path / PLIST.name), True, 0)
    assert facts.port is not None and facts.port.error is None
    report = report_to_dict(facts, run_checks(facts))
    jsonschema.validate(report, SCHEMA)
    verdicts = {c["check"]: c["verdict"] for c in report["checks"]}
    assert verdicts["gpu.wired_limit"] == "warn"
    assert verdicts["gpu.wired_collector"] == "warn"
    assert verdicts["gpu.wired_limit.boot"] == "ok"
    missing = gather_facts(
        DoctorOptions(listen=("127.0.0.1", 0)),
        RecordedMacSampler(),  # type: ignore[arg-type]
        platform="darwin",
        sysctl={}.get,
        launchd_dir=str(tmp_path / "none"),
    )
    assert missing.wired_limit_mb is None and missing.boot_plist is not None
    assert not missing.boot_plist.present
