"""The reference docs cannot drift: every `run` flag, variable and config key is in
docs/configuration.md; every metric the agent can export is in docs/metrics.md."""

from __future__ import annotations

import dataclasses
import pathlib
import re

from metalmem_cli.agent import SETTINGS, run

from metalmem.configfile import AGENT_KEYS, KUBE_KEYS
from metalmem.eviction import EvictionPolicy, SkipReason
from metalmem.metrics import METRIC_NAMES
from metalmem.pressure import PressurePolicy

DOCS = pathlib.Path(__file__).resolve().parent.parent / "docs"


def _code_spans(path: pathlib.Path) -> set[str]:
    return set(re.findall(r"`([^`]+)`", path.read_text()))


def test_every_run_flag_and_variable_is_documented() -> None:
    spans = _code_spans(DOCS / "configuration.md")
    missing = []
    for param in run.params:
        for opt in (*param.opts, *getattr(param, "secondary_opts", ())):
            if opt not in spans:
                missing.append(opt)
        envvar = param.envvar
        if isinstance(envvar, str) and envvar not in spans:
            missing.append(envvar)
    assert not missing, f"not in docs/configuration.md: {missing}"


def test_every_config_key_is_documented() -> None:
    spans = _code_spans(DOCS / "configuration.md")
    keys = {f"agent.{k}" for k in AGENT_KEYS} | {f"kube.{k}" for k in KUBE_KEYS}
    keys |= {s.key for s in SETTINGS.values() if s.key is not None}
    # Policy keys appear in their section's table by their bare name.
    bare = {f.name for f in dataclasses.fields(PressurePolicy)}
    bare |= {f.name for f in dataclasses.fields(EvictionPolicy)}
    missing = sorted(k for k in keys if k not in spans) + sorted(k for k in bare if k not in spans)
    assert not missing, f"not in docs/configuration.md: {missing}"


def test_every_metric_is_documented() -> None:
    spans = _code_spans(DOCS / "metrics.md")
    missing = [name for name in METRIC_NAMES if name not in spans]
    assert not missing, f"not in docs/metrics.md: {missing}"


def test_every_documented_metric_exists() -> None:
    text = (DOCS / "metrics.md").read_text()
    rows = set(re.findall(r"^\| `(metalmem_[a-z_]+)` \|", text, re.MULTILINE))
    assert rows and rows <= set(METRIC_NAMES), rows - set(METRIC_NAMES)


def test_every_skip_reason_is_in_the_metrics_labels() -> None:
    text = (DOCS / "metrics.md").read_text()
    assert all(f"`{r.value}`" in text for r in SkipReason)
