"""Attest asserted task coordinates against the deployment's Airflow REST API.

A deployment credential proves *which Airflow* is asking, not that the task it names is
really running. When ``Deployment.airflow_api`` is set we ask Airflow itself: the task
instance must exist, be ``running`` and be on the asserted ``try_number``, and the answer must
name that very instance (dag_id, dag_run_id, task_id, map_index): an answer about another one
(a dot segment resolved on the way, a proxy's rewrite) attests nothing about this one.

Fail closed: any answer other than that is a refusal (:class:`AttestationFailed`); an
unreachable API is :class:`AttestationUnavailable` so callers can say "try again".
"""

from __future__ import annotations

import json
import os
from collections.abc import Awaitable, Callable
from urllib.parse import quote

import aiohttp
from yarl import URL

from lockgate.config import AirflowApi
from lockgate.errors import LockgateError
from lockgate.identity.model import TaskIdentity

_MAX_BODY = 256 * 1024


class AttestationFailed(LockgateError):
    """Airflow does not confirm the task try is running."""


class AttestationUnavailable(LockgateError):
    """The Airflow API could not be asked."""


def task_instance_url(api: AirflowApi, identity: TaskIdentity) -> URL:
    segs = [
        "api",
        "v2",
        "dags",
        identity.dag_id,
        "dagRuns",
        identity.run_id,
        "taskInstances",
        identity.task_id,
    ]
    if identity.map_index >= 0:
        segs.append(str(identity.map_index))
    # run_ids carry ':' and '+'; quote every segment fully and tell yarl not to re-quote.
    path = "/".join(quote(s, safe="") for s in segs)
    return URL(api.url.rstrip("/") + "/" + path, encoded=True)


async def attest(
    api: AirflowApi,
    identity: TaskIdentity,
    session: Callable[[], Awaitable[aiohttp.ClientSession]],
    *,
    timeout: float = 5.0,
) -> None:
    headers = {"Accept": "application/json"}
    if api.token_env:
        bearer = os.environ.get(api.token_env)
        if not bearer:
            raise AttestationUnavailable(f"environment variable {api.token_env} is not set")
        headers["Authorization"] = f"Bearer {bearer}"
    url = task_instance_url(api, identity)
    try:
        http = await session()
        async with http.get(
            url,
            headers=headers,
            ssl=api.verify_tls,  # True: the default verification, False: none
            timeout=aiohttp.ClientTimeout(total=timeout),
            allow_redirects=False,
        ) as resp:
            if resp.status in (401, 403) or resp.status >= 500:
                raise AttestationUnavailable(f"airflow api answered {resp.status}")
            if resp.status != 200:
                raise AttestationFailed(f"airflow api answered {resp.status}")
            body = await resp.content.read(_MAX_BODY + 1)
    except (aiohttp.ClientError, TimeoutError) as exc:
        raise AttestationUnavailable(f"airflow api unreachable ({type(exc).__name__})") from None
    if len(body) > _MAX_BODY:
        raise AttestationFailed("airflow api answer too large")
    try:
        ti = json.loads(body)
    except (ValueError, RecursionError):
        raise AttestationFailed("airflow api answer is not JSON") from None
    if not isinstance(ti, dict):
        raise AttestationFailed("airflow api answer is not an object")
    named = (ti.get("dag_id"), ti.get("dag_run_id"), ti.get("task_id"), ti.get("map_index"))
    if named != (identity.dag_id, identity.run_id, identity.task_id, identity.map_index):
        raise AttestationFailed("airflow api answered about another task instance")
    # Values from Airflow go into the error text; keep them short.
    if ti.get("state") != "running":
        raise AttestationFailed(
            f"task instance state is {str(ti.get('state'))[:32]!r}, not running"
        )
    if ti.get("try_number") != identity.try_number:
        raise AttestationFailed(
            f"task instance is on try {str(ti.get('try_number'))[:16]}, not {identity.try_number}"
        )
