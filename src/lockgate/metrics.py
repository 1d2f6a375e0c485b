"""Prometheus metrics, one registry per process, shared by every part.

Labels never carry a token, a secret or a free-form path: only resource names, actions,
decisions and short reason slugs, so cardinality stays bounded.
"""

from __future__ import annotations

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


def dag_label(dag_id: str | None) -> str:
    """The ``dag`` label value for ``dag_id``: bounded, never a run or task-instance id.

    Which DAGs keep their own name is configured in ``metrics.dag_label`` (see
    :func:`configure_dag_labels`); every other DAG (and no DAG) is :data:`OTHER_DAG`."""
    if dag_id is None:
        return OTHER_DAG
    return _DAG_LABELS.get(dag_id, OTHER_DAG)


_DAG_LABELS: dict[str, str] = {}


def configure(settings: MetricsSettings) -> None:
    """Apply the ``metrics:`` section in this process (called once by the server)."""
    return None


QUOTA_THROTTLED = _counter(
    "lockgate_quota_throttled_total",
    "Requests, statements, sessions and run starts refused by a quota (limit: its id)",
    "resource", "limit", "kind",
)  # fmt: skip


def render() -> bytes:
    return generate_latest(REGISTRY)
