"""The host checks behind ``metalmem-agent doctor``: facts gathered once, then pure checks.

Three steps, kept apart so that every verdict can be tested on any machine:

1. :func:`gather_facts` (:mod:`.gather`) reads the host once into a :class:`HostFacts` record
   (:mod:`.facts`): the real :class:`metalmem.Sampler` (memory, GPU, a PSI trigger), sysctls
   on macOS, ``/proc`` on Linux, the targets' command lines and model files (GGUF headers,
   :mod:`.gguf`), a bind on the HTTP port and, only when asked, one GET of Kubernetes'
   ``/version`` (:mod:`.probes`).
2. The checks of :data:`CHECKS` (:mod:`.checks`) are pure functions of those facts, one row
   each (:mod:`.memory_checks`, :mod:`.host_checks`), so the macOS rows are tested on Linux
   over facts recorded from real Macs (reference/macos-memory.md §4.5).
3. :func:`report_to_dict` is the JSON document (``docs/doctor.schema.json``) and
   :func:`exit_code` the status: 1 if any check fails. The CLI renders the table.

macOS sysctls are read by running ``sysctl -n NAME`` rather than through ctypes
``sysctlbyname``: doctor runs once, so one fork per name costs nothing that matters; the value is
then exactly what the operator sees when typing the command the fix line shows; and ``sysctl``
knows each name's C type, which ctypes would have to be told name by name. The sampler keeps
reading the same sysctls in C on the hot path.

``import metalmem`` does not import this package; the CLI imports it when doctor runs.
"""

from .checks import CHECKS, Check, exit_code, report_to_dict, run_checks
from .facts import (
    BOOT_PLIST_LABEL,
    AgentProcess,
    BootPlist,
    CgroupLayout,
    HostFacts,
    KubeProbe,
    ModelFile,
    PortProbe,
    UnsizedTarget,
    cgroup_layout,
    is_agent_argv,
    model_paths,
    model_size,
)
from .findings import MODEL_HEADROOM, Finding, Verdict, recommended_wired_limit_mb
from .gather import DoctorOptions, gather_facts, read_boot_plist, read_sysctl
from .probes import kube_error_text, probe_kube, probe_port

__all__ = [
    "BOOT_PLIST_LABEL",
    "CHECKS",
    "MODEL_HEADROOM",
    "AgentProcess",
    "BootPlist",
    "CgroupLayout",
    "Check",
    "DoctorOptions",
    "Finding",
    "HostFacts",
    "KubeProbe",
    "ModelFile",
    "PortProbe",
    "UnsizedTarget",
    "Verdict",
    "cgroup_layout",
    "exit_code",
    "gather_facts",
    "is_agent_argv",
    "kube_error_text",
    "model_paths",
    "model_size",
    "probe_kube",
    "probe_port",
    "read_boot_plist",
    "read_sysctl",
    "recommended_wired_limit_mb",
    "report_to_dict",
    "run_checks",
]
