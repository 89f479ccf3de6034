"""The chart's monitoring objects against what shoal really exports: the ServiceMonitor
keeps Prometheus' staleness, every alert and dashboard query is valid PromQL (checked by
``promtool``) and names only metrics that shoal exports."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from shoal.agent.roots import REACHABLE_HELP, REACHABLE_METRIC
from shoal.observability import Metrics, MetricType
from shoal.observability.collectors import ADMISSION, HISTOGRAMS
from shoal.webhook.server import CLONES_LATE, CLONES_LATE_HELP, REVIEWS, REVIEWS_HELP

TOP = Path(__file__).resolve().parents[2]
CHART = TOP / "deploy" / "helm" / "shoal"
DASHBOARD = CHART / "files" / "dashboard.json"
#: a selector's metric name: an identifier right before ``{``
SELECTED = re.compile(r"([a-zA-Z_:][a-zA-Z0-9_:]*)\{")


def need(tool: str) -> str:
    found = shutil.which(tool)
    if found is None:
        pytest.skip(f"needs {tool} (make install)")
    return found


def exported() -> set[str]:
    """Every sample name an agent, a root and a webhook of shoal can export."""
    agent = Metrics("10.0.0.1:65001", "agent")
    agent.set_cache_source(lambda: (100, 50))
    for kind in MetricType:
        agent.record(kind, 1, 0.001)
    agent.inc("shoal_origin_fallback_total", "Blobs fetched from the origin by the agent itself")
    agent.set_gauge(REACHABLE_METRIC, REACHABLE_HELP, 1.0, root="r:65001")
    agent.blob_served("p2p", 1, 0.1, 0.01)
    for name, spec in HISTOGRAMS.items():
        agent.observe(name, 0.1, **dict.fromkeys(spec.labels, "x"))
    webhook = Metrics("w:8443", "webhook", reference=False)
    webhook.inc(REVIEWS, REVIEWS_HELP, trigger="pod", result="patched")
    webhook.inc(CLONES_LATE, CLONES_LATE_HELP, reason="api")
    webhook.observe(ADMISSION, 0.01, trigger="pod")
    names = {"up"}  # Prometheus' own, per target
    for m in (agent, webhook):
        for fam in text_string_to_metric_families(m.render()):
            names.update(s.name for s in fam.samples)
    return names


def promtool_rules(exprs: dict[str, str], tmp_path: Path) -> None:
    """``promtool check rules`` on the expressions, as recording rules."""
    rules = [{"record": f"shoal:check:{i}", "expr": e} for i, e in enumerate(exprs.values())]
    path = tmp_path / "rules.yaml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "check", "rules": rules}]}))
    done = subprocess.run(
        [need("promtool"), "check", "rules", str(path)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stdout + done.stderr


def render(*sets: str, full: bool = True) -> list[dict[str, Any]]:
    """The chart rendered with ``tests/deploy/values-full.yaml`` (or its defaults)."""
    args = [need("helm"), "template", "shoal", str(CHART), "--namespace", "shoal-system"]
    if full:
        args += ["-f", str(TOP / "tests" / "deploy" / "values-full.yaml")]
    for s in sets:
        args += ["--set", s]
    out = subprocess.run(args, check=True, capture_output=True, text=True, timeout=60).stdout
    return [d for d in yaml.safe_load_all(out) if d]


def test_the_service_monitor_keeps_staleness() -> None:
    (sm,) = [d for d in render() if d["kind"] == "ServiceMonitor"]
    for endpoint in sm["spec"]["endpoints"]:
        assert endpoint["honorTimestamps"] is False


def test_the_alerts_are_valid_and_name_only_shoals_metrics(tmp_path: Path) -> None:
    (rule,) = [
        d for d in render("metrics.prometheusRule.enabled=true") if d["kind"] == "PrometheusRule"
    ]
    rules = [r for g in rule["spec"]["groups"] for r in g["rules"]]
    assert {r["alert"] for r in rules} >= {
        "ShoalAgentDown",
        "ShoalRootDown",
        "ShoalOriginFallbacks",
        "ShoalCacheFull",
        "ShoalWebhookErrors",
    }
    path = tmp_path / "alerts.yaml"
    path.write_text(yaml.safe_dump({"groups": rule["spec"]["groups"]}))
    done = subprocess.run(
        [need("promtool"), "check", "rules", str(path)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stdout + done.stderr
    known = exported()
    for r in rules:
        for name in SELECTED.findall(r["expr"]):
            assert name in known, f"{r['alert']}: {name} is not exported by shoal"
    assert not [d for d in render(full=False) if d["kind"] == "PrometheusRule"]  # off by default


def test_the_dashboard_queries_are_valid_and_name_only_shoals_metrics(tmp_path: Path) -> None:
    board = json.loads(DASHBOARD.read_text())
    variables = {v["name"] for v in board["templating"]["list"]}
    assert {"datasource", "cluster", "job", "node"} <= variables
    exprs = {
        f"{p['title']} {t['refId']}": t["expr"]
        for p in board["panels"]
        for t in p.get("targets", [])
    }
    titles = " ".join(p["title"] for p in board["panels"]).lower()
    for topic in ("fallback", "by source", "pull time", "first byte", "piece fetch", "webhook"):
        assert topic in titles, topic
    known = exported()
    for title, expr in exprs.items():
        for name in SELECTED.findall(expr):
            assert name in known, f"{title}: {name} is not exported by shoal"
        assert 'cluster=~"$cluster"' in expr, f"{title}: not filtered by the cluster variable"
    grafana = {
        "$__rate_interval": "1m",
        "$__range": "1h",
        "$cluster": ".*",
        "$job": ".*",
        "$node": ".*",
    }
    concrete = {}
    for title, expr in exprs.items():
        for var, value in grafana.items():
            expr = expr.replace(var, value)
        assert "$" not in expr, f"{title}: unknown variable in {expr}"
        concrete[title] = expr
    promtool_rules(concrete, tmp_path)
