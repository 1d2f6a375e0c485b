"""Listener plugin: revoke a task try's Lockgate tokens the moment the try ends.

Registered through the ``airflow.plugins`` entry point. Listeners for success and failure
run in the task process (``finalize``), where the secrets backend that minted the tokens
lives, so it knows exactly which tokens to revoke.
"""

from __future__ import annotations

from airflow.listeners import hookimpl
from airflow.plugins_manager import AirflowPlugin
from airflow.utils.state import TaskInstanceState

from lockgate.airflow import secrets
from lockgate.airflow.secrets import TaskTry


class _TaskEndListener:
    @hookimpl
    def on_task_instance_success(
        self, previous_state: TaskInstanceState | None, task_instance: TaskTry
    ) -> None:
        secrets.end_task_try(task_instance)

    @hookimpl
    def on_task_instance_failed(
        self,
        previous_state: TaskInstanceState | None,
        task_instance: TaskTry,
        error: str | BaseException | None,
    ) -> None:
        secrets.end_task_try(task_instance)


task_end_listener = _TaskEndListener()


class LockgatePlugin(AirflowPlugin):
    name = "lockgate"
    listeners = [task_end_listener]
