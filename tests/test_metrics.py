"""Metrics: the bounded ``dag`` label, the journal lag gauges, and the Grafana dashboard's
queries against the metrics a running gateway exposes."""

from __future__ import annotations

import json
import re
import ssl
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families
from pydantic import ValidationError

from lockgate import metrics
from lockgate.audit.journal import Journal
from lockgate.config.metrics import DagLabelSettings, MetricsSettings
from lockgate.demo.stack import LocalStack
from lockgate.identity import TaskIdentity

DASHBOARD = Path(__file__).resolve().parents[1] / "docs" / "grafana" / "lockgate-dashboard.json"


def test_the_first_top_dags_keep_their_name_and_the_rest_are_other() -> None:
    labels = metrics.DagLabels(top=2)
    assert labels.label("a") == "a"
    assert labels.label("b") == "b"
    assert labels.label("c") == metrics.OTHER_DAG
    assert labels.label("a") == "a"  # a DAG keeps its label: its series never rename
    assert labels.label(None) == metrics.OTHER_DAG


def test_allow_listed_dags_keep_their_name_past_top() -> None:
    labels = metrics.DagLabels(allow=["finance_*", "orders_daily"], top=0)
    assert labels.label("finance_daily") == "finance_daily"
    assert labels.label("finance_hourly") == "finance_hourly"
    assert labels.label("orders_daily") == "orders_daily"
    assert labels.label("orders_daily_2") == metrics.OTHER_DAG  # globs match the whole id
    assert labels.label("marketing") == metrics.OTHER_DAG


@pytest.mark.parametrize(
    "dag_id",
    [
        "x" * 101,  # longer than a label should be
        "manual__2024-01-01T00:00:00+00:00",  # a run id is never a label ('+', ':')
        "dag with spaces",
        "dag\nnewline",
        "dägg",  # ASCII only
        "",
    ],
)
def test_a_dag_id_that_is_no_safe_label_is_other(dag_id: str) -> None:
    labels = metrics.DagLabels(allow=["*"], top=100)
    assert labels.label(dag_id) == metrics.OTHER_DAG


def test_configure_applies_the_metrics_section() -> None:
    try:
        metrics.configure(MetricsSettings(dag_label=DagLabelSettings(allow=["keep_*"], top=0)))
        assert metrics.dag_label("keep_me") == "keep_me"
        assert metrics.dag_label("other_dag") == metrics.OTHER_DAG
    finally:
        metrics.configure(MetricsSettings())
    assert metrics.dag_label("other_dag") == "other_dag"  # default: the first 20 by name


def test_dag_label_settings_refuse_what_is_no_glob_of_dag_ids() -> None:
    with pytest.raises(ValidationError):
        DagLabelSettings(allow=["finance daily"])
    with pytest.raises(ValidationError):
        DagLabelSettings(top=-1)
    assert MetricsSettings().dag_label.top == 20


def _gauge(name: str) -> float:
    value = metrics.REGISTRY.get_sample_value(name)
    assert value is not None
    return value


def test_journal_lag_counts_records_written_ahead_until_committed(tmp_path) -> None:
    journal = Journal(tmp_path / "j", "sender")
    try:
        before = _gauge("lockgate_audit_journal_lag_records")
        for seq in (1, 2, 3):
            journal.append(seq, ("admitted",))
        assert _gauge("lockgate_audit_journal_lag_records") == before + 3
        assert _gauge("lockgate_audit_journal_lag_seconds") >= 0.0
        journal.committed(2)
        assert journal.lag()[0] == 1
        journal.committed(3)
        assert journal.lag() == (0, 0.0)
        assert _gauge("lockgate_audit_journal_lag_records") == before
    finally:
        journal.close(chained_up_to=3)
    assert journal.lag() == (0, 0.0)


# -- the Grafana dashboard ---------------------------------------------------------------------
_METRIC = re.compile(r"\b((?:lockgate|process)_[a-z0-9_]+)\b")
_SELECTOR = re.compile(r"\b((?:lockgate|process)_[a-z0-9_]+)\{([^}]*)\}")
_MATCHER = re.compile(r"([a-zA-Z_][a-zA-Z0-9_]*)\s*(?:=~|!~|!=|=)")
_BY = re.compile(r"\bby\s*\(([^)]*)\)")
_SUFFIXES = {"histogram": ("_bucket", "_sum", "_count"), "counter": ("_total",)}
# labels Prometheus adds to every scraped series (the dashboard groups replicas by instance)
# instance and job come from the scrape; worker from serve --workers (one series per process)
_TARGET_LABELS = {"instance", "job", "le", "worker"}


def _exprs(dashboard: dict[str, Any]) -> Iterator[str]:
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            yield target["expr"]
    for var in dashboard["templating"]["list"]:
        if var["type"] == "query":
            yield var["definition"]


def _exposed(stack: LocalStack) -> dict[str, set[str]]:
    """Metric name -> label names, of every series a running gateway's /metrics exposes
    (a labelled metric with no child yet exposes its name, not its labels)."""
    ctx = ssl.create_default_context(cafile=str(stack.ca_file))
    with urllib.request.urlopen(stack.control_url + "/metrics", context=ctx, timeout=10) as r:
        text = r.read().decode()
    names: dict[str, set[str]] = {}
    for family in text_string_to_metric_families(text):
        for name in (family.name, *(family.name + s for s in _SUFFIXES.get(family.type, ()))):
            names.setdefault(name, set())
        for sample in family.samples:
            names.setdefault(sample.name, set()).update(sample.labels)
    return names


def _label_names() -> dict[str, set[str]]:
    """Metric name (as queried) -> its label names, from this process's registry."""
    out: dict[str, set[str]] = {}
    for collector in list(metrics.REGISTRY._collector_to_names):
        labels = set(getattr(collector, "_labelnames", ()))
        for name in metrics.REGISTRY._collector_to_names[collector]:
            out[name] = labels
    return out


def test_the_dashboard_queries_only_metrics_and_labels_a_gateway_exposes(
    stack: LocalStack,
) -> None:
    ident = TaskIdentity("prod", "finance_daily", "ops", "manual__ops", 1, -1)
    token = stack.gateway.issuer.mint(ident, "orders-api", 300)[0]
    ctx = ssl.create_default_context(cafile=str(stack.ca_file))
    request = urllib.request.Request(
        stack.http_url + "/orders-api/orders", headers={"Authorization": f"Bearer {token}"}
    )
    with urllib.request.urlopen(request, context=ctx, timeout=10) as r:
        assert r.status == 200  # so labelled series (requests, latency) appear
    exposed = _exposed(stack)
    assert any(n.startswith("lockgate_requests_total") for n in exposed)
    labels = _label_names()

    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["schemaVersion"] >= 39
    assert dashboard["templating"]["list"][0] == {
        **dashboard["templating"]["list"][0], "type": "datasource", "query": "prometheus",
    }  # fmt: skip
    exprs = list(_exprs(dashboard))
    used = {name for expr in exprs for name in _METRIC.findall(expr)}
    assert used, "no metric in the dashboard"
    missing = sorted(name for name in used if name not in exposed)
    assert not missing, f"the dashboard queries metrics /metrics does not expose: {missing}"
    for expr in exprs:
        in_expr: set[str] = set(_TARGET_LABELS)
        for name, matchers in _SELECTOR.findall(expr):
            known = labels.get(name, set()) | exposed.get(name, set()) | _TARGET_LABELS
            unknown = set(_MATCHER.findall(matchers)) - known
            assert not unknown, f"{name} has no label {sorted(unknown)} ({expr})"
        for name in _METRIC.findall(expr):
            in_expr |= labels.get(name, set()) | exposed.get(name, set())
        for group in _BY.findall(expr):
            grouped = {g.strip() for g in group.split(",") if g.strip()}
            assert grouped <= in_expr, f"grouped by unknown labels {grouped - in_expr}: {expr}"
    # every panel the issue asks for is there
    titles = " | ".join(p["title"].lower() for p in dashboard["panels"])
    for words in ("per dag", "denials", "quota", "p50", "429", "mint", "rejection",
                  "credential age", "audit write", "journal lag", "staleness",
                  "connections", "rss", "file descriptors"):  # fmt: skip
        assert words in titles, words


def test_the_dashboard_panels_do_not_overlap() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    cells: set[tuple[int, int]] = set()
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    for panel in dashboard["panels"]:
        g = panel["gridPos"]
        assert g["x"] + g["w"] <= 24
        mine = {
            (x, y) for x in range(g["x"], g["x"] + g["w"]) for y in range(g["y"], g["y"] + g["h"])
        }
        assert not mine & cells, panel["title"]
        cells |= mine


def test_request_counts_carry_the_bounded_dag_label() -> None:
    from lockgate.gateway.engine import RequestMetrics

    def value(dag: str) -> float:
        labels = {"resource": "metrics-test", "action": "read", "decision": "allow", "dag": dag}
        return metrics.REGISTRY.get_sample_value("lockgate_requests_total", labels) or 0.0

    try:
        metrics.configure(MetricsSettings(dag_label=DagLabelSettings(top=1)))
        counts = RequestMetrics()
        before = value(metrics.OTHER_DAG)
        counts.count("metrics-test", "read", "allow", "first_dag")
        counts.count("metrics-test", "read", "allow", "first_dag")
        counts.count("metrics-test", "read", "allow", "second_dag")
        counts.count("metrics-test", "read", "allow", "manual__2026-01-01T00:00:00+00:00")
        counts.count("metrics-test", "read", "allow", None)
    finally:
        metrics.configure(MetricsSettings())
    assert value("first_dag") == 2
    assert value("second_dag") == 0  # past top: _other
    assert value(metrics.OTHER_DAG) == before + 3
