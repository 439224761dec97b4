"""Print the ratios of a pytest-benchmark JSON run: each group against its reference.

Usage: python benchmarks/report.py benchmarks/results.json
"""

from __future__ import annotations

import json
import platform
import sys
from collections import defaultdict


def main(path: str) -> None:
    with open(path) as f:
        doc = json.load(f)
    groups: dict[str, dict[str, float]] = defaultdict(dict)
    for b in doc["benchmarks"]:
        name = b["name"].split("[")[0].removeprefix("test_")
        groups[b["group"] or "-"][name] = b["stats"]["median"]
    info = doc.get("machine_info", {})
    print(
        f"machine: {info.get('cpu', {}).get('brand_raw', platform.processor())}, "
        f"{info.get('system')} {info.get('release')}, python {info.get('python_version')}"
    )
    for group, entries in sorted(groups.items()):
        ours = next((v for k, v in entries.items() if "metalmem" in k), None)
        print(f"\n[{group}]")
        for name, median in sorted(entries.items(), key=lambda kv: kv[1]):
            ratio = f"  {median / ours:8.2f}x metalmem" if ours else ""
            print(f"  {name:<40} {median * 1e6:12.2f} us{ratio}")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "benchmarks/results.json")
