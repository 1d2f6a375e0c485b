"""Metrics: the bounded ``dag`` label, the journal lag gauges, and the Grafana dashboard's
queries against the metrics a running gateway exposes."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from lockgate import metrics
from lockgate.audit.journal import Journal
from lockgate.config.metrics import DagLabelSettings, MetricsSettings


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
