"""Recording and replaying samples: exact JSON lines, strict parsing, a deterministic timeline,
and the `record` / `replay` commands on this host."""

from __future__ import annotations

import json
import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st
from metalmem_cli.main import main

import metalmem
from metalmem import PSI, Classifier, Level, PressurePolicy, SystemMemory
from metalmem.replay import (
    ReplayError,
    infer_interval,
    parse_line,
    record_line,
    render_timeline,
    replay,
)

from .test_pressure import NO_FORECAST, histories, sample

AGENT = Path(sys.executable).with_name("metalmem-agent")

LINUX_LIKE = sample(12.5, psi=PSI(1.5, 0.25, 0.0, 0.0, 12.345678, 0.5), pageouts=2**40)
MACOS_LIKE = sample(
    0.1 + 0.2,  # a float whose repr is long: must come back bit for bit
    os_level=Level.WARNING,
    psi=None,
    gpu_limit=48 * 2**30,
    gpu_used=2**64 - 1,
    counters_timestamp=0.1,
    limited=True,
    scope="/sys/fs/cgroup/llm.slice",
)
BARE = SystemMemory(*([None] * 14), "host", 3.0, None, False)


@pytest.mark.parametrize("s", [LINUX_LIKE, MACOS_LIKE, BARE], ids=["linux", "macos", "bare"])
def test_record_line_round_trips_exactly(s: SystemMemory) -> None:
    line = record_line(s)
    assert "\n" not in line
    back = parse_line(line)
    assert back == s
    assert [type(v) for v in back] == [type(v) for v in s]
    assert record_line(back) == line


def test_record_line_writes_names_nested_psi_and_exact_ints() -> None:
    doc = json.loads(record_line(MACOS_LIKE))
    assert list(doc) == list(SystemMemory._fields)
    assert doc["os_level"] == "WARNING" and doc["psi"] is None
    assert doc["gpu_used"] == 2**64 - 1 and doc["timestamp"] == 0.1 + 0.2
    doc = json.loads(record_line(LINUX_LIKE))
    assert doc["psi"] == {
        "some_avg10": 1.5, "some_avg60": 0.25, "full_avg10": 0.0, "full_avg60": 0.0,
        "some_total": 12.345678, "full_total": 0.5,
    }  # fmt: skip


def test_record_line_round_trips_a_real_sample() -> None:
    with metalmem.Sampler() as s:
        real = s.system()
    assert parse_line(record_line(real)) == real


sizes = st.one_of(st.none(), st.integers(0, 2**64 - 1))
finite = st.floats(allow_nan=False, allow_infinity=False)
samples = st.builds(
    SystemMemory,
    *([sizes] * 10),
    st.one_of(st.none(), st.sampled_from(Level)),
    st.one_of(st.none(), st.builds(PSI, *([st.one_of(st.none(), finite)] * 6))),
    sizes,
    sizes,
    st.text(),
    finite,
    st.one_of(st.none(), finite),
    st.booleans(),
)


@settings(deadline=None, max_examples=200)
@given(samples)
def test_any_sample_round_trips(s: SystemMemory) -> None:
    assert parse_line(record_line(s)) == s


def edited(**changes: Any) -> str:
    doc = json.loads(record_line(LINUX_LIKE))
    for key, value in changes.items():
        if value is KeyError:
            del doc[key]
        else:
            doc[key] = value
    return json.dumps(doc)


@pytest.mark.parametrize(
    ("line", "fragment"),
    [
        ("", "not JSON"),
        ("{", "not JSON"),
        ('{"total": 1', "not JSON"),
        ("[1, 2]", "expected a JSON object, got list"),
        ("null", "expected a JSON object, got NoneType"),
        (edited(total=KeyError), "missing field total"),
        (edited(psi=KeyError, limited=KeyError), "missing field psi, limited"),
        (edited(extra=1), "unknown field extra"),
        (edited(total="1"), "field total must be a non-negative integer or null, got '1'"),
        (edited(total=True), "field total must be a non-negative integer"),
        (edited(total=-1), "field total must be a non-negative integer"),
        (edited(available=1.5), "field available must be"),
        (edited(os_level="LOUD"), "field os_level must be a level name"),
        (edited(os_level=2), "field os_level must be a level name"),
        (edited(psi={"some_avg10": 1.0}), "field psi must be an object with some_avg10"),
        (edited(psi=[1, 2, 3, 4, 5, 6]), "field psi must be an object"),
        (edited(scope=3), "field scope must be a string"),
        (edited(timestamp=None), "field timestamp must be a number"),
        (edited(timestamp="1.0"), "field timestamp must be a number"),
        (edited(counters_timestamp=True), "field counters_timestamp must be a number"),
        (edited(limited=0), "field limited must be true or false"),
    ],
)
def test_parse_line_rejects_garbled_lines_naming_the_problem(line: str, fragment: str) -> None:
    with pytest.raises(ValueError, match="^" + fragment.replace("[", r"\[").replace("(", r"\(")):
        parse_line(line)


def test_replay_reports_the_line_number_and_reads_nothing_past_it() -> None:
    lines = [record_line(sample(0.0)), "", record_line(sample(2.0)), '{"total": 1}']
    with pytest.raises(ReplayError) as info:
        replay(lines)
    assert info.value.line == 4 and info.value.msg.startswith("missing field available")
    assert str(info.value).startswith("line 4: missing field")
    again = pickle.loads(pickle.dumps(info.value))
    assert (again.line, again.msg) == (4, info.value.msg)


def test_replay_skips_blank_lines_and_keeps_their_numbers() -> None:
    lines = ["\n", record_line(sample(0.0)) + "\n", "  \n", record_line(sample(2.0)) + "\n"]
    assert [e.line for e in replay(lines)] == [2, 4]
    assert replay([]) == []


@pytest.mark.parametrize(
    ("timestamps", "interval"),
    [([], 2.0), ([5.0], 2.0), ([1.0, 1.0], 2.0), ([0.0, 0.5, 1.0, 100.0], 0.5),
     ([0.0, 1.0, 3.0, 6.0], 2.0), ([3.0, 1.0, 2.0], 1.0)],
)  # fmt: skip
def test_infer_interval_is_the_median_positive_gap(
    timestamps: list[float], interval: float
) -> None:
    assert infer_interval(timestamps) == interval


def scenario() -> list[str]:
    """Calm, a fall through WARNING to CRITICAL, then recovery, one tick every 2 s."""
    available = [5, 5, 1.5, 0.5, 0.5] + [5] * 17
    return [
        record_line(sample(100.0 + 2 * i, available=int(f * 10**9)))
        for i, f in enumerate(available)
    ]


def test_replay_uses_the_recorded_clock() -> None:
    entries = replay(scenario(), NO_FORECAST)
    levels = [(e.assessment.timestamp, e.assessment.level) for e in entries]
    assert levels[:5] == [
        (100.0, Level.NORMAL), (102.0, Level.NORMAL), (104.0, Level.WARNING),
        (106.0, Level.CRITICAL), (108.0, Level.CRITICAL),
    ]  # fmt: skip
    # The last CRITICAL observation is at 108: the level holds until 138, then falls to NORMAL.
    assert [lvl for t, lvl in levels if t == 136.0] == [Level.CRITICAL]
    assert [lvl for t, lvl in levels if t == 138.0] == [Level.NORMAL]
    assert all(
        e.assessment == e2.assessment
        for e, e2 in zip(entries, replay(scenario(), NO_FORECAST), strict=True)
    )


def test_render_timeline_prints_changes_and_a_summary() -> None:
    text = render_timeline(replay(scenario(), NO_FORECAST))
    assert text == [
        "     +0.000s  line 1      NORMAL",
        "     +4.000s  line 3      WARNING   forecast=0.6s",
        "                              memory.available WARNING: available memory 15.0% of "
        "total is below the warning threshold 20.0%",
        "     +6.000s  line 4      CRITICAL  actionable forecast=0.0s",
        "                              memory.available CRITICAL: available memory 5.0% of "
        "total is below the critical threshold 10.0%",
        "    +10.000s  line 6      CRITICAL  raw=NORMAL",
        "    +38.000s  line 20     NORMAL",
        "22 samples over 42.000s, 3 level changes, highest CRITICAL",
    ]
    every = render_timeline(replay(scenario(), NO_FORECAST), every_tick=True)
    assert len([t for t in every if "line" in t]) == 22


@settings(deadline=None, max_examples=100)
@given(histories(max_size=25), st.booleans())
def test_replaying_the_same_lines_twice_gives_identical_output(
    history: list[SystemMemory], forecast: bool
) -> None:
    policy = PressurePolicy() if forecast else NO_FORECAST
    lines = [record_line(s) for s in history]
    first, second = replay(lines, policy), replay(lines, policy)
    assert first == second
    assert render_timeline(first, every_tick=True) == render_timeline(second, every_tick=True)
    # The recording loses nothing the classifier reads: replay equals assessing the originals.
    c = Classifier(policy, interval=infer_interval(s.timestamp for s in history))
    assert [e.assessment for e in first] == [c.assess(s) for s in history]


# --- the commands ------------------------------------------------------------------------------


def invoke(*args: str) -> Any:
    return CliRunner().invoke(main, list(args), prog_name="metalmem-agent")


def test_record_then_replay_through_the_cli(tmp_path: Path) -> None:
    out = tmp_path / "rec.jsonl"
    result = invoke("record", "--count", "3", "--interval", "100ms", "--output", str(out))
    assert result.exit_code == 0, result.output
    assert result.stdout == ""
    recorded = [parse_line(line) for line in out.read_text().splitlines()]
    assert len(recorded) == 3
    stamps = [s.timestamp for s in recorded]
    assert stamps == sorted(stamps) and stamps[-1] - stamps[0] >= 0.15  # two 100 ms waits
    assert all(s.total and s.total > 0 and s.scope == "host" for s in recorded)

    result = invoke("replay", str(out))
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0].startswith("     +0.000s  line 1 ")
    assert lines[-1].startswith("3 samples over ")
    assert result.stdout == invoke("replay", str(out)).stdout

    result = invoke("replay", "--json", "--all", str(out))
    docs = [json.loads(line) for line in result.stdout.splitlines()]
    assert [d["line"] for d in docs] == [1, 2, 3]
    assert {d["level"] for d in docs} <= {"NORMAL", "WARNING", "CRITICAL"}


def test_record_writes_to_stdout_by_default() -> None:
    result = invoke("record", "--count", "2", "--interval", "10ms")
    assert result.exit_code == 0, result.output
    assert len([parse_line(x) for x in result.stdout.splitlines()]) == 2


def test_replay_options_map_into_the_policy(tmp_path: Path) -> None:
    path = tmp_path / "s.jsonl"
    path.write_text("\n".join(scenario()) + "\n")
    strict = invoke("replay", "--warning", "0.6", "--critical", "0.3", str(path))
    assert strict.exit_code == 0, strict.output
    assert "+0.000s  line 1      WARNING" in strict.stdout
    assert "below the warning threshold 60.0%" in strict.stdout


def garbled(tmp_path: Path) -> str:
    path = tmp_path / "garbled.jsonl"
    path.write_text(record_line(sample(0.0)) + "\n" + '{"total": "x"}\n')
    return str(path)


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["record", "--interval", "0"], "'--interval'"),
        (["record", "--interval", "2x"], "'--interval': invalid duration '2x'"),
        (["record", "--interval", "-1s"], "'--interval'"),
        (["record", "--count", "0"], "'--count'"),
        (["record", "--output", "/nonexistent/dir/rec.jsonl"], "'--output'"),
        (["record", "--scope", "/no/such/cgroup"], "'--scope'"),
        (["replay", "{tmp}/missing.jsonl"], "missing.jsonl: No such file or directory"),
        (["replay", "{garbled}"], "garbled.jsonl:2: missing field"),
        (["replay", "--warning", "0.1", "--critical", "0.2", "{garbled}"], "critical_available"),
        (["replay", "--warning", "1.5", "{garbled}"], "'--warning'"),
        (["replay", "--interval", "soon", "{garbled}"], "'--interval'"),
    ],
)
def test_bad_input_exits_2_with_one_line_naming_it(
    tmp_path: Path, args: list[str], fragment: str
) -> None:
    args = [a.format(tmp=tmp_path, garbled=garbled(tmp_path)) for a in args]
    result = invoke(*args)
    assert result.exit_code == 2
    assert result.stdout == ""
    assert len(result.stderr.splitlines()) == 1 and fragment in result.stderr


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_record_stops_cleanly_on_a_signal(tmp_path: Path, signum: int) -> None:
    out = tmp_path / "rec.jsonl"
    proc = subprocess.Popen(
        [str(AGENT), "record", "--interval", "50ms", "--output", str(out)],
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 20
        while not (out.exists() and out.read_text().count("\n") >= 2):
            assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
            assert time.monotonic() < deadline, "record wrote nothing"
            time.sleep(0.02)
        os.kill(proc.pid, signum)
        assert proc.wait(timeout=10) == 0
        assert proc.stderr is not None and proc.stderr.read() == b""
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    text = out.read_text()
    assert text.endswith("\n")
    assert len([parse_line(line) for line in text.splitlines()]) >= 2
