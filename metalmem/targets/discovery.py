"""Who is running: :func:`resolve` turns specs into live targets, :func:`discover` finds
processes whose executable matches a pattern (a router's model instances named by model)."""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import replace

from ..errors import NoSuchProcess
from ..llamaargs import flag_value
from ..sampler import Sampler
from ..unload import RouterModels, UnloadAction, is_router, router_url
from .model import Priority, StopMethod, Target, TargetSource
from .proctable import ProcessTable, process_table
from .specs import DEFAULT_MAX_MATCHES, TargetSpec, TooManyMatches, check_pattern

log = logging.getLogger(__name__)

DEFAULT_DISCOVERY_PATTERN = "llama-server"


def _never_target(pid: int) -> bool:
    """pid 0/1, ourselves and our parent are never targets (STYLE rule 15)."""
    return pid <= 1 or pid == os.getpid() or pid == os.getppid()


def _is_agent(argv: Sequence[str]) -> bool:
    """Another metalmem agent (a second instance, ``status`` or ``explain``) is never a target."""
    return any(os.path.basename(a).startswith("metalmem-agent") for a in argv[:2])


def start_times(sampler: Sampler, pids: Iterable[int]) -> dict[int, float]:
    """Start times of the pids that are alive and readable; the rest are left out (a target
    whose identity cannot be read cannot be stopped safely)."""
    out: dict[int, float] = {}
    for pid, rec in sampler.processes(sorted(set(pids))).items():
        if isinstance(rec, NoSuchProcess):
            continue
        if isinstance(rec, BaseException):  # AccessDenied, or an OSError naming the call
            log.debug("event=target_unreadable pid=%d error=%s", pid, rec)
            continue
        if rec.start_time is None:
            log.debug("event=target_unreadable pid=%d error=no start time", pid)
            continue
        out[pid] = rec.start_time
    return out


def _read_pidfile(path: str) -> int | None:
    try:
        with open(path, encoding="ascii", errors="replace") as f:
            text = f.read(64).strip()
    except OSError as exc:
        log.debug("event=pidfile_unreadable path=%s error=%s", path, exc)
        return None
    if not text.isdigit():
        log.debug("event=pidfile_invalid path=%s content=%r", path, text)
        return None
    return int(text)


def _with_unique_keys(candidates: list[tuple[str, int]]) -> list[tuple[str, int]]:
    """``(key, pid)`` pairs where every key that occurs more than once gets ``#pid``."""
    counts: dict[str, int] = {}
    for key, _ in candidates:
        counts[key] = counts.get(key, 0) + 1
    return [(f"{key}#{pid}" if counts[key] > 1 else key, pid) for key, pid in candidates]


def resolve(
    specs: Sequence[TargetSpec],
    sampler: Sampler,
    *,
    proc_root: str | None = None,
    max_matches: int = DEFAULT_MAX_MATCHES,
) -> list[Target]:
    """The live targets the specs name right now, in spec order.

    ``pid`` is taken as is, ``pidfile`` is read now, ``cmdline`` is searched in every process's
    command line (arguments joined by single spaces). A spec that names no live process yields
    no target. A ``cmdline`` that matches several processes yields one target per process, each
    keyed ``key#pid`` so keys stay unique (one match keeps the plain key, so a respawn block by
    key holds across restarts); one that matches more than ``max_matches`` yields none
    (logged). A process named by several specs is the first one's target
    only. pid 0/1, this process and its parent never match.
    """
    wanted: list[tuple[TargetSpec, str, int]] = []
    table: ProcessTable | None = None
    for spec in specs:
        if spec.pid is not None:
            wanted.append((spec, spec.key, spec.pid))
        elif spec.pidfile is not None:
            pid = _read_pidfile(spec.pidfile)
            if pid is not None:
                wanted.append((spec, spec.key, pid))
        elif spec.cmdline is not None:
            if table is None:
                table = process_table(sampler, proc_root)
            pattern = re.compile(spec.cmdline)
            matches = []
            for pid in sorted(table.pids()):
                if _never_target(pid):
                    continue
                argv = table.argv(pid)
                if argv and not _is_agent(argv) and pattern.search(" ".join(argv)):
                    matches.append((spec.key, pid))
            if len(matches) > max_matches:
                log.error(
                    "event=target_refused key=%s cmdline=%r matches=%d max=%d",
                    spec.key, spec.cmdline, len(matches), max_matches,
                )  # fmt: skip
                continue
            wanted.extend((spec, key, pid) for key, pid in _with_unique_keys(matches))
    # One process, one target: when several specs name the same process, the first wins
    # (counting it twice would double its footprint in the planner's guard).
    first_by_pid: dict[int, tuple[TargetSpec, str, int]] = {}
    for w in wanted:
        if _never_target(w[2]):
            continue
        if w[2] in first_by_pid:
            log.debug("event=target_duplicate key=%s pid=%d kept=%s", w[1], w[2],
                      first_by_pid[w[2]][1])  # fmt: skip
            continue
        first_by_pid[w[2]] = w
    wanted = list(first_by_pid.values())
    starts = start_times(sampler, (pid for _, _, pid in wanted))
    return [
        Target(
            key=key,
            pid=pid,
            start_time=starts[pid],
            priority=spec.priority,
            protected=spec.protected,
            budget=spec.budget,
            stop=spec.stop,
            kube=spec.kube,
            source=TargetSource.CONFIG,
        )
        for spec, key, pid in wanted
        if pid in starts
    ]


# --- discovery -----------------------------------------------------------------------------

_ALIAS_FLAGS = ("--alias", "-a")
_MODEL_FLAGS = ("--model", "-m")
_HF_FLAGS = ("--hf-repo", "-hf", "-hfr")


def name_from_argv(argv: Sequence[str]) -> str | None:
    """A target name from a llama-server command line, or ``None``.

    In order: ``--alias``/``-a NAME``; the model file of ``--model``/``-m PATH`` without
    directories and ``.gguf``; the repository of ``--hf-repo``/``-hf OWNER/REPO[:QUANT]``.
    Characters that cannot appear in a key (blanks, ``/``, ``#``) become ``_``.
    """
    args = argv[1:]
    name = flag_value(args, _ALIAS_FLAGS)
    if not name:
        model = flag_value(args, _MODEL_FLAGS)
        if model:
            name = os.path.basename(model.rstrip("/"))
            if name.lower().endswith(".gguf"):
                name = name[: -len(".gguf")]
    if not name:
        repo = flag_value(args, _HF_FLAGS)
        if repo:
            name = repo.rstrip("/").rsplit("/", 1)[-1]
    if not name:
        return None
    return _safe_name(name)


def _safe_name(name: str) -> str:
    return re.sub(r"[\s/#]", "_", name)


def discover(
    sampler: Sampler,
    pattern: str = DEFAULT_DISCOVERY_PATTERN,
    *,
    proc_root: str | None = None,
    priority: Priority = Priority.NORMAL,
    stop: StopMethod | None = None,
    max_matches: int | None = DEFAULT_MAX_MATCHES,
    routers: RouterModels | None = None,
) -> list[Target]:
    """Running processes whose executable name matches ``pattern``, as targets, by pid.

    The regex is searched (``re.search``) in ``comm`` and in the basename of the executable
    (Linux ``/proc/PID/exe``; macOS ``ps -o comm``). Note that Linux cuts ``comm`` to 15
    bytes. Each target is named by :func:`name_from_argv`, else ``comm#pid``; names that occur
    twice get ``#pid``. Kernel threads, zombies, pid 0/1, this process, its parent and other
    metalmem agents are never discovered. A pattern that :func:`check_pattern` refuses raises
    ``ValueError``; more than ``max_matches`` processes raise :class:`TooManyMatches`.

    With ``routers`` (Linux), a llama-server in router mode (:func:`metalmem.unload.is_router`)
    is not a target itself: each of its matched child instances that its ``GET /models``
    names as a loaded model is one, keyed by the model id and stopped by unloading it
    (``POST /models/unload``, :mod:`metalmem.unload`).
    """
    regex = check_pattern(pattern, "discovery pattern")
    table = process_table(sampler, proc_root)
    found: list[tuple[str, int]] = []
    for pid in sorted(table.pids()):
        if _never_target(pid):
            continue
        names = table.names(pid)
        if not any(regex.search(n) for n in names):
            continue
        argv = table.argv(pid)
        if not argv or _is_agent(argv):
            continue
        name = name_from_argv(argv)
        found.append((name or f"{_safe_name(names[0])}#{pid}", pid))
    if max_matches is not None and len(found) > max_matches:
        raise TooManyMatches(
            f"discovery pattern {pattern!r} matches {len(found)} processes, more than the "
            f"cap of {max_matches} ([discovery] max_matches): narrow the pattern or raise the cap"
        )
    base = stop if stop is not None else StopMethod()
    methods: dict[int, StopMethod] = {}
    if routers is not None:
        found, methods = _router_models(table, found, routers, base)
    found = _with_unique_keys(found)
    starts = start_times(sampler, (pid for _, pid in found))
    return [
        Target(
            key=key,
            pid=pid,
            start_time=starts[pid],
            priority=priority,
            stop=methods.get(pid, base),
            source=TargetSource.DISCOVERY,
        )
        for key, pid in found
        if pid in starts
    ]


def _router_models(
    table: ProcessTable,
    found: list[tuple[str, int]],
    routers: RouterModels,
    base: StopMethod,
) -> tuple[list[tuple[str, int]], dict[int, StopMethod]]:
    """``found`` without its routers and with their instances keyed by model id, and the
    unload stop of each instance."""
    argvs = {pid: table.argv(pid) or () for _, pid in found}
    if not any(is_router(argv, True) for argv in argvs.values()):
        return found, {}  # the common case: every server names its model; no parent read
    parents = {pid: table.ppid(pid) for pid in argvs}
    with_kids = set(parents.values())
    router_pids = {pid for pid, argv in argvs.items() if is_router(argv, pid in with_kids)}
    if not router_pids:
        return found, {}
    parents = {pid: parent for pid, parent in parents.items() if pid not in router_pids}
    names: dict[int, str] = {}
    methods: dict[int, StopMethod] = {}
    for router in sorted(router_pids):
        url = router_url(argvs[router])
        kids = {pid: argvs[pid] for pid, parent in parents.items() if parent == router}
        for pid, model in routers.models(router, url, kids).items():
            names[pid] = _safe_name(model)
            action = UnloadAction("llama-server", url, model)
            methods[pid] = replace(base, unload=action, command=None, process_group=False)
    kept = [(names.get(pid, key), pid) for key, pid in found if pid not in router_pids]
    return kept, methods
