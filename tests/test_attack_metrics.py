"""Attacks on the metrics: DAG ids come from tokens, and a deployment may mint tokens for
any DAG id its delegation allows (``finance_*`` is any number of ids). A long-running
process fed 100k distinct ids, or ids with odd characters, keeps a bounded number of
series and a bounded cache; what /metrics prints stays well-formed."""

from __future__ import annotations

import pytest
from prometheus_client.parser import text_string_to_metric_families

from lockgate import metrics
from lockgate.gateway import engine
from lockgate.gateway.engine import RequestCounter

ODD = ['x"} 1\nlockgate_fake 1', "a\\b", "é", "a b", "<script>", "a" * 101, "", "run/1"]


def _series(resource: str) -> list[dict[str, str]]:
    families = text_string_to_metric_families(metrics.render().decode())
    return [
        s.labels
        for f in families
        if f.name == "lockgate_requests"
        for s in f.samples
        if s.name == "lockgate_requests_total" and s.labels.get("resource") == resource
    ]


def test_attack_an_allow_glob_labels_a_bounded_number_of_minted_ids(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(metrics, "_MAX_ALLOWED", 1000)  # the cap, scaled down
    labels = metrics.DagLabels(allow=["finance_*"], top=5)
    seen = {labels.label(f"finance_{i}") for i in range(100_000)}
    seen |= {labels.label(f"other_{i}") for i in range(1000)}
    assert len(seen) == 1000 + 5 + 1 and metrics.OTHER_DAG in seen
    assert labels.label("finance_0") == "finance_0"  # a DAG keeps its name
    assert labels.label("finance_99999") == metrics.OTHER_DAG


def test_attack_100k_dag_ids_keep_series_and_cache_bounded(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(metrics, "_dag_labels", metrics.DagLabels(allow=["fin_*"], top=20))
    monkeypatch.setattr(metrics, "_MAX_ALLOWED", 500)
    monkeypatch.setattr(engine, "_MAX_CACHED_CHILDREN", 2000)
    counter = RequestCounter("attack-metrics")
    for i in range(100_000):
        counter.count("read", "deny", f"fin_{i}" if i % 2 else f"dag_{i}")
        assert len(counter._children) <= 2001
    for odd in ODD:
        counter.count("read", "deny", odd)
    series = _series("attack-metrics")
    dags = {s["dag"] for s in series}
    assert len(dags) <= 500 + 20 + 1
    assert all(metrics._SAFE_DAG_ID.fullmatch(d) for d in dags)
    assert sum(1 for _ in series) == len(dags)  # one action and decision: one series a DAG


def test_attack_odd_label_values_are_escaped_in_the_exposition() -> None:
    resource = 'res"} 1\nlockgate_injected_total 1 #'
    metrics.UPSTREAM_RETRIES.labels(resource, "reason\\with\nnewline").inc()
    text = metrics.render().decode()
    assert "\nlockgate_injected_total 1" not in text
    parsed = [
        s.labels
        for f in text_string_to_metric_families(text)
        for s in f.samples
        if s.name == "lockgate_upstream_retries_total"
    ]
    assert {"resource": resource, "reason": "reason\\with\nnewline"} in parsed
