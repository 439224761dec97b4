"""The checks of memory, swap, pressure signals and the GPU: pure functions of the facts."""

from __future__ import annotations

import errno as errno_mod
import math

from ..level import Level
from ..pressure import Classifier
from ..units import human_bytes
from .facts import BOOT_PLIST_LABEL, HostFacts, MiB
from .findings import (
    DOC,
    MODEL_HEADROOM,
    Result,
    Verdict,
    baseline,
    gpu_ceiling,
    pct,
    recommended_wired_limit_mb,
)


def check_sampler(facts: HostFacts) -> Result:
    """Without a sample nothing else is known: the native module must work here."""
    s = facts.system
    if facts.sample_error is not None or s is None:
        return (
            Verdict.FAIL,
            f"the native sampler cannot sample this host: {facts.sample_error}",
            "reinstall the package so that its native module is rebuilt: "
            "pip install --force-reinstall --no-deps metalmem",
        )
    return (
        Verdict.OK,
        f"{facts.platform} sampler, scope {s.scope}: {human_bytes(s.total)} total, "
        f"{human_bytes(s.available)} available",
        None,
    )


def check_pressure(facts: HostFacts) -> Result:
    """The classifier's verdict on one sample with the config's thresholds: short now?"""
    s = facts.system
    if s is None:
        return Verdict.WARN, "no sample, so no assessment", "see the sampler check"
    a = Classifier(facts.pressure).assess(s, s.timestamp)
    if a.top_reason is not None:
        top = a.top_reason.message
    elif s.total and s.available is not None:
        top = f"{human_bytes(s.available)} of {human_bytes(s.total)} available"
    else:
        top = "no signal votes above NORMAL"
    finding = f"{a.level.name} now: {top}"
    if a.level == Level.NORMAL:
        return Verdict.OK, finding, None
    fix = (
        "find what holds the memory: metalmem-agent snapshot, then metalmem-agent explain "
        "--config PATH for the eviction ranking (docs/troubleshooting.md)"
    )
    return (Verdict.WARN if a.level == Level.WARNING else Verdict.FAIL), finding, fix


def check_wired_limit(facts: HostFacts) -> Result:
    """Can a GPU filled to its ceiling, plus what else runs, push the host below WARNING?"""
    ceiling, source = gpu_ceiling(facts)
    s = facts.system
    if facts.wired_limit_mb is None and ceiling is None:
        return (
            Verdict.WARN,
            "no iogpu.wired_limit_mb and no Metal working-set size: the GPU ceiling is unknown "
            "(macOS 13 has debug.iogpu.wired_limit in bytes; Intel Macs have neither)",
            "none for metalmem; on macOS 14 or later run: sysctl iogpu.wired_limit_mb",
        )
    if ceiling is None or s is None or s.total is None:
        return (
            Verdict.WARN,
            f"GPU ceiling from {source}; RAM unknown, nothing to compare",
            "see the sampler check",
        )
    total = s.total
    base = baseline(facts)
    rec = recommended_wired_limit_mb(total, base or 0, facts.pressure.warning_available)
    persist = f"; make it survive a reboot with deploy/macos/{BOOT_PLIST_LABEL}.plist ({DOC})"
    what = (
        "default policy (0)"
        if not facts.wired_limit_mb
        else f"iogpu.wired_limit_mb={facts.wired_limit_mb}"
    )
    finding = (
        f"{what}: the GPU may wire {human_bytes(ceiling)} = {pct(ceiling, total)} of "
        f"{human_bytes(total)} RAM ({source})"
    )
    if ceiling >= total:
        return (
            Verdict.FAIL,
            f"{finding}: nothing is left for macOS, which hangs or panics when the GPU fills it",
            f"sudo sysctl iogpu.wired_limit_mb={rec}{persist}",
        )
    room = total - math.ceil(facts.pressure.warning_available * total)
    if base is not None and ceiling + base > room:
        return (
            Verdict.WARN,
            f"{finding}; with the {human_bytes(base)} the host uses besides its models, a full "
            f"GPU leaves less than {facts.pressure.warning_available:.0%} available: WARNING",
            f"sudo sysctl iogpu.wired_limit_mb={rec}{persist}",
        )
    return Verdict.OK, finding, None


def check_wired_limit_boot(facts: HostFacts) -> Result:
    """A hand-set ``iogpu.wired_limit_mb`` is gone after a reboot unless a boot daemon sets it."""
    limit, plist = facts.wired_limit_mb, facts.boot_plist
    install = (
        f"install deploy/macos/{BOOT_PLIST_LABEL}.plist as {DOC} shows "
        f"(sudo cp, PlistBuddy Set, sudo launchctl bootstrap system)"
    )
    if limit is None:
        return Verdict.OK, "this macOS has no iogpu.wired_limit_mb: nothing to persist", None
    if plist is None or not plist.present:
        if limit == 0:
            return Verdict.OK, "default policy (0) and no boot daemon: nothing to persist", None
        return (
            Verdict.WARN,
            f"iogpu.wired_limit_mb={limit} is set now but nothing sets it at boot: the next "
            "reboot brings back the default",
            install,
        )
    if plist.error is not None or plist.value_mb is None:
        return Verdict.WARN, f"{plist.path}: cannot read it: {plist.error}", install
    if plist.value_mb != limit:
        return (
            Verdict.WARN,
            f"{plist.path} sets iogpu.wired_limit_mb={plist.value_mb} at boot but the kernel has "
            f"{limit} now (daemon not loaded, or changed by hand since)",
            f"sudo launchctl kickstart -k system/{BOOT_PLIST_LABEL} to apply {plist.value_mb}, "
            "or edit the plist's value",
        )
    return Verdict.OK, f"{plist.path} sets iogpu.wired_limit_mb={limit} at boot", None


def check_wired_collector(facts: HostFacts) -> Result:
    """``iogpu.disable_wired_collector=1`` keeps idle GPU memory wired; reported to hang a Mac."""
    value = facts.wired_collector_disabled
    if value is None:
        return Verdict.OK, "iogpu.disable_wired_collector does not exist on this macOS", None
    if value == 0:
        return (
            Verdict.OK,
            "iogpu.disable_wired_collector=0: macOS may unwire idle GPU memory (slower first "
            "token after idle on macOS 26, llama.cpp PR #17766)",
            None,
        )
    return (
        Verdict.WARN,
        f"iogpu.disable_wired_collector={value}: idle GPU memory stays wired; this made an M1 "
        "MacBook Air hang (ggml-org/llama.vscode#12)",
        f"sudo sysctl iogpu.disable_wired_collector=0, unless this is a dedicated host where "
        f"you measured the benefit ({DOC})",
    )


def check_model_fit(facts: HostFacts) -> Result:
    """Does the largest model on the targets' command lines fit the ceiling, with KV room?"""
    sized = [m for m in facts.models if m.size is not None]
    unknown = [m for m in facts.models if m.size is None]
    if not facts.models:
        return (
            Verdict.OK,
            f"no model file on the command lines of {facts.targets} target(s): nothing to compare",
            None,
        )
    ceiling, source = gpu_ceiling(facts)
    s = facts.system
    if ceiling is None and s is not None and s.total is not None:
        ceiling = s.total - math.ceil(facts.pressure.warning_available * s.total)
        source = "RAM less the WARNING threshold"
    if not sized or ceiling is None:
        why = "; ".join(f"{m.path}: {m.error}" for m in unknown) or "the ceiling is unknown"
        return (
            Verdict.WARN,
            f"cannot size the models: {why}",
            "give the model servers absolute model paths that this user can read",
        )
    largest = max(sized, key=lambda m: m.need or 0)
    size = largest.need or 0
    together = sum(m.need or 0 for m in sized)
    head = f"largest model {largest.path} ({largest.target}) is {human_bytes(largest.size or 0)}"
    if largest.kv_cache is not None:
        head += (
            f" plus a {human_bytes(largest.kv_cache)} KV cache at {largest.context} tokens "
            "(its GGUF header)"
        )
    need_mb = math.ceil(size / MODEL_HEADROOM / MiB)
    on_mac = facts.platform == "darwin"
    if on_mac:
        failure = "kIOGPUCommandBufferCallbackErrorOutOfMemory"
        room = f"give the GPU at least {need_mb} MiB if RAM allows: sudo sysctl "
        room += f"iogpu.wired_limit_mb={need_mb} ({DOC})"
    elif facts.gpu is not None:
        failure = "CUDA out-of-memory errors, or layers left on the CPU"
        room = "offload fewer layers to this GPU (llama-server -ngl N) or split it across GPUs"
    else:
        failure = "swapping or the OOM killer"
        room = "serve it on a host with more memory"
    if size > ceiling:
        return (
            Verdict.FAIL,
            f"{head}, more than the ceiling {human_bytes(ceiling)} ({source}): it cannot be "
            f"resident; expect {failure}",
            f"use a smaller quantization, or {room}",
        )
    if size > MODEL_HEADROOM * ceiling:
        return (
            Verdict.WARN,
            f"{head}, over {MODEL_HEADROOM:.0%} of the ceiling {human_bytes(ceiling)} "
            f"({source}): little room is left for the KV cache",
            f"a shorter context (-c), a smaller quantization, or {room}",
        )
    if together > ceiling:
        return (
            Verdict.WARN,
            f"the {len(sized)} models together need {human_bytes(together)}, more than the "
            f"ceiling {human_bytes(ceiling)} ({source}): they cannot all be resident at once",
            "give the targets priorities so that metalmem stops the right one first "
            "(docs/configuration.md), or serve fewer models",
        )
    return Verdict.OK, f"{head}: fits the ceiling {human_bytes(ceiling)} ({source})", None


def check_swap(facts: HostFacts) -> Result:
    """Swap in use means something was pushed to disk; no swap on Linux means no slow phase."""
    s = facts.system
    if s is None:
        return Verdict.WARN, "no sample: swap unknown", "see the sampler check"
    since = f"{human_bytes(s.swapouts)} swapped out since boot" if s.swapouts is not None else None
    fix_used = (
        "find the process that grew (metalmem-agent snapshot --pid PID, or Activity Monitor's "
        "Memory column on macOS); if it is a model, serve fewer or smaller models"
    )
    if s.swap_used:
        return (
            Verdict.WARN,
            f"{human_bytes(s.swap_used)} of {human_bytes(s.swap_total)} swap in use"
            + (f"; {since}" if since else "")
            + ": pages of a model there make it slow",
            fix_used,
        )
    if s.swap_used is None and s.swapouts:
        return Verdict.WARN, f"swap in use now unknown; {since}", fix_used
    if facts.platform == "linux" and s.swap_total == 0:
        return (
            Verdict.WARN,
            "no swap: pressure rises too abruptly for anyone to act before the kernel OOM "
            "killer (systemd-oomd calls swap highly recommended)",
            "add a swap file: sudo fallocate -l SIZE /swapfile && sudo chmod 600 /swapfile && "
            "sudo mkswap /swapfile && sudo swapon /swapfile",
        )
    if s.swap_used is None and s.swapouts is None:
        return (
            Verdict.WARN,
            "swap use unknown on this host",
            "check it by hand: sysctl vm.swapusage (macOS), swapon --show (Linux)",
        )
    now = "none in use now" if s.swap_used == 0 else "use now unknown"
    return Verdict.OK, f"swap: {now}" + (f"; {since}" if since else ""), None


def check_psi(facts: HostFacts) -> Result:
    """PSI is the Linux pressure signal; without it the psi.* signals are off."""
    s = facts.system
    psi = s.psi if s is not None else None
    if psi is None:
        return (
            Verdict.WARN,
            "no PSI (/proc/pressure/memory): the psi.some and psi.full signals are off",
            "boot with psi=1 on the kernel command line (kernels built with "
            "CONFIG_PSI_DEFAULT_DISABLED need it), e.g. in GRUB_CMDLINE_LINUX",
        )
    return (
        Verdict.OK,
        f"PSI memory some avg10 {psi.some_avg10}%, full avg10 {psi.full_avg10}%",
        None,
    )


def check_psi_trigger(facts: HostFacts) -> Result:
    """Whether the kernel lets the agent wake on pressure instead of only polling."""
    err, code = facts.psi_trigger_error, facts.psi_trigger_errno
    if err is None:
        return (
            Verdict.OK,
            "a PSI trigger (2 s window) opened: the loop wakes on pressure, not only on its timer",
            None,
        )
    finding = f"the kernel refused a PSI trigger ({err}): the agent falls back to polling"
    if code == errno_mod.EINVAL:
        fix = (
            "give the agent CAP_SYS_RESOURCE (systemd: AmbientCapabilities=CAP_SYS_RESOURCE), "
            "or use a kernel >= 6.4, which lets unprivileged users open 2 s windows"
        )
    elif code in (errno_mod.EACCES, errno_mod.EPERM):
        fix = (
            f"make {facts.scope if facts.scope != 'host' else '/proc/pressure/memory'} writable "
            "for the agent's user (a delegated cgroup: chown its memory.pressure), or run as root"
        )
    elif code in (errno_mod.ENOTSUP, errno_mod.EOPNOTSUPP, errno_mod.ENOENT):
        fix = "boot with psi=1 on the kernel command line"
    else:
        fix = "see the PSI section of docs/troubleshooting.md"
    return Verdict.WARN, finding, fix


_SOURCE_TEXT = {
    "psi": "PSI triggers",
    "v1_pressure_level": "cgroup v1 memory.pressure_level",
    "v1_usage": "cgroup v1 usage thresholds at the WARNING and CRITICAL available memory",
    "watch": "a headroom-paced poll of available memory (no kernel notification for it here)",
}


def check_events(facts: HostFacts) -> Result:
    """What wakes the loop between ticks; without any, only the adaptive interval does."""
    sources = facts.event_sources
    if sources is None:
        return Verdict.WARN, "event sources unknown", None
    if not sources:
        return (
            Verdict.WARN,
            "no event source: the loop only polls, its interval shortening as headroom "
            "shrinks (down to 100 ms)",
            "see psi.trigger; a cgroup v1 scope needs a writable cgroup.event_control",
        )
    return Verdict.OK, "the loop wakes on " + "; ".join(_SOURCE_TEXT[s] for s in sources), None


def check_cgroup(facts: HostFacts) -> Result:
    """Which cgroup files a ``--scope`` reads depends on the hierarchy version."""
    layout = facts.cgroup
    if layout is None:
        return (
            Verdict.WARN,
            "cannot read /proc/self/mountinfo",
            "run doctor where /proc is mounted (inside the agent's container or host)",
        )
    where = {"v1": "cgroup v1", "v2": "cgroup v2", None: "no"}[layout.memory]
    finding = f"cgroup {layout.version} ({where} memory controller)"
    if facts.scope == "host" or layout.memory == "v2":
        return Verdict.OK, finding + "; the host scope does not depend on it", None
    return (
        Verdict.WARN,
        f"{finding}: scope {facts.scope} reads v1 files (memory.limit_in_bytes); memory.max, "
        "memory.high and memory.events exist only in v2",
        "boot with systemd.unified_cgroup_hierarchy=1 for a pure v2 host, or keep the v1 view",
    )


def check_nvml(facts: HostFacts) -> Result:
    """The GPU signal on Linux needs NVML; a driver without it is a silent gap."""
    g = facts.gpu
    if g is not None:
        return (
            Verdict.OK,
            f"NVML: {g.name or 'GPU 0'}, {human_bytes(g.used)} of {human_bytes(g.limit)} used",
            None,
        )
    if facts.nvidia_driver:
        return (
            Verdict.WARN,
            "an NVIDIA driver is loaded but libnvidia-ml.so.1 cannot be opened: the gpu.headroom "
            "signal is off",
            "install the NVML library that matches the driver (it ships with nvidia-smi) so "
            "that libnvidia-ml.so.1 is on the loader path",
        )
    return (
        Verdict.OK,
        "no NVIDIA driver (/proc/driver/nvidia): no GPU signal, as expected on this host",
        None,
    )
