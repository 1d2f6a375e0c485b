"""Prometheus metrics, one registry per process, shared by every part.

Labels never carry a token, a secret or a free-form path: only resource names, actions,
decisions and short reason slugs, so cardinality stays bounded.

Under ``lockgate serve --workers N`` every worker counts into prometheus_client's
multiprocess files (the supervisor sets ``PROMETHEUS_MULTIPROC_DIR`` in each worker's
environment, see :func:`worker_environment`), and :func:`render` in the worker that serves
/metrics aggregates them all with prometheus_client's ``MultiProcessCollector``. Counters and
histograms add up (a dead worker's counts stay); each gauge says how its workers' values
combine (``multiprocess_mode``, chosen per gauge in docs/metrics.md); gauges read at scrape
time (``set_function``) and the process metrics are sampled into the files once a second by
each worker. A single ``serve`` has no such variable: one in-memory registry, as fast as ever.
"""

from __future__ import annotations

import contextlib
import fcntl
import fnmatch
import glob
import os
import re
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    generate_latest,
    multiprocess,
    values,
)
from prometheus_client.mmap_dict import MmapedDict, mmap_key

from lockgate import _log

if TYPE_CHECKING:
    from lockgate.config.metrics import MetricsSettings

log = _log.get("metrics")

#: The environment of a ``serve --workers`` worker: prometheus_client's directory of
#: memory-mapped files, and the worker's index (the ``worker`` label of its process metrics).
MULTIPROCESS_DIR_ENV = "PROMETHEUS_MULTIPROC_DIR"
WORKER_ENV = "LOCKGATE_METRICS_WORKER"

# Decided by prometheus_client when it was imported (from the environment), like here.
SHARED = bool(getattr(values.ValueClass, "_multiprocess", False))
SAMPLE_INTERVAL = 1.0  # seconds between a worker's samples of what is read, not counted

REGISTRY = CollectorRegistry(auto_describe=True)
# process_resident_memory_bytes, process_open_fds, process_max_fds, CPU seconds, start time
# (read from /proc on each scrape; absent on platforms without it). Several workers: each
# samples its own into the shared files with its ``worker`` label (see _process_metrics).
PROCESS = ProcessCollector(registry=None if SHARED else REGISTRY)

GaugeMode = Literal["livesum", "livemax"]


def _counter(name: str, documentation: str, *labels: str) -> Counter:
    return Counter(name, documentation, labels, registry=REGISTRY)


def _gauge(name: str, documentation: str, *labels: str, workers: GaugeMode) -> Gauge:
    """``workers``: how the workers' values combine in /metrics of ``serve --workers`` (a
    dead worker's value is dropped when the supervisor replaces it)."""
    return _SampledGauge(name, documentation, labels, registry=REGISTRY, multiprocess_mode=workers)


# Gauges read when sampled (``set_function``) and the function each reads.
_functions: dict[Gauge, Callable[[], float]] = {}


class _SampledGauge(Gauge):
    """A gauge whose ``set_function`` holds under ``serve --workers`` too: there the value
    lives in the shared file, so a worker samples the function into it (see :func:`sample`);
    alone, reading at scrape time as prometheus_client does."""

    def set_function(self, f: Callable[[], float]) -> None:
        super().set_function(f)
        if SHARED:
            _functions[self] = f


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
    "lockgate_tokens_issued_total",
    "Lockgate tokens minted; dag is bounded (see dag_label)",
    "deployment", "resource", "dag",
)  # fmt: skip
TOKEN_REJECTIONS = _counter("lockgate_token_rejections_total", "Tokens or proofs refused", "reason")
CREDENTIAL_AGE = _gauge(
    "lockgate_credential_age_seconds",
    "Age of the current version of each upstream credential",
    "credential",
    workers="livemax",
)
REFUSALS = _counter(
    "lockgate_refusals_total",
    "Requests, connections and handshakes refused, by protocol and reason slug",
    "protocol", "reason",
)  # fmt: skip
SPANS_DROPPED = _counter(
    "lockgate_spans_dropped_total",
    "Spans never exported: queue_full (the collector slower than the gateway) or export_failed",
    "reason",
)
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
    workers="livemax",
)
AUDIT_SHIP_LAG_RECORDS = _gauge(
    "lockgate_audit_ship_lag_records",
    "Audit records committed to this replica's local chain and not yet shipped to PostgreSQL",
    workers="livemax",
)
AUDIT_SHIP_LAG_SECONDS = _gauge(
    "lockgate_audit_ship_lag_seconds",
    "Age of the oldest audit record not yet shipped to PostgreSQL (0 when none)",
    workers="livemax",
)
AUDIT_JOURNAL_LAG_RECORDS = _gauge(
    "lockgate_audit_journal_lag_records",
    "Allowed requests' records written ahead to this process's journal, not yet committed"
    " to the chain",
    workers="livesum",
)
AUDIT_JOURNAL_LAG_SECONDS = _gauge(
    "lockgate_audit_journal_lag_seconds",
    "Age of the oldest record written ahead to this process's journal and not yet committed"
    " (0 when none)",
    workers="livemax",
)
OPEN_CONNECTIONS = _gauge(
    "lockgate_open_connections",
    "Client connections accepted and not yet closed (TLS handshakes under way included)",
    "listener",
    workers="livesum",
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
# DAG ids labelled by name because an allow glob matches them, at most: a glob matches any
# number of ids and a deployment may mint tokens for any id its delegation allows, so past
# this many a further one is _other (the series count stays bounded whatever is minted).
_MAX_ALLOWED = 10_000


class DagLabels:
    """The bounded ``dag`` label: allow-listed DAG ids (globs) keep their name, then the
    first ``top`` other DAG ids this process sees, in order; every other DAG is
    :data:`OTHER_DAG`. Globs label at most :data:`_MAX_ALLOWED` ids by name per process. A
    DAG keeps the label it got for the life of the process, so its series never change
    name. Only DAG ids: never a run id nor a task-instance id."""

    def __init__(self, allow: Iterable[str] = (), top: int = 20) -> None:
        globs = [fnmatch.translate(g) for g in allow]
        self._allow = re.compile("|".join(globs)) if globs else None
        self._top = top
        self._firsts = 0  # DAG ids labelled by name as one of the first ``top``
        self._allowed = 0  # DAG ids labelled by name by an allow glob (_MAX_ALLOWED at most)
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
        allowed = self._allow is not None and self._allow.fullmatch(dag_id) is not None
        with self._lock:  # first come, first labelled: count each DAG once
            named = self._named.get(dag_id)
            if named is not None:
                return named
            if allowed:
                if self._allowed >= _MAX_ALLOWED:
                    return OTHER_DAG
                self._allowed += 1
            else:
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
    any request is counted; DAG ids seen before start over). Under ``serve --workers`` this
    also starts the worker's sampler (see :func:`sample`)."""
    global _dag_labels
    _dag_labels = DagLabels(settings.dag_label.allow, settings.dag_label.top)
    if SHARED:
        _start_sampler()


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


# --- several processes (``serve --workers``) -------------------------------------------


def worker_environment(directory: Path, worker: int) -> dict[str, str]:
    """The variables a ``serve --workers`` worker starts with: its metrics go to the shared
    ``directory`` (prometheus_client reads it at import), its process metrics carry
    ``worker="<worker>"``."""
    return {MULTIPROCESS_DIR_ENV: str(directory), WORKER_ENV: str(worker)}


#: The pid part of the files that hold the counts of every worker replaced so far.
RETIRED = "retired"
_LOCK_FILE = "lock"  # flock: a scrape reads while no worker's counts are being retired


@contextlib.contextmanager
def _files_locked(directory: str | Path, exclusive: bool) -> Iterator[None]:
    with open(os.path.join(directory, _LOCK_FILE), "a+b") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
        yield  # closing the file releases the lock


def process_exited(directory: Path, pid: int) -> None:
    """The worker ``pid`` is gone: its gauges leave /metrics (prometheus_client's
    ``mark_process_dead`` for the ``live*`` ones, and the files of any other mode, whose
    values no process stands behind any more). Its counters and histograms stay counted,
    merged into the ``*_retired.db`` files, so the directory holds a few files per live
    worker however often workers are replaced."""
    multiprocess.mark_process_dead(pid, str(directory))  # type: ignore[no-untyped-call]
    for leftover in glob.glob(os.path.join(directory, f"gauge_*_{pid}.db")):
        with contextlib.suppress(FileNotFoundError):  # removed meanwhile
            os.remove(leftover)
    with _files_locked(directory, exclusive=True):  # no scrape sees them twice or not at all
        for kind in ("counter", "histogram", "summary"):
            _retire(Path(directory), kind, pid)


def _retire(directory: Path, kind: str, pid: int) -> None:
    """Add the dead ``pid``'s ``kind`` file to the retired one, by prometheus_client's own
    merge (not accumulated: written back as it was counted), then drop it."""
    dead = directory / f"{kind}_{pid}.db"
    if not dead.exists():
        return
    retired = directory / f"{kind}_{RETIRED}.db"
    sources = [str(f) for f in (retired, dead) if f.exists()]
    merged = multiprocess.MultiProcessCollector.merge(sources, accumulate=False)  # type: ignore[no-untyped-call]
    staging = directory / f"{kind}_{RETIRED}.new"  # not *.db: no scrape reads it half done
    staging.unlink(missing_ok=True)
    out = MmapedDict(str(staging))  # type: ignore[no-untyped-call]
    try:
        for metric in merged:
            for s in metric.samples:
                key = mmap_key(
                    metric.name, s.name, list(s.labels), list(s.labels.values()),
                    metric.documentation,
                )  # fmt: skip
                out.write_value(key, s.value, 0.0)  # type: ignore[no-untyped-call]
    finally:
        out.close()  # type: ignore[no-untyped-call]
    os.replace(staging, retired)
    dead.unlink()


def _process_metrics() -> dict[str, Gauge | Counter]:
    """This worker's process metrics in the shared files, by ProcessCollector's names, with a
    ``worker`` label: RSS and file descriptors are per process (a sum hides the one that
    leaks); CPU seconds a counter that keeps what dead workers used."""
    made: dict[str, Gauge | Counter] = {}
    for family in PROCESS.collect():
        name, doc = family.name, family.documentation
        if family.type == "counter":
            made[name] = Counter(name, doc, ["worker"], registry=REGISTRY)
        else:
            made[name] = Gauge(
                name, doc, ["worker"], registry=REGISTRY, multiprocess_mode="livesum"
            )
    return made


_PROCESS_METRICS = _process_metrics() if SHARED else {}
_WORKER = os.environ.get(WORKER_ENV) or str(os.getpid())
_cpu_counted = 0.0  # CPU seconds of this process already added to process_cpu_seconds_total
_sample_lock = threading.Lock()
_sampler: threading.Thread | None = None


def sample() -> None:
    """Write what this worker reads rather than counts into the shared files: the gauges
    with a function (open connections, journal lag) and its process metrics. Each worker
    does it once a second; the one serving /metrics also right before rendering."""
    global _cpu_counted
    with _sample_lock:
        for gauge, read in list(_functions.items()):
            try:
                Gauge.set(gauge, read())
            except Exception:  # a failing reader keeps its last value; never ends the sampler
                log.debug("metrics sample failed", exc_info=True)
        for family in PROCESS.collect():
            metric = _PROCESS_METRICS.get(family.name)
            if metric is None or not family.samples:
                continue
            value = family.samples[0].value
            if isinstance(metric, Counter):
                metric.labels(_WORKER).inc(max(0.0, value - _cpu_counted))
                _cpu_counted = max(_cpu_counted, value)
            else:
                metric.labels(_WORKER).set(value)


def _start_sampler() -> None:
    global _sampler
    if _sampler is not None:
        return

    def run() -> None:
        while True:
            try:
                sample()
            except Exception:  # a sample missed, never the sampler
                log.exception("metrics sample failed")
            time.sleep(SAMPLE_INTERVAL)

    _sampler = threading.Thread(target=run, name="lockgate-metrics-sampler", daemon=True)
    _sampler.start()


_shared_registry: CollectorRegistry | None = None


@contextlib.contextmanager
def _exposed() -> Iterator[CollectorRegistry]:
    """What /metrics shows: this process's registry, or every worker's files (read while no
    dead worker's counts are being retired)."""
    if not SHARED:
        yield REGISTRY
        return
    global _shared_registry
    if _shared_registry is None:
        _shared_registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(_shared_registry)  # type: ignore[no-untyped-call]
    sample()
    with _files_locked(os.environ[MULTIPROCESS_DIR_ENV], exclusive=False):
        yield _shared_registry


def render() -> bytes:
    """The Prometheus text of this process, or under ``serve --workers`` of every worker."""
    with _exposed() as registry:
        return generate_latest(registry)


def sample_value(name: str, labels: Mapping[str, str] | None = None) -> float | None:
    """One sample as /metrics shows it (every worker's under ``serve --workers``), like
    ``CollectorRegistry.get_sample_value``; None when there is no such sample. Reading all
    workers' files costs a scrape: for checks made every few seconds, not per request."""
    with _exposed() as registry:
        return registry.get_sample_value(name, dict(labels) if labels else None)
