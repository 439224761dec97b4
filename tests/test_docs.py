"""The documentation cannot drift: its commands run, its links resolve, its tables recompute.

The convention is written down in docs/README.md ("How commands are shown in these docs"):
fenced ``sh`` blocks are Linux commands that run here (``sh {host-dependent}``: exit 0 or 1);
``sh {agent}`` blocks run against a real agent on the default port; ``sh {root}``,
``sh {cluster}``, ``sh {macos}``, ``sh {long}`` and ``zsh`` blocks are not run, but every
``metalmem-agent`` subcommand and option they show must exist; ``bash``, ``shell``, ``console``
and untagged fences are refused. Every failure names the file and line.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import click
import pytest
from metalmem_cli.main import main as cli

from metalmem.doctor import MODEL_HEADROOM, recommended_wired_limit_mb
from metalmem.pressure import PressurePolicy

REPO = Path(__file__).resolve().parent.parent
DOCS = REPO / "docs"
DOC_FILES = sorted(DOCS.glob("*.md"))
LINKED_FILES = [*DOC_FILES, REPO / "README.md"]
VENV_BIN = Path(sys.executable).parent
COMMAND_TIMEOUT = 60.0  # seconds per command; doc commands must be quick examples

RUN_MARKS = frozenset({"host-dependent"})
PYTHON_MARKS = frozenset({"run"})  # ```python {run}: a program the test runs; it must exit 0
SKIP_MARKS = frozenset({"agent", "root", "cluster", "macos", "long"})
SHELLISH = frozenset(
    {"bash", "shell", "console", "shell-session", "shellsession", "sh-session", "fish", "ksh",
     "csh", "tcsh", "ps1", "powershell", "cmd", "bat"}
)  # fmt: skip
OPERATORS = frozenset({"|", "||", "&&", ";", "&", "(", ")", ";;", "|&"})

_FENCE = re.compile(r"^(?P<indent>[ \t]*)(?P<fence>`{3,}|~{3,})(?P<info>[^`]*)$")
_INFO = re.compile(r"^(?P<lang>[\w+-]*)\s*(?:\{(?P<marks>[^}]*)\})?\s*$")


@dataclasses.dataclass(frozen=True)
class Block:
    """A fenced block: where its fence opens (1-based), its language and marks, its lines."""

    path: Path
    line: int
    info: str
    lang: str | None  # None: the info string does not parse
    marks: frozenset[str]
    lines: tuple[tuple[int, str], ...]

    @property
    def where(self) -> str:
        return f"{self.path.relative_to(REPO)}:{self.line}"

    @property
    def is_shell(self) -> bool:
        return self.lang in ("sh", "zsh")

    @property
    def is_run(self) -> bool:
        return self.lang == "sh" and not (self.marks & SKIP_MARKS)


def parse_blocks(path: Path, text: str | None = None) -> list[Block]:
    """Every fenced block of a Markdown file (an unclosed one runs to the end of the file);
    ``text`` stands in for the file's content when given."""
    blocks: list[Block] = []
    lines = (path.read_text(encoding="utf-8") if text is None else text).splitlines()
    i = 0
    while i < len(lines):
        m = _FENCE.match(lines[i])
        if m is None:
            i += 1
            continue
        fence, info, start = m.group("fence"), m.group("info").strip(), i + 1
        body: list[tuple[int, str]] = []
        i += 1
        while i < len(lines):
            close = lines[i].strip()
            if close.startswith(fence[0] * len(fence)) and not close.strip(fence[0]):
                break
            body.append((i + 1, lines[i]))
            i += 1
        i += 1
        im = _INFO.match(info)
        lang = im.group("lang") if im else None
        marks = frozenset(
            t for t in re.split(r"[\s,]+", (im.group("marks") or "") if im else "") if t
        )
        blocks.append(Block(path, start, info, lang, marks, tuple(body)))
    return blocks


def commands(block: Block) -> list[tuple[int, str]]:
    """(line, command) of a shell block: blank and ``#`` lines skipped, ``\\`` joined."""
    out: list[tuple[int, str]] = []
    pending: list[str] = []
    first = 0
    for number, raw in block.lines:
        text = raw.strip()
        if not pending and (not text or text.startswith("#")):
            continue
        if not pending:
            first = number
        if text.endswith("\\"):
            pending.append(text[:-1].strip())
            continue
        pending.append(text)
        out.append((first, " ".join(pending)))
        pending = []
    if pending:
        out.append((first, " ".join(pending)))
    return out


def _segments(command: str) -> list[list[str]]:
    """The simple commands of a command line, split at shell operators."""
    lexer = shlex.shlex(command, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    segments: list[list[str]] = [[]]
    for token in lexer:
        if token in OPERATORS:
            segments.append([])
        else:
            segments[-1].append(token)
    return [s for s in segments if s]


def _program(segment: list[str]) -> list[str]:
    """The segment without leading ``VAR=value``, ``sudo`` and ``env``."""
    words = list(segment)
    while words and (re.match(r"^[A-Za-z_]\w*=", words[0]) or words[0] in ("sudo", "env")):
        words.pop(0)
    return words


def _options_of(command: click.Command) -> set[str]:
    names = {"--help", "-h"}
    for param in command.params:
        names.update(param.opts)
        names.update(param.secondary_opts)
    return names


def check_agent_usage(words: list[str]) -> str | None:
    """Why a ``metalmem-agent ...`` invocation names a subcommand or option that does not
    exist, or ``None`` when it is fine."""
    args = words[1:]
    if not args or args[0].startswith("-"):
        command: click.Command = cli
        rest = args
    else:
        # get_command, not .commands: doctor is loaded on demand (cli/main.py AgentGroup)
        sub = cli.get_command(click.Context(cli), args[0]) if isinstance(cli, click.Group) else None
        if sub is None:
            return f"metalmem-agent has no subcommand {args[0]!r}"
        command, rest = sub, args[1:]
    known = _options_of(command)
    for arg in rest:
        if arg == "--" or not arg.startswith("-") or re.fullmatch(r"-\d+(\.\d+)?", arg):
            continue
        name = arg.split("=", 1)[0]
        if name not in known:
            return f"`{command.name}` has no option {name}"
    return None


def violations(path: Path, text: str | None = None) -> list[str]:
    """Every breach of the convention in one file, as ``file:line: problem``."""
    found = []
    for block in parse_blocks(path, text):
        if block.lang is None:
            found.append(f"{block.where}: cannot read the info string {block.info!r}")
            continue
        if block.lang == "":
            found.append(f"{block.where}: a fence needs an info string (sh, zsh, text, ...)")
            continue
        if block.lang in SHELLISH:
            found.append(
                f"{block.where}: '{block.lang}' block: use sh (run on Linux), "
                "sh {agent|root|cluster|macos|long} or zsh (not run), or text for output"
            )
            continue
        if block.lang == "python" and block.marks - PYTHON_MARKS:
            found.append(f"{block.where}: unknown mark(s) {sorted(block.marks - PYTHON_MARKS)}")
        if not block.is_shell:
            continue
        unknown = block.marks - RUN_MARKS - SKIP_MARKS
        if unknown:
            found.append(f"{block.where}: unknown mark(s) {sorted(unknown)}")
        for line, command in commands(block):
            where = f"{block.path.relative_to(REPO)}:{line}"
            if command.startswith("$ "):
                found.append(f"{where}: no prompts in command blocks: {command!r}")
            try:
                segments = _segments(command)
            except ValueError as exc:
                found.append(f"{where}: cannot parse {command!r}: {exc}")
                continue
            for segment in segments:
                if block.is_run and segment[0] == "sudo":
                    found.append(f"{where}: a run block may not use sudo; mark it {{root}}")
                words = _program(segment)
                if words and os.path.basename(words[0]) == "metalmem-agent":
                    problem = check_agent_usage(words)
                    if problem is not None:
                        found.append(f"{where}: {problem}: {command!r}")
    return found


# --- the convention ------------------------------------------------------------------------


@pytest.mark.parametrize("path", DOC_FILES, ids=lambda p: p.name)
def test_docs_every_command_is_run_or_marked(path: Path) -> None:
    problems = violations(path)
    assert not problems, "\n".join(problems)


def test_docs_convention_catches_unmarked_and_wrong_commands() -> None:
    text = (
        "```bash\nls\n```\n\n```\nmetalmem-agent doctor\n```\n\n"
        "```sh\nsudo sysctl x=1\n```\n\n```zsh\nmetalmem-agent doctor --no-such-flag\n```\n\n"
        "```sh {macos}\nmetalmem-agent frobnicate\n```\n\n```sh {weird}\ntrue\n```\n\n"
        "```sh {root}\nsudo metalmem-agent doctor --json \\\n  --listen 127.0.0.1:0\n```\n"
    )
    problems = violations(DOCS / "bad.md", text)
    joined = "\n".join(problems)
    assert "docs/bad.md:1: 'bash' block" in joined
    assert "docs/bad.md:5: a fence needs an info string" in joined
    assert "docs/bad.md:10: a run block may not use sudo" in joined
    assert "docs/bad.md:14: `doctor` has no option --no-such-flag" in joined
    assert "docs/bad.md:18: metalmem-agent has no subcommand 'frobnicate'" in joined
    assert "docs/bad.md:21: unknown mark(s) ['weird']" in joined
    assert len(problems) == 6, joined  # the {root} block with a continuation line is fine
    python = violations(DOCS / "bad.md", "```python {run}\npass\n```\n\n```python {rnu}\n```\n")
    assert python == ["docs/bad.md:5: unknown mark(s) ['rnu']"], python


# --- running the Linux commands ------------------------------------------------------------

RUN_BLOCKS = [b for path in DOC_FILES for b in parse_blocks(path) if b.is_run and commands(b)]


@pytest.fixture(scope="module")
def workdirs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Path]]:
    """One scratch directory per doc file (a later block may use a file an earlier one
    wrote), with ``deploy/`` and ``docs/`` linked in so that paths in the docs resolve."""
    dirs: dict[str, Path] = {}
    for path in DOC_FILES:
        d = tmp_path_factory.mktemp(path.stem)
        for name in ("deploy", "docs"):
            (d / name).symlink_to(REPO / name, target_is_directory=True)
        (d / "home").mkdir()
        dirs[path.name] = d
    yield dirs


def _run(command: str, cwd: Path) -> tuple[int | None, str, str]:
    """Run one documented command with bash; ``None`` as status when it timed out."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("METALMEM_")}
    env["PATH"] = f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}"
    env["HOME"] = str(cwd / "home")
    proc = subprocess.Popen(
        ["bash", "-o", "pipefail", "-c", command],
        cwd=cwd,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # its own group: a timeout ends the command and its children
    )
    try:
        out, err = proc.communicate(timeout=COMMAND_TIMEOUT)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # our child leads this group
        out, err = proc.communicate()
        return None, out, err
    return proc.returncode, out, err


@pytest.mark.skipif(sys.platform != "linux", reason="the docs' sh blocks are Linux commands")
@pytest.mark.parametrize("block", RUN_BLOCKS, ids=lambda b: b.where)
def test_docs_linux_commands_run(block: Block, workdirs: dict[str, Path]) -> None:
    allowed = {0, 1} if "host-dependent" in block.marks else {0}
    for line, command in commands(block):
        status, out, err = _run(command, workdirs[block.path.name])
        where = f"{block.path.relative_to(REPO)}:{line}"
        assert status in allowed, (
            f"{where}: `{command}` "
            + ("timed out" if status is None else f"exited {status}")
            + f"\n--- stdout\n{out[-2000:]}\n--- stderr\n{err[-2000:]}"
        )


AGENT_BLOCKS = [
    b for path in DOC_FILES for b in parse_blocks(path) if "agent" in b.marks and commands(b)
]
DEFAULT_PORT = 9438  # what the docs' commands talk to: the agent's default --listen


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        # As the agent's server binds: TIME_WAIT connections of a past run do not count.
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _ready(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2) as resp:
            return bool(resp.status == 200)
    except OSError:
        return False


def _start(command: str, cwd: Path) -> subprocess.Popen[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("METALMEM_")}
    env["PATH"] = f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}"
    env["HOME"] = str(cwd / "home")
    return subprocess.Popen(
        ["bash", "-c", command], cwd=cwd, env=env, stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip


def _stop_agent(proc: subprocess.Popen[str]) -> tuple[int, str]:
    proc.send_signal(signal.SIGTERM)
    try:
        out, _ = proc.communicate(timeout=COMMAND_TIMEOUT)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate()
    return proc.returncode, out


@pytest.mark.skipif(sys.platform != "linux", reason="the docs' sh blocks are Linux commands")
@pytest.mark.parametrize("block", AGENT_BLOCKS, ids=lambda b: b.where)
def test_docs_agent_commands_run_against_a_real_agent(
    block: Block, workdirs: dict[str, Path]
) -> None:
    # `{agent}` blocks talk to an agent on the default port: a `metalmem-agent run` line must
    # start one that answers /readyz and stops cleanly on SIGTERM; any other line runs while
    # an agent of ours serves there, and must exit 0.
    if not _port_free(DEFAULT_PORT):
        pytest.skip(f"127.0.0.1:{DEFAULT_PORT} is taken on this machine")
    cwd = workdirs[block.path.name]
    server: subprocess.Popen[str] | None = None
    try:
        for line, command in commands(block):
            where = f"{block.path.relative_to(REPO)}:{line}"
            if "metalmem-agent run" in command:
                proc = _start(command, cwd)
                deadline = time.monotonic() + COMMAND_TIMEOUT
                while not _ready(DEFAULT_PORT) and proc.poll() is None:
                    assert time.monotonic() < deadline, f"{where}: `{command}` never became ready"
                    time.sleep(0.1)
                status, out = _stop_agent(proc)
                assert status == 0, f"{where}: `{command}` exited {status}\n{out[-2000:]}"
                continue
            if server is None:
                server = _start("metalmem-agent run --no-kube", cwd)
                deadline = time.monotonic() + COMMAND_TIMEOUT
                while not _ready(DEFAULT_PORT):
                    assert server.poll() is None and time.monotonic() < deadline, "agent"
                    time.sleep(0.1)
            status, out, err = _run(command, cwd)
            assert status == 0, f"{where}: `{command}` exited {status}\n{out[-2000:]}{err[-2000:]}"
    finally:
        if server is not None:
            _stop_agent(server)


def test_docs_run_failures_are_reported(tmp_path: Path) -> None:
    status, _, _ = _run("metalmem-agent no-such-command", tmp_path)
    assert status == 2
    status, out, _ = _run("metalmem-agent --version", tmp_path)
    assert status == 0 and "metalmem-agent" in out


PYTHON_BLOCKS = [
    b for path in DOC_FILES for b in parse_blocks(path) if b.lang == "python" and "run" in b.marks
]


@pytest.mark.skipif(sys.platform != "linux", reason="the examples start Linux processes")
@pytest.mark.parametrize("block", PYTHON_BLOCKS, ids=lambda b: b.where)
def test_docs_python_examples_run(block: Block, tmp_path: Path) -> None:
    # A `python {run}` block is a whole program: run as a file of its own, in a scratch
    # directory, by this interpreter (metalmem installed); it must exit 0 in time.
    program = tmp_path / "example.py"
    program.write_text("\n".join(line for _, line in block.lines) + "\n")
    status, out, err = _run(f"{shlex.quote(sys.executable)} {program}", tmp_path)
    assert status == 0, (
        f"{block.where}: " + ("timed out" if status is None else f"exited {status}")
        + f"\n--- stdout\n{out[-2000:]}\n--- stderr\n{err[-2000:]}"
    )  # fmt: skip


# --- links ---------------------------------------------------------------------------------

_INLINE_LINK = re.compile(
    r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*<?([^)\s>]*)>?(?:\s+\"[^\"]*\")?\s*\)"
)
_REF_LINK = re.compile(r"^\s{0,3}\[[^\]]+\]:\s*<?(\S+?)>?(?:\s|$)")
_HEADING = re.compile(r"^\s{0,3}(#{1,6})\s+(.*?)\s*#*\s*$")
_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:")


def _outside_fences(text: str) -> Iterator[tuple[int, str]]:
    """(line number, line) of every line outside fenced blocks."""
    in_fence: str | None = None
    for number, line in enumerate(text.splitlines(), 1):
        m = _FENCE.match(line)
        if in_fence is None and m is not None:
            in_fence = m.group("fence")
            continue
        if in_fence is not None:
            stripped = line.strip()
            if stripped.startswith(in_fence) and not stripped.strip(in_fence[0]):
                in_fence = None
            continue
        yield number, line


def slugify(heading: str) -> str:
    """GitHub's anchor for a heading: link text kept, lower case, punctuation dropped."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)
    text = re.sub(r"[^\w\- ]", "", text.lower())
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    """Every heading anchor of a Markdown file (repeats get -1, -2, ... as on GitHub)."""
    seen: dict[str, int] = {}
    out = set()
    for _, line in _outside_fences(path.read_text(encoding="utf-8")):
        m = _HEADING.match(line)
        if m is None:
            continue
        slug = slugify(m.group(2))
        n = seen.get(slug, 0)
        seen[slug] = n + 1
        out.add(slug if n == 0 else f"{slug}-{n}")
    return out


def broken_links(path: Path, text: str | None = None) -> list[str]:
    """Relative links of one file that point at nothing, as ``file:line: target: why``;
    ``text`` stands in for the file's content when given. Code is not prose: fenced blocks and
    inline code spans are skipped."""
    problems = []
    text = path.read_text(encoding="utf-8") if text is None else text
    for number, raw in _outside_fences(text):
        line = re.sub(r"(`+)(?:(?!\1).)+\1", "``", raw)
        targets = [m.group(1) for m in _INLINE_LINK.finditer(line)]
        ref = _REF_LINK.match(line)
        if ref is not None:
            targets.append(ref.group(1))
        for target in targets:
            where = f"{path.relative_to(REPO)}:{number}: {target}"
            if not target or _SCHEME.match(target):
                continue
            file_part, _, fragment = target.partition("#")
            if file_part.startswith("/"):
                problems.append(f"{where}: use a relative link")
                continue
            dest = (path.parent / file_part).resolve() if file_part else path
            try:
                dest.relative_to(REPO)
            except ValueError:
                problems.append(f"{where}: points outside the repository")
                continue
            if not dest.exists():
                problems.append(f"{where}: no such file")
                continue
            if fragment and dest.suffix == ".md" and fragment not in anchors(dest):
                problems.append(f"{where}: no heading #{fragment} in {dest.name}")
    return problems


@pytest.mark.parametrize("path", LINKED_FILES, ids=lambda p: str(p.relative_to(REPO)))
def test_docs_relative_links_resolve(path: Path) -> None:
    problems = broken_links(path)
    assert not problems, "\n".join(problems)


def test_docs_link_check_finds_broken_links() -> None:
    assert "how-commands-are-shown-in-these-docs" in anchors(DOCS / "README.md")
    assert slugify("5. The wired collector: `iogpu.disable_wired_collector`") == (
        "5-the-wired-collector-iogpudisable_wired_collector"
    )
    text = (
        "[a](nope.md) [b](README.md#no-such-heading) [c](https://example.com/x)\n"
        "`[d](ignored.md)` [e](README.md#how-commands-are-shown-in-these-docs)\n\n"
        "```text\n[f](ignored.md)\n```\n[g]: ../../../../etc/passwd\n[h](/etc/hosts)\n"
    )
    problems = broken_links(DOCS / "probe.md", text)
    joined = "\n".join(problems)
    assert "docs/probe.md:1: nope.md: no such file" in joined
    assert "docs/probe.md:1: README.md#no-such-heading: no heading" in joined
    assert "docs/probe.md:7: ../../../../etc/passwd: points outside the repository" in joined
    assert "docs/probe.md:8: /etc/hosts: use a relative link" in joined
    assert len(problems) == 4, joined


# --- the sizing table of dedicated-hosts.md ------------------------------------------------

SIZING_DOC = DOCS / "dedicated-hosts.md"


def _sizing_rows() -> list[list[str]]:
    text = SIZING_DOC.read_text(encoding="utf-8")
    m = re.search(r"<!-- sizing-table:begin w=([\d.]+) B=(\d+) -->(.*?)<!-- sizing-table:end -->",
                  text, re.S)  # fmt: skip
    assert m is not None, "dedicated-hosts.md lost its sizing-table markers"
    assert float(m.group(1)) == PressurePolicy().warning_available, (
        "the table is computed for w = the default warning_available; recompute it"
    )
    assert m.group(2) == "0"
    rows = []
    for line in m.group(3).splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if cells and cells[0].isdigit():
            rows.append(cells)
    return rows


def test_docs_sizing_table_recomputes_from_the_formula() -> None:
    rows = _sizing_rows()
    assert [int(r[0]) for r in rows] == [36, 64, 128, 192, 512]
    w = PressurePolicy().warning_available
    for cells in rows:
        total = int(cells[0]) << 30
        limit = recommended_wired_limit_mb(total, 0, w)
        largest = math.floor(MODEL_HEADROOM * limit)
        expected = [str(total), str(math.ceil(w * total)), str(limit), f"{limit / 1024:.1f}",
                    str(largest), f"{largest / 1024:.1f}"]  # fmt: skip
        assert cells[1:7] == expected, f"row {cells[0]} GiB: {cells[1:7]} != {expected}"


def test_docs_sizing_formula_keeps_the_warning_reserve() -> None:
    # The formula's promise: ceiling + baseline never eats into ceil(w x RAM).
    w = PressurePolicy().warning_available
    for gib in (36, 64, 128, 192, 512):
        total = gib << 30
        for baseline in (0, 1, 5 << 30, total // 3):
            limit = recommended_wired_limit_mb(total, baseline, w) << 20
            assert limit + baseline <= total - math.ceil(w * total)
            assert limit + (1 << 20) + baseline > total - math.ceil(w * total) or limit == 0
    assert recommended_wired_limit_mb(16 << 30, 16 << 30, w) == 0


_ARITHMETIC = re.compile(
    r"(?<![\w.])(\d+(?:\.\d+)?(?:\s+[-+]\s+\d+(?:\.\d+)?)+)\s+=\s+(\d+(?:\.\d+)?)(?![\w.])"
)


@pytest.mark.parametrize("name", ["dedicated-hosts.md", "wired-memory.md"])
def test_docs_worked_arithmetic_is_right(name: str) -> None:
    """Every ``a - b + c = d`` written out in these pages adds up (to its own precision)."""
    text = (DOCS / name).read_text(encoding="utf-8")
    checked = 0
    for m in _ARITHMETIC.finditer(text):
        terms = re.findall(r"([-+]?)\s*(\d+(?:\.\d+)?)", m.group(1))
        value = sum(float(t) * (-1 if sign == "-" else 1) for sign, t in terms)
        decimals = len(m.group(2).partition(".")[2])
        line = text.count("\n", 0, m.start()) + 1
        assert round(value, decimals) == float(m.group(2)), f"{name}:{line}: {m.group(0)}"
        checked += 1
    assert checked >= 2
