"""Prometheus metrics, one registry per process, shared by every part.

Labels never carry a token, a secret or a free-form path: only resource names, actions,
decisions and short reason slugs, so cardinality stays bounded.
"""

from __future__ import annotations

import fnmatch
import re
import threading
from collections.abc import Iterable
from typing import TYPE_CHECKING

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    generate_latest,
)

if TYPE_CHECKING:
    from lockgate.config.metrics import MetricsSettings

REGISTRY = CollectorRegistry(auto_describe=True)
# process_resident_memory_bytes, process_open_fds, process_max_fds, CPU seconds, start time
# (read from /proc on each scrape; absent on platforms without it)
PROCESS = ProcessCollector(registry=REGISTRY)


def _counter(name: str, documentation: str, *labels: str) -> Counter:
    return Counter(name, documentation, labels, registry=REGISTRY)


def _gauge(name: str, documentation: str, *labels: str) -> Gauge:
    return Gauge(name, documentation, labels, registry=REGISTRY)


REQUESTS = _counter(
    "lockgate_requests_total",
    "Requests and statements decided by the gateway; dag is bounded (see dag_label)",
    "resource", "action", "decision", "dag",
)  # fmt: skip
UPSTREAM_LATENCY = Histogram(
    "lockgate_upstream_latency_seconds",
    "Time from sending upstream to the response head",
    ["resource"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
    registry=REGISTRY,
)
UPSTREAM_RETRIES = _counter(
    "lockgate_upstream_retries_total", "Upstream attempts retried", "resource", "reason"
)
UPSTREAM_THROTTLES = _counter(
    "lockgate_upstream_throttled_total", "Upstream 429 answers", "resource"
)
UPSTREAM_ERRORS = _counter(
    "lockgate_upstream_errors_total", "Upstream failures after retries", "resource", "reason"
)
TOKENS_ISSUED = _counter(
    "lockgate_tokens_issued_total", "Lockgate tokens minted", "deployment", "resource"
)
TOKEN_REJECTIONS = _counter("lockgate_token_rejections_total", "Tokens or proofs refused", "reason")
CREDENTIAL_AGE = _gauge(
    "lockgate_credential_age_seconds",
    "Age of the current version of each upstream credential",
    "credential",
)
REFUSALS = _counter(
    "lockgate_refusals_total",
    "Requests, connections and handshakes refused, by protocol and reason slug",
    "protocol", "reason",
)  # fmt: skip
AUDIT_FAILURES = _counter(
    "lockgate_audit_write_failures_total", "Audit writes that failed or timed out"
)
POLICY_RELOADS = _counter("lockgate_policy_reloads_total", "Policy reloads by outcome", "outcome")
FORWARD_PROXY_TUNNELS = _counter(
    "lockgate_forward_proxy_tunnels_total",
    "CONNECT tunnels by resource and outcome (open, tls_failed, or the refusal slug)",
    "resource", "outcome",
)  # fmt: skip
SHARED_STATE_STALE = _gauge(
    "lockgate_shared_state_stale_seconds",
    "Seconds since this replica last reached the shared state database (0 on SQLite state);"
    " past state.postgresql.max_staleness every request is refused",
)
AUDIT_SHIP_LAG_RECORDS = _gauge(
    "lockgate_audit_ship_lag_records",
    "Audit records committed to this replica's local chain and not yet shipped to PostgreSQL",
)
AUDIT_SHIP_LAG_SECONDS = _gauge(
    "lockgate_audit_ship_lag_seconds",
    "Age of the oldest audit record not yet shipped to PostgreSQL (0 when none)",
)
AUDIT_JOURNAL_LAG_RECORDS = _gauge(
    "lockgate_audit_journal_lag_records",
    "Allowed requests' records written ahead to this process's journal, not yet committed"
    " to the chain",
)
AUDIT_JOURNAL_LAG_SECONDS = _gauge(
    "lockgate_audit_journal_lag_seconds",
    "Age of the oldest record written ahead to this process's journal and not yet committed"
    " (0 when none)",
)
OPEN_CONNECTIONS = _gauge(
    "lockgate_open_connections",
    "Client connections accepted and not yet closed (TLS handshakes under way included)",
    "listener",
)
CONNECTIONS_REFUSED = _counter(
    "lockgate_connections_refused_total",
    "Connections refused because the listener was at its max_connections",
    "listener",
)


#: The ``dag`` label of requests whose DAG is not among those labelled by name (and of
#: requests with no verified token).
OTHER_DAG = "_other"

# What Airflow allows in a DAG id, ASCII only and at most 100 characters: anything else (a
# crafted id from a federated issuer, a run id pasted by mistake) is never a label value.
_SAFE_DAG_ID = re.compile(r"[A-Za-z0-9_.-]{1,100}")
# Allow-listed DAG ids remembered by name; past this many the glob is matched again instead.
_MAX_REMEMBERED = 10_000


class DagLabels:
    """The bounded ``dag`` label: allow-listed DAG ids (globs) keep their name, then the
    first ``top`` other DAG ids this process sees, in order; every other DAG is
    :data:`OTHER_DAG`. A DAG keeps the label it got for the life of the process, so its
    series never change name. Only DAG ids: never a run id nor a task-instance id."""

    def __init__(self, allow: Iterable[str] = (), top: int = 20) -> None:
        globs = [fnmatch.translate(g) for g in allow]
        self._allow = re.compile("|".join(globs)) if globs else None
        self._top = top
        self._firsts = 0  # DAG ids labelled by name as one of the first ``top``
        self._named: dict[str, str] = {}
        self._lock = threading.Lock()

    def label(self, dag_id: str | None) -> str:
        if dag_id is None:
            return OTHER_DAG
        named = self._named.get(dag_id)
        if named is not None:
            return named
        if type(dag_id) is not str or not _SAFE_DAG_ID.fullmatch(dag_id):
            return OTHER_DAG
        if self._allow is not None and self._allow.fullmatch(dag_id):
            if len(self._named) < _MAX_REMEMBERED:
                self._named[dag_id] = dag_id
            return dag_id
        with self._lock:  # first come, first labelled: count each DAG once
            named = self._named.get(dag_id)
            if named is not None:
                return named
            if self._firsts >= self._top:
                return OTHER_DAG
            self._firsts += 1
            self._named[dag_id] = dag_id
            return dag_id


_dag_labels = DagLabels()


def dag_label(dag_id: str | None) -> str:
    """The ``dag`` label value for ``dag_id``: bounded, never a run or task-instance id.

    Which DAGs keep their own name is configured in ``metrics.dag_label`` (see
    :func:`configure` and :class:`DagLabels`); every other DAG (and no DAG) is
    :data:`OTHER_DAG`."""
    return _dag_labels.label(dag_id)


def configure(settings: MetricsSettings) -> None:
    """Apply the ``metrics:`` section in this process (called once by the server, before
    any request is counted; DAG ids seen before start over)."""
    global _dag_labels
    _dag_labels = DagLabels(settings.dag_label.allow, settings.dag_label.top)


QUOTA_THROTTLED = _counter(
    "lockgate_quota_throttled_total",
    "Requests, statements, sessions and run starts refused by a quota (limit: its id)",
    "resource", "limit", "kind",
)  # fmt: skip
QUOTA_WAIT = Histogram(
    "lockgate_quota_wait_seconds",
    "Time a request or statement was held by a quota's pacing (max_delay) before it went on",
    ["resource", "limit"],
    buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
    registry=REGISTRY,
)


def render() -> bytes:
    return generate_latest(REGISTRY)
