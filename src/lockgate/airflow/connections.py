"""Filling the gateway's connection templates in the task process.

The catalog gives, per conn_id, an Airflow Connection with placeholders where per-task
values go (``{lockgate_token}``, the task's Cosmos key, a dynamic role's login, CA files);
:func:`substitute` fills them. What a filled connection needs on the worker lives here too:
the upstream database's CA as a private file, and the stock Cassandra hook's warnings.
"""

from __future__ import annotations

import functools
import hashlib
import json
import tempfile
import threading
import warnings
from pathlib import Path
from typing import Any

CA_PLACEHOLDER = "{lockgate_ca_file}"
TOKEN_PLACEHOLDER = "{lockgate_token}"  # noqa: S105 - a template marker, not a secret
COSMOS_KEY_PLACEHOLDER = "{lockgate_cosmos_key}"
ROLE_USER_PLACEHOLDER = "{lockgate_role_user}"
ROLE_PASSWORD_PLACEHOLDER = "{lockgate_role_password}"  # noqa: S105 - a template marker
UPSTREAM_CA_PLACEHOLDER = "{lockgate_upstream_ca_file}"


def holds_no_secret(connection: dict[str, Any]) -> bool:
    """True when a connection template carries nothing filled in per task (no token, key,
    role or CA placeholder): what it says may be shown to anyone who may read the DAG."""
    return "{lockgate_" not in json.dumps(connection)


def substitute(template: Any, values: dict[str, str]) -> Any:
    """``template`` with every placeholder in ``values`` replaced, in strings at any depth."""
    if isinstance(template, str):
        for marker, value in values.items():
            template = template.replace(marker, value)
        return template
    if isinstance(template, dict):
        return {k: substitute(v, values) for k, v in template.items()}
    if isinstance(template, list):
        return [substitute(v, values) for v in template]
    return template


_ca_lock = threading.Lock()


@functools.cache
def _private_dir() -> Path:
    return Path(tempfile.mkdtemp(prefix="lockgate-ca-"))  # 0700, this process's own


def upstream_ca_file(pem: str) -> str:
    """The upstream database's CA certificate as a file libpq can read ("" without one):
    in a directory only this process's user can write (so nobody swaps the CA under it),
    one file per certificate."""
    if not pem:
        return ""
    with _ca_lock:
        path = _private_dir() / f"upstream-{hashlib.sha256(pem.encode()).hexdigest()[:16]}.pem"
        if not path.exists():
            partial = path.with_suffix(".tmp")
            partial.write_text(pem)
            partial.replace(path)
    return str(path)


# What the driver says of every Cluster the stock CassandraHook builds (3.10: it always
# passes a load-balancing policy, and TLS only as ``ssl_options``, having no way to take an
# ``ssl_context``); nothing a DAG author or a Lockgate-made connection can change.
_STOCK_CASSANDRA_HOOK_WARNINGS = (
    r"Legacy execution parameters will be removed in 4\.0",
    r"Using ssl_options without ssl_context is deprecated",
)


@functools.cache
def quiet_stock_cassandra_hook() -> None:
    """Silence, in this task process, exactly the driver's deprecation warnings that the
    stock hook triggers on every connection (the driver builds the same SSLContext from the
    options itself); every other warning is still shown."""
    for message in _STOCK_CASSANDRA_HOOK_WARNINGS:
        for module in (r"cassandra\.", r"airflow\.providers\.apache\.cassandra\."):
            # attributed to the driver, or (one frame up) to the hook that called it
            warnings.filterwarnings(
                "ignore", message=message, category=DeprecationWarning, module=module
            )
