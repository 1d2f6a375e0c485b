"""Listener plugin: revoke a task try's Lockgate tokens the moment the try ends.

Registered through the ``airflow.plugins`` entry point. Listeners for success and failure
run in the task process (``finalize``), where the secrets backend that minted the tokens
lives, so it knows exactly which tokens to revoke.
"""

from __future__ import annotations

from typing import Any

from airflow.listeners import hookimpl
from airflow.plugins_manager import AirflowPlugin

from lockgate.airflow import secrets


class _TaskEndListener:
    @hookimpl
    def on_task_instance_success(self, previous_state: Any, task_instance: Any) -> None:
        secrets.end_task_try(task_instance)

    @hookimpl
    def on_task_instance_failed(self, previous_state: Any, task_instance: Any, error: Any) -> None:
        secrets.end_task_try(task_instance)


task_end_listener = _TaskEndListener()


class LockgatePlugin(AirflowPlugin):
    name = "lockgate"
    listeners = [task_end_listener]
