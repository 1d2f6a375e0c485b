"""Helpers for the quota tests: a policy set from YAML text, claims for a task, a clock."""

from __future__ import annotations

import textwrap
from collections.abc import Callable

from lockgate.identity import Claims
from lockgate.policy import PolicySet, parse_policy_texts


def quota_policy(text: str) -> PolicySet:
    return parse_policy_texts([("team.yaml", textwrap.dedent(text))])


def task_claims(dag: str = "etl", task: str = "load", deployment: str = "prod") -> Claims:
    principal = f"airflow:{deployment}/{dag}/{task}"
    return Claims(
        iss="lockgate", sub=principal, aud="orders-api", exp=2_000_000_000, iat=1_000_000_000,
        nbf=1_000_000_000, jti="j", deployment=deployment, dag_id=dag, task_id=task,
        run_id="manual__1", try_number=1, map_index=-1,
    )  # fmt: skip


class FakeClock:
    """A clock tests move by hand (``advance``), also usable as the gate's sleep."""

    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


def constant(policy: PolicySet) -> Callable[[], PolicySet]:
    return lambda: policy
