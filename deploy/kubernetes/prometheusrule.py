"""Write deploy/kubernetes/prometheusrule.yaml from deploy/prometheus/metalmem-rules.yml.

    python3 deploy/kubernetes/prometheusrule.py > deploy/kubernetes/prometheusrule.yaml

The rules file is the one source (promtool checks and tests it); this wraps its groups in a
Prometheus Operator PrometheusRule, unchanged. tests/test_deploy_kube.py fails when the two
drift apart.
"""

from __future__ import annotations

import pathlib
import sys

import yaml

RULES = pathlib.Path(__file__).resolve().parent.parent / "prometheus" / "metalmem-rules.yml"
HEADER = (
    "# GENERATED from deploy/prometheus/metalmem-rules.yml by prometheusrule.py: do not edit;\n"
    "# edit the rules file and run\n"
    "#   python3 deploy/kubernetes/prometheusrule.py > deploy/kubernetes/prometheusrule.yaml\n"
)


def render(rules_text: str) -> str:
    """The PrometheusRule document for the rules file's text."""
    groups = yaml.safe_load(rules_text)["groups"]
    doc = {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PrometheusRule",
        "metadata": {
            "name": "metalmem",
            "namespace": "metalmem",
            "labels": {"app.kubernetes.io/name": "metalmem-agent"},
        },
        "spec": {"groups": groups},
    }
    return HEADER + yaml.safe_dump(doc, sort_keys=False, width=100)


if __name__ == "__main__":
    sys.stdout.write(render(RULES.read_text()))
