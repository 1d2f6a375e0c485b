"""The running task try, as the secrets backend sees it: its coordinates and lifetime.

Airflow says which task try is running (its runtime context in the task process, the task
instance model in listeners elsewhere); the backend turns that into the ``Coordinates`` a
token is minted for, and into the lifetime to ask for (the task's ``execution_timeout``
plus a margin). Outside a task's execution context both answer ``None``.
"""

from __future__ import annotations

from typing import Protocol

from lockgate.airflow._client import Coordinates

# What the lifetime asked for adds to the task's execution_timeout.
TTL_MARGIN = 120


def task_coordinates() -> Coordinates | None:
    """The running task try's coordinates, or None outside a task's execution context."""
    try:
        from airflow.sdk import get_current_context

        ti = get_current_context()["ti"]
    except Exception:
        return None
    return coordinates_of(ti)


class TaskTry(Protocol):
    """What a task instance tells about its try: Airflow's runtime task instance in the
    task process, its database model in listeners that run elsewhere."""

    @property
    def dag_id(self) -> str: ...
    @property
    def task_id(self) -> str: ...
    @property
    def run_id(self) -> str: ...
    @property
    def try_number(self) -> int: ...
    @property
    def map_index(self) -> int | None: ...


def coordinates_of(ti: TaskTry) -> Coordinates:
    return {
        "dag_id": ti.dag_id,
        "task_id": ti.task_id,
        "run_id": ti.run_id,
        "try_number": int(ti.try_number),
        "map_index": int(ti.map_index if ti.map_index is not None else -1),
    }


def requested_ttl(ti_task: object) -> int | None:
    """The lifetime to ask for a task: its execution_timeout plus a margin, else None."""
    timeout = getattr(ti_task, "execution_timeout", None)
    if timeout is None:
        return None
    return int(timeout.total_seconds()) + TTL_MARGIN


def current_ttl() -> int | None:
    """The lifetime to ask for: the running task's execution_timeout plus a margin."""
    try:
        from airflow.sdk import get_current_context

        return requested_ttl(get_current_context()["ti"].task)
    except Exception:
        return None
