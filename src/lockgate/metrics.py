"""Prometheus metrics, one registry per process, shared by every part.

Labels never carry a token, a secret or a free-form path: only resource names, actions,
decisions and short reason slugs, so cardinality stays bounded.
"""

from __future__ import annotations

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    generate_latest,
)

REGISTRY = CollectorRegistry(auto_describe=True)
# process_resident_memory_bytes, process_open_fds, process_max_fds, CPU seconds, start time
# (read from /proc on each scrape; absent on platforms without it)
PROCESS = ProcessCollector(registry=REGISTRY)

REQUESTS = Counter(
    "lockgate_requests_total",
    "Requests and statements decided by the gateway",
    ["resource", "action", "decision"],
    registry=REGISTRY,
)
UPSTREAM_LATENCY = Histogram(
    "lockgate_upstream_latency_seconds",
    "Time from sending upstream to the response head",
    ["resource"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
    registry=REGISTRY,
)
UPSTREAM_RETRIES = Counter(
    "lockgate_upstream_retries_total",
    "Upstream attempts retried",
    ["resource", "reason"],
    registry=REGISTRY,
)
UPSTREAM_THROTTLES = Counter(
    "lockgate_upstream_throttled_total", "Upstream 429 answers", ["resource"], registry=REGISTRY
)
UPSTREAM_ERRORS = Counter(
    "lockgate_upstream_errors_total",
    "Upstream failures after retries",
    ["resource", "reason"],
    registry=REGISTRY,
)
TOKENS_ISSUED = Counter(
    "lockgate_tokens_issued_total",
    "Lockgate tokens minted",
    ["deployment", "resource"],
    registry=REGISTRY,
)
TOKEN_REJECTIONS = Counter(
    "lockgate_token_rejections_total", "Tokens or proofs refused", ["reason"], registry=REGISTRY
)
CREDENTIAL_AGE = Gauge(
    "lockgate_credential_age_seconds",
    "Age of the current version of each upstream credential",
    ["credential"],
    registry=REGISTRY,
)
REFUSALS = Counter(
    "lockgate_refusals_total",
    "Requests, connections and handshakes refused, by protocol and reason slug",
    ["protocol", "reason"],
    registry=REGISTRY,
)
AUDIT_FAILURES = Counter(
    "lockgate_audit_write_failures_total",
    "Audit writes that failed or timed out",
    registry=REGISTRY,
)
POLICY_RELOADS = Counter(
    "lockgate_policy_reloads_total", "Policy reloads by outcome", ["outcome"], registry=REGISTRY
)

FORWARD_PROXY_TUNNELS = Counter(
    "lockgate_forward_proxy_tunnels_total",
    "CONNECT tunnels by resource and outcome (open, tls_failed, or the refusal slug)",
    ["resource", "outcome"],
    registry=REGISTRY,
)

OPEN_CONNECTIONS = Gauge(
    "lockgate_open_connections",
    "Client connections accepted and not yet closed (TLS handshakes under way included)",
    ["listener"],
    registry=REGISTRY,
)
CONNECTIONS_REFUSED = Counter(
    "lockgate_connections_refused_total",
    "Connections refused because the listener was at its max_connections",
    ["listener"],
    registry=REGISTRY,
)


def render() -> bytes:
    return generate_latest(REGISTRY)
