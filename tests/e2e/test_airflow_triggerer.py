"""Deferrable ADF and HTTP operators with Airflow's own services: scheduler, LocalExecutor
workers, DAG processor, API server and the **triggerer** (``airflow standalone``), not
``dag.test()``'s inline trigger.

In the triggerer the secrets backend meets what production gives it: a trigger-runner
process shared by triggers, which names each trigger's deferred task try only in its log
context. The Data Factory trigger polls through the identity endpoint and the forward proxy
with a poll token narrowed to its DAG run (its connection's client_id), made from the
deployment's poll token in the process environment; the HTTP sensor's trigger sends its
requests with a token minted in the triggerer for the deferred task try itself.

Both triggers last several seconds on purpose: a trigger that fires at once (a deferred
``HttpOperator``'s single request) can resume its task before a loaded scheduler has
processed the executor's report of the deferral, and Airflow then fails the task ("task
state changed externally"). ``HttpOperator``'s trigger is served the same way as the
sensor's; ``dag.test()`` runs it in tests/e2e/test_airflow_deferral.py.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from lockgate.demo.stack import airflow_bin, free_port
from tests.e2e.test_airflow_deferral import DeferralStack

pytest.importorskip("airflow.providers.microsoft.azure", reason="the Azure provider")
pytestmark = [pytest.mark.airflow, pytest.mark.slow]

DAGS = ("adf_load_orders_deferred", "finance_deferred_sensor")
LATE_ORDER = "late-1"  # what the sensor waits for; it appears once both DAGs are deferred
START_TIMEOUT = 180.0
RUN_TIMEOUT = 240.0


class AirflowServices:
    """``airflow standalone`` on a free port, over its own AIRFLOW_HOME; its output in a file."""

    def __init__(self, stack: DeferralStack, home: Path) -> None:
        self.home = home
        self.port = free_port()
        env = stack.airflow_env(home)
        env.update(
            {
                "AIRFLOW__API__PORT": str(self.port),
                "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": (
                    f"http://127.0.0.1:{self.port}/execution/"
                ),
                "AIRFLOW__CORE__PARALLELISM": "2",
                "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "False",
                "AIRFLOW__SCHEDULER__SCHEDULER_HEARTBEAT_SEC": "1",
                "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "5",
                "AIRFLOW__TRIGGERER__JOB_HEARTBEAT_SEC": "1",
                "PATH": f"{Path(airflow_bin()).parent}{os.pathsep}{os.environ.get('PATH', '')}",
            }
        )
        self.env = env
        self.log = home / "standalone.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def airflow(self, *argv: str) -> str:
        done = subprocess.run(
            [airflow_bin(), *argv], env=self.env, capture_output=True, text=True, timeout=300
        )
        assert done.returncode == 0, (argv, done.stdout[-2000:], done.stderr[-4000:])
        return done.stdout

    def __enter__(self) -> AirflowServices:
        self.home.mkdir(parents=True, exist_ok=True)
        self.airflow("db", "migrate")
        with self.log.open("wb") as out:
            self.proc = subprocess.Popen(
                [airflow_bin(), "standalone"], env=self.env, stdout=out,
                stderr=subprocess.STDOUT, start_new_session=True,
            )  # fmt: skip
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, self.output()[-4000:]
            if self._healthy():
                return self
            time.sleep(1)
        raise AssertionError(f"airflow standalone did not start:\n{self.output()[-4000:]}")

    def _healthy(self) -> bool:
        try:
            with urllib.request.urlopen(
                f"http://127.0.0.1:{self.port}/api/v2/monitor/health", timeout=2
            ) as resp:
                health = json.loads(resp.read())
        except (OSError, ValueError):
            return False
        parts = ("metadatabase", "scheduler", "triggerer", "dag_processor")
        return all((health.get(p) or {}).get("status") == "healthy" for p in parts)

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)  # standalone and the services it started
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)

    def output(self) -> str:
        return self.log.read_text(encoding="utf-8", errors="replace")

    def run_states(self, dag_ids: tuple[str, ...]) -> dict[str, str]:
        """The state of each DAG's latest run (none yet: absent)."""
        con = sqlite3.connect(self.home / "airflow.db")
        try:
            rows = [
                (dag_id, state)
                for dag_id, state in con.execute("select dag_id, state from dag_run order by id")
                if dag_id in dag_ids
            ]
        finally:
            con.close()
        return {dag_id: state for dag_id, state in rows}

    def triggered(self) -> list[str]:
        """The task tries deferred so far (their trigger's log files)."""
        return [p.name for p in (self.home / "logs").rglob("*.log.trigger.*")]

    def task_logs(self) -> str:
        return "\n".join(
            p.read_text(encoding="utf-8", errors="replace")
            for p in sorted((self.home / "logs").rglob("*.log"))
        )


@pytest.fixture(scope="module")
def services(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AirflowServices]:
    with DeferralStack(tmp_path_factory.mktemp("lockgate-triggerer")) as stack:
        home = tmp_path_factory.mktemp("airflow-triggerer")
        with AirflowServices(stack, home) as airflow:
            airflow.stack = stack  # type: ignore[attr-defined]
            yield airflow


def test_the_triggerer_serves_deferred_adf_and_http_through_lockgate(
    services: AirflowServices,
) -> None:
    stack: DeferralStack = services.stack  # type: ignore[attr-defined]
    stack.adf.running_polls = 8  # the pipeline runs for about eight polls of its trigger
    deadline = time.monotonic() + RUN_TIMEOUT
    while set(services.run_states(DAGS)) != set(DAGS) and time.monotonic() < deadline:
        for dag_id in DAGS:  # the DAG processor may not have parsed them yet
            subprocess.run(
                [airflow_bin(), "dags", "trigger", dag_id], env=services.env,
                capture_output=True, timeout=120,
            )  # fmt: skip
        time.sleep(2)
    while len(services.triggered()) < len(DAGS) and time.monotonic() < deadline:
        time.sleep(1)
    time.sleep(4)  # a few polls of the sensor (404) and of the pipeline (InProgress)
    stack.upstream.orders[LATE_ORDER] = {"id": LATE_ORDER, "amount": 1}
    states = services.run_states(DAGS)
    while any(s not in ("success", "failed") for s in states.values()):
        assert time.monotonic() < deadline, (states, services.task_logs()[-6000:])
        time.sleep(2)
        states = services.run_states(DAGS)
    logs = services.task_logs()
    assert states == dict.fromkeys(DAGS, "success"), (states, logs[-8000:])
    stack.gateway.audit.flush(5.0)
    records = stack.gateway.audit.search(limit=1000)
    # ADF: the run the task started was polled by a poll token narrowed to its DAG run,
    # which the identity endpoint made from the deployment's (the triggerer's environment)
    polls = [r for r in records if r.resource == "arm" and r.task_id == "@poll"]
    issued = [r for r in polls if r.event == "token_issued"]
    assert [r.dag_id for r in issued] == ["@triggerer", "adf_load_orders_deferred"], issued
    adf_run = [r.run_id for r in records if r.dag_id == "adf_load_orders_deferred"
               and r.task_id == "run_load_orders" and r.action == "run"]  # fmt: skip
    assert adf_run and issued[1].run_id == adf_run[0]
    polled = [r for r in polls if r.event != "token_issued"]
    assert polled and all(r.event in ("admitted", "allowed") for r in polled), polled
    assert {r.object for r in polled} == {"factory:adf-prod/pipeline:load_orders"}
    assert {(r.dag_id, r.run_id) for r in polled} == {("adf_load_orders_deferred", adf_run[0])}
    # HTTP: the triggerer minted a token of the deferred try, and the polls went as it
    sensor = [r for r in records if r.dag_id == "finance_deferred_sensor"]
    minted = [r for r in sensor if r.event == "token_issued"]
    assert len(minted) >= 2 and all(r.task_id == "wait_for_order" for r in minted), sensor
    requests = [r for r in sensor if r.event == "allowed" and r.object == f"/orders/{LATE_ORDER}"]
    assert len(requests) >= 2 and all(r.task_id == "wait_for_order" for r in requests)
    # the trigger's polls carried a token minted in the triggerer, not the worker's
    assert len({r.jti for r in requests}) == 2, requests
    assert "asked for by the trigger of deferred task try" in services.task_logs()
