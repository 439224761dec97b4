"""The agent's own cost: CPU seconds per minute and RSS of `metalmem-agent run` with 16 targets
at 1 s and 100 ms intervals, without and with Kubernetes reporting (tests/kubefake.py).

    python benchmarks/agent_bench.py --json benchmarks/agent.json [--duration 60] [--no-kube]

Each configuration is one benchmarks/soak_agent.py run (its docstring says what is measured
and how), in sequence, so they never compete for the CPU. Duration per run:
``--duration``, else ``METALMEM_BENCH_AGENT_SECONDS``, else 60 s (10 s with
``METALMEM_BENCH_QUICK=1``); ``METALMEM_BENCH_SKIP`` containing ``agent`` skips the whole
part and ``kube`` the Kubernetes runs. A configuration that fails is recorded with its error,
so the report says what is missing instead of the suite stopping.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import sys
import time
from typing import Any

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from common import QUICK, SKIP, machine
from soak_agent import soak

CONFIGS = [("1s", False), ("100ms", False), ("1s", True), ("100ms", True)]


def main() -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    ap.add_argument("--json", default="benchmarks/agent.json", help="where to write the result")
    ap.add_argument("--duration", type=float, help="seconds per configuration")
    ap.add_argument("--targets", type=int, default=16)
    ap.add_argument("--no-kube", action="store_true", help="skip the Kubernetes runs")
    args = ap.parse_args()
    default = 10.0 if QUICK else 60.0
    duration = args.duration or float(os.environ.get("METALMEM_BENCH_AGENT_SECONDS", default))
    doc: dict[str, Any] = {"machine": machine(), "duration_s": duration, "runs": []}
    if "agent" in SKIP:
        doc["skipped"] = "METALMEM_BENCH_SKIP contains agent"
    elif not os.path.exists("/proc/self/stat") and sys.platform != "darwin":
        doc["skipped"] = f"the soak reads /proc or uses psutil on macOS; not on {sys.platform}"
    else:
        for interval, kube in CONFIGS:
            label = f"{interval}, {args.targets} targets, {'kube' if kube else 'no kube'}"
            if kube and (args.no_kube or "kube" in SKIP):
                doc["runs"].append({"interval": interval, "kube": True, "skipped": "kube skipped"})
                continue
            print(f"agent soak: {label}, {duration:g} s", flush=True)
            t0 = time.monotonic()
            try:
                run = soak(
                    duration,
                    interval,
                    args.targets,
                    every=max(1.0, duration / 6),
                    scrape=1.0,
                    extra=[],
                    kube=kube,
                    quiet=True,
                )
            except (Exception, SystemExit) as exc:  # recorded: the report says what is missing
                run = {"interval": interval, "kube": kube, "error": f"{type(exc).__name__}: {exc}"}
            run["wall_s"] = round(time.monotonic() - t0, 1)
            print(f"  {json.dumps(run)}", flush=True)
            doc["runs"].append(run)
    pathlib.Path(args.json).write_text(json.dumps(doc, indent=2) + "\n")


if __name__ == "__main__":
    main()
