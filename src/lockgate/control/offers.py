"""What each HTTP profile offers the control plane, in one table keyed by profile name.

The catalog and the control routes never compare profile names: they ask
:func:`offer_of` what a resource offers. A new profile that needs something from the
control plane adds one row to :data:`PROFILE_OFFERS`.

* ``poll_tokens``: ``/v1/poll-token`` mints triggerer tokens for it (Databricks runs, ARM
  pipeline runs);
* ``task_keys``: the task also needs a key derived from its token, from ``/v1/cosmos-key``
  (Cosmos DB's stock SDK signs every request with a master key);
* ``identity_endpoint``: the task's client cannot be handed a token; it asks the
  managed-identity endpoint (``/msi/token``) and goes through the forward proxy (ARM);
* ``root_connection``: the Airflow Connection of a resource served at the root of its own
  listener (``listen:``), from (scheme, host, port).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from lockgate.config import AnyResource, HttpResource

TOKEN = "{lockgate_token}"  # noqa: S105 - filled in on the Airflow worker
RootConnection = Callable[[str, str, int], dict[str, Any]]


def http_root_connection(scheme: str, host: str, port: int) -> dict[str, Any]:
    """An ``http`` connection that sends the token as a bearer header."""
    return {
        "conn_type": "http",
        "host": f"{scheme}://{host}:{port}",
        "extra": {"Authorization": f"Bearer {TOKEN}"},
    }


def databricks_root_connection(scheme: str, host: str, port: int) -> dict[str, Any]:
    """A ``databricks`` connection in PAT mode (empty login, the token as password), which
    the stock ``DatabricksHook`` sends as ``Authorization: Bearer <token>`` to
    ``<schema>://<host>:<port>/api/...``."""
    return {
        "conn_type": "databricks",
        "host": host,
        "port": port,
        "schema": scheme,
        "login": "",
        "password": TOKEN,
    }


@dataclass(frozen=True, slots=True)
class ProfileOffer:
    poll_tokens: bool = False
    task_keys: bool = False
    identity_endpoint: bool = False
    root_connection: RootConnection = http_root_connection


PLAIN = ProfileOffer()
PROFILE_OFFERS: dict[str, ProfileOffer] = {
    "databricks": ProfileOffer(poll_tokens=True, root_connection=databricks_root_connection),
    "cosmos": ProfileOffer(task_keys=True),
    "arm": ProfileOffer(identity_endpoint=True, poll_tokens=True),
}


def offer_of(resource: AnyResource | None) -> ProfileOffer:
    """What ``resource`` offers; a cql resource, a plain http one or none offers nothing."""
    if not isinstance(resource, HttpResource) or resource.profile is None:
        return PLAIN
    return PROFILE_OFFERS.get(resource.profile, PLAIN)
