"""The checks of the agent around the memory: its priority, port, targets and Kubernetes."""

from __future__ import annotations

import errno as errno_mod

from .facts import HostFacts
from .findings import Result, Verdict


def check_agent_priority(facts: HostFacts) -> Result:
    """An agent that runs niced (or OOM-preferred) may act too late, or not at all."""
    if not facts.agents:
        return Verdict.OK, "no running `metalmem-agent run` found to check", None
    worse = [a for a in facts.agents if (a.nice or 0) > 0 or (a.oom_score_adj or 0) > 0]
    described = ", ".join(
        f"pid {a.pid} nice {a.nice}"
        + (f" oom_score_adj {a.oom_score_adj}" if a.oom_score_adj is not None else "")
        for a in facts.agents
    )
    if not worse:
        return Verdict.OK, f"agent {described}", None
    fix = (
        "run it from deploy/launchd/io.metalmem.agent.plist (ProcessType Interactive, no Nice "
        "key); now: sudo renice -n 0 -p PID"
        if facts.platform == "darwin"
        else "run it from deploy/systemd/metalmem.service (OOMScoreAdjust=-900, no Nice=); "
        "now: sudo renice -n 0 -p PID"
    )
    return (
        Verdict.WARN,
        f"agent {described}: under pressure it gets the CPU last (or is the OOM killer's "
        "preferred victim), so it may act too late",
        fix,
    )


def check_port(facts: HostFacts) -> Result:
    """The agent exits 2 at start when its HTTP address is taken."""
    p = facts.port
    if p is None:
        return Verdict.WARN, "not probed", "run doctor with --listen HOST:PORT"
    address = f"[{p.host}]:{p.port}" if ":" in p.host else f"{p.host}:{p.port}"
    if p.error is None:
        return Verdict.OK, f"{address} is free for the agent's HTTP server", None
    if p.holder is not None:
        return (
            Verdict.WARN,
            f"{address} is in use by a running {p.holder}",
            "nothing, if that is the agent you meant; a second one needs another --listen",
        )
    if p.errno == errno_mod.EADDRINUSE:
        finder = (
            f"lsof -nP -iTCP:{p.port} -sTCP:LISTEN"
            if facts.platform == "darwin"
            else f"ss -ltnp 'sport = :{p.port}'"
        )
        fix = f"find the owner with {finder}, or start the agent with --listen HOST:OTHER_PORT"
    elif p.errno == errno_mod.EACCES:
        fix = "use a port above 1023, or run the agent as root"
    else:
        fix = "use --listen with an address of this machine, e.g. 127.0.0.1:9438"
    return Verdict.FAIL, f"cannot listen on {address}: {p.error}", fix


def check_targets(facts: HostFacts) -> Result:
    """A configured target that matches nothing is dropped silently by resolution: say so."""
    if facts.unmatched:
        names = ", ".join(facts.unmatched)
        return (
            Verdict.WARN,
            f"configured target(s) {names} match no running process "
            f"({facts.targets} target(s) found)",
            "check each [[target]]'s cmdline pattern (pgrep -af PATTERN), pidfile or pid",
        )
    if facts.targets == 0:
        return Verdict.OK, "no targets configured or discovered: metalmem only reports", None
    return Verdict.OK, f"{facts.targets} target(s) found, every configured one matched", None


def check_kube(facts: HostFacts) -> Result:
    """Kubernetes reporting is only as good as the config and the API server's reachability."""
    k = facts.kube
    if k is None:
        return Verdict.OK, "not requested", None
    if k.error is None:
        found = f"Kubernetes {k.version} at {k.server} answered GET /version (config: {k.source})"
        if k.condition_writers:
            return (
                Verdict.WARN,
                f"{found}; another field manager writes the MemoryPressure condition metalmem "
                f"writes: {', '.join(k.condition_writers)}",
                "turn off LLMKube's own memory watchdog on the metal agent "
                "(--memory-watchdog-interval=0); docs/kubernetes.md, other writers",
            )
        if k.objects is not None:
            found += f"; no other writer of MemoryPressure on {k.objects} object(s)"
        elif k.list_error is not None:
            found += f"; objects not listed ({k.list_error})"
        return Verdict.OK, found, None
    if k.source is None and "not installed" in k.error:
        fix = "pip install 'metalmem[kube]'"
    elif k.server is None:
        fix = (
            "run inside the cluster with a service account, or pass --kubeconfig PATH "
            "(docs/kubernetes.md)"
        )
    else:
        fix = f"check that {k.server} is reachable from this host and the context is right"
    return Verdict.FAIL, f"Kubernetes unreachable: {k.error}", fix


def check_targets_sized(facts: HostFacts) -> Result:
    """A target whose memory cannot be read is never evicted (docs/configuration.md, "Targets
    the agent cannot size"): with every target so, the agent protects nothing."""
    if not facts.unsized:
        if not facts.targets:
            return Verdict.OK, "no targets configured or discovered", None
        return Verdict.OK, f"all {facts.targets} target(s) sized", None
    names = ", ".join(
        f"{u.key} (pid {u.pid}, uid {'?' if u.owner_uid is None else u.owner_uid}"
        f"{'' if u.adopted else ', not adopted'})"
        for u in facts.unsized
    )
    named = facts.targets + sum(1 for u in facts.unsized if not u.adopted)
    sized = named - len(facts.unsized)
    verdict = Verdict.FAIL if sized == 0 else Verdict.WARN
    finding = f"{len(facts.unsized)} of {named} target process(es) unsized, never evicted: {names}"
    denied = [u for u in facts.unsized if u.denied]
    if denied and facts.agent_uid != 0:
        call = "proc_pid_rusage" if facts.platform == "darwin" else "/proc/PID"
        owners = sorted({u.owner_uid for u in denied if u.owner_uid is not None})
        finding += (
            f"; the agent runs as uid {facts.agent_uid}, not root, and the OS refuses it "
            f"another user's process ({call}: EPERM), to size and to stop alike"
        )
        uids = f" (uid {', '.join(map(str, owners))})" if owners else ""
        fix = (
            "run the agent as root: sudo cp deploy/launchd/io.metalmem.agent.plist "
            "/Library/LaunchDaemons/ && sudo launchctl bootstrap system "
            "/Library/LaunchDaemons/io.metalmem.agent.plist; or as the targets' user"
            f"{uids}: add UserName to that plist"
            if facts.platform == "darwin"
            else "run the agent as root (deploy/systemd/metalmem.service); or as the targets' "
            f"user{uids}: add User= to that unit"
        )
        return verdict, finding, fix
    errors = "; ".join(f"{u.key}: {u.error}" for u in facts.unsized)
    return verdict, f"{finding} ({errors})", "metalmem-agent snapshot --pid PID shows each error"
