"""What the secrets backend knows about deferral: whether a deferred operator's trigger can
be served for a conn_id, which deferred task try a trigger belongs to, and why a deferral
that cannot work is refused (docs/airflow.md, "Deferrable operators").

A trigger runs in the triggerer (or, under ``dag.test()``, inline in the test process),
outside any task try. The trigger runner names the deferred task instance of each trigger in
its structlog context; asynchronous lookups (``aget_connection``) are marked with
:data:`ASYNC_LOOKUP` so that a trigger's lookup can be told from the API server's.
"""

from __future__ import annotations

import contextvars
from typing import Any
from urllib.parse import quote

from lockgate.airflow._client import Coordinates

TRIGGER_AS_TASK = "task"  # catalog "trigger": the trigger gets the deferred try's token
DAG_RUN_PLACEHOLDER = "{lockgate_dag_run}"  # <dag_id>/<run_id> in a "trigger_extra"

# Set while an asynchronous lookup (``aget_connection``: a trigger, or async code) runs; the
# synchronous lookup it delegates to runs in a thread with a copy of this context.
ASYNC_LOOKUP: contextvars.ContextVar[bool] = contextvars.ContextVar(
    "lockgate_async_lookup", default=False
)


def _trigger_context() -> dict[str, Any]:
    """What the triggerer binds into its log context around the running trigger (empty
    elsewhere: tasks, ``dag.test()``'s inline triggers)."""
    try:
        import structlog.contextvars

        bound = structlog.contextvars.get_contextvars()
    except Exception:
        return {}
    return bound if bound.get("trigger_id") is not None else {}


def in_trigger() -> bool:
    """Whether this lookup comes from a trigger: an asynchronous lookup, or one inside the
    triggerer's per-trigger context."""
    return ASYNC_LOOKUP.get() or bool(_trigger_context())


def trigger_task_try() -> Coordinates | None:
    """The deferred task try whose trigger is running, as the triggerer names it, or None.

    Airflow's trigger runner binds ``trigger_id`` and the deferred task instance's
    ``dag_id``, ``task_id``, ``run_id``, ``try_number`` and ``map_index`` around each trigger.
    """
    bound = _trigger_context()
    dag_id, task_id, run_id = bound.get("dag_id"), bound.get("task_id"), bound.get("run_id")
    try_number, map_index = bound.get("try_number"), bound.get("map_index")
    if not all(isinstance(v, str) and v for v in (dag_id, task_id, run_id)):
        return None
    if not isinstance(try_number, int) or not isinstance(map_index, int | None):
        return None
    return {
        "dag_id": str(dag_id),
        "task_id": str(task_id),
        "run_id": str(run_id),
        "try_number": try_number,
        "map_index": -1 if map_index is None else map_index,
    }


def trigger_scope() -> dict[str, str]:
    """The trigger's DAG run as the triggerer binds it into its log context, if it does.

    Airflow's trigger runner binds ``dag_id``/``run_id`` of the deferred task instance with
    structlog's contextvars around each trigger; ``dag.test()`` runs triggers without it.
    """
    try:
        import structlog.contextvars

        bound = structlog.contextvars.get_contextvars()
    except Exception:
        return {}
    dag_id, run_id = bound.get("dag_id"), bound.get("run_id")
    if isinstance(dag_id, str) and dag_id and isinstance(run_id, str) and run_id:
        return {"dag_id": dag_id, "run_id": run_id}
    return {}


def with_trigger_extra(template: dict[str, Any], scope: dict[str, str]) -> dict[str, Any]:
    """The connection of ``template`` for a trigger of DAG run ``scope``: with the catalog's
    ``trigger_extra`` (ARM: ``managed_identity_client_id`` = ``lockgate-run:<dag_id>/<run_id>``,
    which the provider's async hook hands its managed identity credential, which sends it to
    the identity endpoint as ``client_id``: the endpoint answers a poll token narrowed to that
    DAG run) in its extra. Unchanged when the DAG run is not known or the entry has none."""
    connection: dict[str, Any] = template["connection"]
    trigger_extra = template.get("trigger_extra")
    if not isinstance(trigger_extra, dict) or not scope:
        return connection
    # azure-core puts a query value into the URL as it is ("+", "&", "#" and all): the run
    # id travels percent-encoded, and arrives decoded once, as it was
    dag_run = f"{scope['dag_id']}/{quote(scope['run_id'], safe='')}"
    filled = {k: str(v).replace(DAG_RUN_PLACEHOLDER, dag_run) for k, v in trigger_extra.items()}
    return {**connection, "extra": {**connection.get("extra", {}), **filled}}


def running_task() -> object | None:
    """The operator of the running task try, or None outside a task's execution context."""
    try:
        from airflow.sdk import get_current_context

        return get_current_context()["ti"].task
    except Exception:
        return None


def serves_triggers(template: dict[str, Any]) -> bool:
    """Whether a deferred operator's trigger can use this conn_id from the triggerer: a
    ``poll`` entry (Databricks, ARM) gets a poll token there, a ``"trigger": "task"`` entry
    (plain http: ``HttpTrigger`` sends the task's request) a token of the deferred task try."""
    return bool(template.get("poll")) or template.get("trigger") == TRIGGER_AS_TASK


def defers(task: object | None) -> bool:
    if task is None or getattr(task, "deferrable", False) is not True:
        return False
    return getattr(task, "wait_for_termination", True) is not False  # ADF: nothing deferred


def task_defers() -> bool:
    """Whether the running task try will defer (a trigger then runs for it)."""
    return defers(running_task())


def unpollable_deferral(conn_id: str, template: dict[str, Any]) -> str | None:
    """Why a deferral on ``conn_id`` cannot work in the running task try, or None.

    A deferred operator's trigger runs in the triggerer, outside the task try; only a conn_id
    that :func:`serves_triggers` gets a token there. Checked at the task's first lookup,
    which comes before the operator starts anything upstream (ADF looks its connection up
    before createRun), so a retry never starts a duplicate run.
    """
    task = running_task()
    if serves_triggers(template) or not defers(task):
        return None
    return (
        f"Lockgate: task {getattr(task, 'task_id', '?')} runs with deferrable=True, but "
        f"conn_id {conn_id!r} (resource {template.get('resource', '?')}) offers no poll "
        "tokens: its trigger would run in the triggerer, outside any task try, where Lockgate "
        "mints nothing for it. Refused before anything was started upstream; run the operator "
        "with deferrable=False (or a sensor in reschedule mode)"
    )


def unserved_trigger(conn_id: str, template: dict[str, Any]) -> str:
    why = (
        "names no deferred task try (the triggerer names the try of each trigger it runs)"
        if serves_triggers(template)
        else "offers no poll tokens"
    )
    return (
        f"Lockgate: conn_id {conn_id!r} (resource {template.get('resource', '?')}) was asked "
        f"for outside a task try by asynchronous code (a deferred operator's trigger) and "
        f"{why}: Lockgate mints a token only for a task try. Run the operator with "
        "deferrable=False"
    )


__all__ = [
    "ASYNC_LOOKUP",
    "DAG_RUN_PLACEHOLDER",
    "TRIGGER_AS_TASK",
    "defers",
    "in_trigger",
    "running_task",
    "serves_triggers",
    "task_defers",
    "trigger_scope",
    "trigger_task_try",
    "unpollable_deferral",
    "unserved_trigger",
    "with_trigger_extra",
]
