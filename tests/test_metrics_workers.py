"""Metrics of several processes (``serve --workers``): prometheus_client's multiprocess files.

Each "worker" here is a short Python process started with the environment the supervisor
gives a worker (:func:`lockgate.metrics.worker_environment`): it counts, sets gauges, samples
and exits. The test process reads their files as the worker serving /metrics does.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, values
from prometheus_client.multiprocess import MultiProcessCollector
from pytest import approx

from lockgate import metrics
from lockgate.supervisor import environment, forget_worker, fresh_metrics_directory

# One worker's work: requests of one DAG, a credential's age, open connections read by a
# function (as the listeners do), one upstream latency; then what render() would show.
WORKER = """
import json, os, sys
from lockgate import metrics
requests, age, connections = int(sys.argv[1]), float(sys.argv[2]), int(sys.argv[3])
for _ in range(requests):
    metrics.REQUESTS.labels("orders-api", "read", "allow", "finance_daily").inc()
metrics.CREDENTIAL_AGE.labels("orders-api-key").set(age)
metrics.OPEN_CONNECTIONS.labels("http").set_function(lambda: connections)
metrics.UPSTREAM_LATENCY.labels("orders-api").observe(0.01)
metrics.sample()
print(json.dumps({"pid": os.getpid(), "shared": metrics.SHARED,
                  "text": metrics.render().decode() if len(sys.argv) > 4 else ""}))
"""


def _worker(directory: Path, index: int, *args: object) -> dict[str, object]:
    env = {**os.environ, **metrics.worker_environment(directory, index)}
    out = subprocess.run(
        [sys.executable, "-c", WORKER, *map(str, args)],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    answer: dict[str, object] = json.loads(out.stdout)
    return answer


def _exposed(directory: Path) -> CollectorRegistry:
    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=str(directory))  # type: ignore[no-untyped-call]
    return registry


def _series(registry: CollectorRegistry, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    return {
        tuple(sorted(s.labels.items())): s.value
        for family in registry.collect()
        for s in family.samples
        if s.name == name
    }


def test_alone_a_process_keeps_its_registry_in_memory() -> None:
    # no PROMETHEUS_MULTIPROC_DIR here, as under a single `lockgate serve`: no files, the
    # process collector as before, no worker label
    assert metrics.MULTIPROCESS_DIR_ENV not in os.environ
    assert metrics.SHARED is False
    assert values.ValueClass is values.MutexValue
    text = metrics.render().decode()
    assert "process_resident_memory_bytes " in text or "process_" not in text
    assert 'worker="' not in text


def test_workers_add_up_and_a_dead_workers_gauges_leave(tmp_path: Path) -> None:
    directory = fresh_metrics_directory(tmp_path)
    first = _worker(directory, 0, 5, 10.0, 3)
    second = _worker(directory, 1, 7, 30.0, 4)
    assert first["shared"] is True
    exposed = _exposed(directory)
    assert exposed.get_sample_value(
        "lockgate_requests_total",
        {"resource": "orders-api", "action": "read", "decision": "allow", "dag": "finance_daily"},
    ) == 12  # fmt: skip
    age = {"credential": "orders-api-key"}
    assert exposed.get_sample_value("lockgate_credential_age_seconds", age) == 30  # the oldest
    assert exposed.get_sample_value("lockgate_open_connections", {"listener": "http"}) == 7
    latency = {"resource": "orders-api"}
    assert exposed.get_sample_value("lockgate_upstream_latency_seconds_count", latency) == 2
    rss = _series(exposed, "process_resident_memory_bytes")
    assert set(rss) == {(("worker", "0"),), (("worker", "1"),)}
    assert all(v > 0 for v in rss.values())
    assert set(_series(exposed, "process_cpu_seconds_total")) == set(rss)

    # the supervisor replaces worker 1: its counts stay, its gauges go
    metrics.process_exited(directory, int(str(second["pid"])))
    exposed = _exposed(directory)
    assert exposed.get_sample_value(
        "lockgate_requests_total",
        {"resource": "orders-api", "action": "read", "decision": "allow", "dag": "finance_daily"},
    ) == 12  # fmt: skip
    assert exposed.get_sample_value("lockgate_credential_age_seconds", age) == 10
    assert exposed.get_sample_value("lockgate_open_connections", {"listener": "http"}) == 3
    assert set(_series(exposed, "process_resident_memory_bytes")) == {(("worker", "0"),)}
    assert set(_series(exposed, "process_cpu_seconds_total")) == set(rss)  # a counter stays
    # bounded: the dead worker's counts are merged into the retired files, its own files gone
    names = sorted(p.name for p in directory.iterdir())
    pid1 = first["pid"]
    kept = [f"{kind}_{pid1}.db" for kind in ("counter", "histogram")]
    retired = [f"{kind}_retired.db" for kind in ("counter", "histogram")]
    live = [f"gauge_{mode}_{pid1}.db" for mode in ("livemax", "livesum")]
    assert names == sorted([*kept, *retired, *live, "lock"])

    # a third worker, then every one replaced: the counts and the histogram's buckets add up
    third = _worker(directory, 1, 1, 1.0, 1)
    metrics.process_exited(directory, int(str(third["pid"])))
    metrics.process_exited(directory, int(str(first["pid"])))
    assert sorted(p.name for p in directory.iterdir()) == sorted([*retired, "lock"])
    exposed = _exposed(directory)
    assert exposed.get_sample_value(
        "lockgate_requests_total",
        {"resource": "orders-api", "action": "read", "decision": "allow", "dag": "finance_daily"},
    ) == 13  # fmt: skip
    assert exposed.get_sample_value("lockgate_upstream_latency_seconds_count", latency) == 3
    bucket = {**latency, "le": "0.01"}
    assert exposed.get_sample_value("lockgate_upstream_latency_seconds_bucket", bucket) == 3
    below = {**latency, "le": "0.005"}
    assert exposed.get_sample_value("lockgate_upstream_latency_seconds_bucket", below) == 0
    total = exposed.get_sample_value("lockgate_upstream_latency_seconds_sum", latency)
    assert total == approx(0.03)
    assert exposed.get_sample_value("lockgate_credential_age_seconds", age) is None


def test_render_in_a_worker_shows_every_worker(tmp_path: Path) -> None:
    directory = fresh_metrics_directory(tmp_path)
    _worker(directory, 1, 4, 5.0, 2)
    text = str(_worker(directory, 0, 3, 1.0, 1, "render")["text"])
    assert (
        'lockgate_requests_total{action="read",dag="finance_daily",decision="allow",'
        'resource="orders-api"} 7.0'
    ) in text
    assert 'lockgate_open_connections{listener="http"} 3.0' in text
    assert 'process_open_fds{worker="0"}' in text and 'process_open_fds{worker="1"}' in text


def test_the_directory_is_fresh_and_private_and_the_environment_restored(
    tmp_path: Path,
) -> None:
    stale = tmp_path / "metrics" / "counter_1.db"
    stale.parent.mkdir()
    stale.write_bytes(b"left by a killed run")
    directory = fresh_metrics_directory(tmp_path)
    assert list(directory.iterdir()) == []
    assert directory.stat().st_mode & 0o777 == 0o700
    with environment(metrics.worker_environment(directory, 3)):
        assert os.environ[metrics.MULTIPROCESS_DIR_ENV] == str(directory)
        assert os.environ[metrics.WORKER_ENV] == "3"
    assert metrics.MULTIPROCESS_DIR_ENV not in os.environ
    assert metrics.WORKER_ENV not in os.environ


def test_a_dead_workers_files_that_cannot_be_read_never_end_the_supervisor(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    directory = fresh_metrics_directory(tmp_path)
    torn = directory / "counter_999999.db"
    torn.write_bytes(b"\xff\xff\x00\x00" + bytes(60))  # says more is used than there is
    forget_worker(directory, 999_999)
    assert "could not retire a dead worker's metrics" in caplog.text
    assert not (directory / "counter_retired.db").exists()
