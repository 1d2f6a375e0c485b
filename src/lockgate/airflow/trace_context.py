"""The W3C ``traceparent`` of the running task try, sent with each token request.

The gateway puts it in the token, so its spans of every request made with that token join
the task's trace (docs/tracing.md). Where an Airflow 3 task's trace context lives, first
found wins:

1. the current OpenTelemetry span of the task process: Airflow's task runner starts
   ``worker.<task_id>`` as the current span, parented on the task instance's carrier (with
   Airflow's tracing off the no-op tracer still carries that parent's context);
2. the task instance's ``context_carrier`` (the scheduler's ``traceparent`` for this try);
3. the ``TRACEPARENT`` environment variable (the OpenTelemetry convention for a process
   started inside a trace);
4. otherwise a fresh trace id for this task try, kept for the try's later requests and
   written once to the task log at INFO: a trace id is no secret, and it is how an
   operator finds the gateway's spans of that try.

Standard library only, like the rest of the provider (the format rule is the gateway's own,
from :mod:`lockgate.tracing`, which imports no SDK): OpenTelemetry is used when it is
importable (Airflow 3 installs it), never required.
"""

from __future__ import annotations

import logging
import os
import secrets
import threading
from collections.abc import Mapping

# The gateway's own rule (version 00, lowercase hex, no all-zero ids); no SDK import.
from lockgate.tracing import valid_traceparent as valid

log = logging.getLogger("lockgate.airflow")

_MAX_FRESH = 1024  # fresh trace ids kept (one per task try this process ran)
_fresh: dict[tuple[object, ...], str] = {}
_lock = threading.Lock()


def task_traceparent(coords: Mapping[str, object]) -> str:
    """The trace context of the task try ``coords``."""
    carrier = _carrier_of(coords)
    return (
        _current_span()
        or (valid(carrier.get("traceparent")) if isinstance(carrier, Mapping) else None)
        or valid(os.environ.get("TRACEPARENT"))
        or _fresh_for(tuple(coords.values()))
    )


def _carrier_of(coords: Mapping[str, object]) -> object:
    """The running task instance's ``context_carrier`` when it is the try ``coords`` names
    (a trigger asks for a deferred try from the triggerer, with no such task instance)."""
    try:
        from airflow.sdk import get_current_context

        ti = get_current_context()["ti"]
    except Exception:
        return None
    same = all(getattr(ti, k, None) == coords.get(k) for k in ("dag_id", "task_id", "run_id"))
    return getattr(ti, "context_carrier", None) if same else None


def _current_span() -> str | None:
    try:
        from opentelemetry import trace
    except ImportError:
        return None
    ctx = trace.get_current_span().get_span_context()
    if not ctx.is_valid:
        return None
    return valid(f"00-{ctx.trace_id:032x}-{ctx.span_id:016x}-{int(ctx.trace_flags) & 0xFF:02x}")


def _fresh_for(key: tuple[object, ...]) -> str:
    with _lock:
        known = _fresh.get(key)
        if known is not None:
            return known
        if len(_fresh) >= _MAX_FRESH:
            _fresh.pop(next(iter(_fresh)))
        # Not sampled: the gateway's own sample ratio decides whether it records the trace.
        made = f"00-{secrets.token_hex(16)}-{secrets.token_hex(8)}-00"
        _fresh[key] = made
    log.info("Lockgate trace id %s for this task try (no trace context found)", made[3:35])
    return made
