"""deploy/prometheus and deploy/grafana against a real promtool, and the agent's exposition.

promtool is Debian's (package ``prometheus``); ``make test`` installs it when run as root and
these tests skip with one line where it cannot be had.
"""

from __future__ import annotations

import json
import pathlib
import re
import shutil
import subprocess
from typing import Any

import pytest
import yaml
from prometheus_client.openmetrics.parser import text_string_to_metric_families as om_families
from prometheus_client.parser import text_string_to_metric_families

from .agentproc import AgentProcess
from .helpers import wait_for

ROOT = pathlib.Path(__file__).resolve().parent.parent
RULES = ROOT / "deploy" / "prometheus" / "metalmem-rules.yml"
RULE_TESTS = ROOT / "deploy" / "prometheus" / "metalmem-rules.test.yml"
DASHBOARD = ROOT / "deploy" / "grafana" / "metalmem-dashboard.json"


@pytest.fixture(scope="module")
def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        pytest.skip(
            "promtool not installed (Debian package prometheus; `make test` as root adds it)"
        )
    return path


def run_promtool(
    promtool: str, *args: str, stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [promtool, *args], input=stdin, capture_output=True, text=True, timeout=120
    )


def alerts() -> list[dict[str, Any]]:
    doc = yaml.safe_load(RULES.read_text())
    return [r for g in doc["groups"] for r in g["rules"] if "alert" in r]


def test_rules_are_valid(promtool: str) -> None:
    result = run_promtool(promtool, "check", "rules", str(RULES))
    assert result.returncode == 0, result.stdout + result.stderr


def test_rule_unit_tests_pass(promtool: str) -> None:
    result = run_promtool(promtool, "test", "rules", str(RULE_TESTS))
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_alert_has_a_test_that_fires_it_and_one_that_shows_it_quiet() -> None:
    tests = yaml.safe_load(RULE_TESTS.read_text())["tests"]
    cases = [c for t in tests for c in t.get("alert_rule_test", [])]
    for alert in alerts():
        name = alert["alert"]
        mine = [c for c in cases if c["alertname"] == name]
        assert any(c["exp_alerts"] for c in mine), f"no test fires {name}"
        assert any(not c["exp_alerts"] for c in mine), f"no test shows {name} quiet"


# The two expressions the docs shipped before (issue 18): the unit tests must catch each.
BROKEN = {
    "EvictionWantedButSkipped": (
        'increase(metalmem_evictions_skipped_total{reason!~"disabled|not_actionable"}[15m]) > 0 '
        "and metalmem_pressure_level == 2"
    ),
    "MetalmemDown": "absent_over_time(metalmem_pressure_level[10m])",
}


@pytest.mark.parametrize("name", sorted(BROKEN))
def test_rule_tests_fail_for_the_old_broken_expression(
    promtool: str, tmp_path: pathlib.Path, name: str
) -> None:
    doc = yaml.safe_load(RULES.read_text())
    for group in doc["groups"]:
        for rule in group["rules"]:
            if rule.get("alert") == name:
                rule["expr"] = BROKEN[name]
    (tmp_path / RULES.name).write_text(yaml.safe_dump(doc))
    shutil.copy(RULE_TESTS, tmp_path / RULE_TESTS.name)
    result = run_promtool(promtool, "test", "rules", str(tmp_path / RULE_TESTS.name))
    assert result.returncode != 0
    assert name in result.stdout + result.stderr


def dashboard_exprs() -> list[str]:
    doc = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in doc["panels"] for t in p.get("targets", [])]
    assert exprs, "the dashboard has no queries"
    return exprs


def test_every_dashboard_expression_is_valid_promql(promtool: str, tmp_path: pathlib.Path) -> None:
    # Grafana's $__rate_interval and $instance are template variables, not PromQL: substitute
    # what Grafana would, then let promtool parse each as a recording rule.
    def concrete(expr: str) -> str:
        return expr.replace("$__rate_interval", "5m").replace("$instance", "host:9438")

    rules = [
        {"record": f"metalmem:dashboard_{i}", "expr": concrete(e)}
        for i, e in enumerate(dashboard_exprs())
    ]
    path = tmp_path / "dashboard-rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    result = run_promtool(promtool, "check", "rules", str(path))
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"{len(rules)} rules found" in result.stdout


def test_the_dashboard_queries_only_metrics_the_agent_exports() -> None:
    from metalmem.metrics import METRIC_NAMES

    exported = set(METRIC_NAMES) | {"up"}
    exported |= {f"{n}_{s}" for n in METRIC_NAMES for s in ("bucket", "sum", "count")}
    for expr in dashboard_exprs():
        for name in re.findall(r"\b(metalmem_[a-z_]+|process_[a-z_]+)\b", expr):
            assert name in exported or name.startswith("process_"), (name, expr)


# --- the live exposition -----------------------------------------------------------------------


OPENMETRICS = "application/openmetrics-text; version=1.0.0"


@pytest.fixture(scope="module")
def scrapes(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    """The running agent's /metrics, as the classic text format and as OpenMetrics."""
    tmp = tmp_path_factory.mktemp("agent")
    with AgentProcess(["--memory-watchdog-interval", "200ms"], tmp / "agent.log") as agent:
        wait_for(lambda: agent.get("/readyz")[0] == 200, timeout=20, what="readyz")
        status, ctype, text = agent.get("/metrics")
        assert status == 200 and ctype.startswith("text/plain"), (status, ctype)
        status, ctype, om = agent.get("/metrics", accept=OPENMETRICS)
        assert status == 200 and ctype.startswith("application/openmetrics-text"), ctype
    return text, om


@pytest.fixture(scope="module")
def exposition(scrapes: tuple[str, str]) -> str:
    return scrapes[0]


def test_promtool_accepts_the_running_agents_exposition(promtool: str, exposition: str) -> None:
    result = run_promtool(promtool, "check", "metrics", stdin=exposition)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout + result.stderr == ""  # no lint warnings either


UNITS = ("bytes_per_second", "bytes", "seconds", "ratio")


def test_every_family_has_help_and_the_unit_its_name_promises(scrapes: tuple[str, str]) -> None:
    families = list(om_families(scrapes[1]))
    names = {f.name for f in families}
    for family in families:
        assert family.documentation.strip(), f"{family.name} has no HELP"
    for family in (f for f in families if f.name.startswith("metalmem_")):
        suffix = next((u for u in UNITS if family.name.endswith("_" + u)), "")
        assert family.unit == suffix, (family.name, family.unit)
    # The classic text parser reads the same families.
    assert {f.name for f in text_string_to_metric_families(scrapes[0])} == names
    # Self-metrics from the client library, thresholds in force, one unit per signal family.
    for name in (
        "process_resident_memory_bytes",
        "process_cpu_seconds",
        "python_info",
        "metalmem_pressure_threshold_ratio",
        "metalmem_memory_available_threshold_bytes",
        "metalmem_pressure_signal_ratio",
        "metalmem_watchdog_interval_seconds",
        "metalmem_config_last_reload_successful",
    ):
        assert name in names, name
    assert "metalmem_pressure_signal" not in names  # the mixed-unit family is gone


def test_counters_with_known_labels_start_at_zero(exposition: str) -> None:
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for f in text_string_to_metric_families(exposition)
        for s in f.samples
    }
    key = (
        "metalmem_evictions_total",
        (("reason", "memory.available"), ("result", "terminated")),
    )
    assert samples[key] == 0
    assert samples[("metalmem_evictions_skipped_total", (("reason", "floor"),))] == 0
    writes = ("metalmem_kube_writes_total", (("kind", "condition"), ("result", "forbidden")))
    assert samples[writes] == 0
    assert samples[("metalmem_config_last_reload_successful", ())] == 1


# --- a real Prometheus server scraping the agent ---------------------------------------------


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_a_real_prometheus_scrapes_and_ingests_every_family(tmp_path: pathlib.Path) -> None:
    # Prometheus asks for OpenMetrics first, accepts gzip and keeps its connection: the agent's
    # own exposition and HTTP server (issue 15, no prometheus-client) meet the real scraper.
    binary = shutil.which("prometheus")
    if binary is None:
        pytest.skip("prometheus not installed (Debian package prometheus; `make test` as root)")
    import urllib.parse
    import urllib.request

    from metalmem.metrics import METRIC_NAMES

    with AgentProcess(["--memory-watchdog-interval", "1s"], tmp_path / "agent.log") as agent:
        target = agent.base.removeprefix("http://")
        (tmp_path / "prometheus.yml").write_text(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 900ms\nscrape_configs:\n"
            f"  - job_name: metalmem\n    static_configs:\n      - targets: ['{target}']\n"
        )
        port = _free_port()
        prom = subprocess.Popen(
            [binary, f"--config.file={tmp_path / 'prometheus.yml'}",
             f"--storage.tsdb.path={tmp_path / 'tsdb'}", f"--web.listen-address=127.0.0.1:{port}",
             "--log.level=warn"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        try:

            def query(expr: str) -> list[dict[str, Any]]:
                url = f"http://127.0.0.1:{port}/api/v1/query?query={urllib.parse.quote(expr)}"
                try:
                    with urllib.request.urlopen(url, timeout=5) as resp:
                        return list(json.loads(resp.read())["data"]["result"])
                except OSError:
                    return []

            def scraped_twice() -> bool:
                found = query('up{job="metalmem"}')
                count = query('count_over_time(up{job="metalmem"}[1m])')
                return bool(found and count and float(count[0]["value"][1]) >= 2)

            wait_for(scraped_twice, timeout=60, what="two scrapes by Prometheus")
            assert [float(r["value"][1]) for r in query('up{job="metalmem"}')] == [1.0]
            names = {r["metric"]["__name__"] for r in query('{job="metalmem"}')}
            # Every family with a sample here (GPU and OOM counts are absent on this host).
            _, _, text = agent.get("/metrics")
            with_samples = {s.name for f in text_string_to_metric_families(text) for s in f.samples}
            assert with_samples <= names, sorted(with_samples - names)
            assert {"metalmem_ticks_total", "process_resident_memory_bytes"} <= names
            assert any(n.startswith(tuple(METRIC_NAMES)) for n in names)
            # Prometheus' own measure of the scrape: well within its timeout.
            took = query('scrape_duration_seconds{job="metalmem"}')
            assert took and float(took[0]["value"][1]) < 0.9
        finally:
            prom.terminate()
            prom.wait(timeout=30)
