"""What may become a span attribute or name: an allow-list of keys, values cut before
anything that may be a literal, a query string or a token, lengths capped.

Every value an engine passes to :mod:`lockgate.tracing` goes through here before it is
recorded (docs/tracing.md, "What is never recorded"). Standard library only.
:func:`identity_attributes` is the token's identity as every engine's request span names it.
"""

from __future__ import annotations

import functools
import math
import re
from collections.abc import Mapping
from typing import Protocol

AttributeValue = str | int | float | bool

# Semantic-convention keys an engine may set (HTTP server/client, database, network, Airflow's
# own task keys); any other key is dropped unless it is ``lockgate.*``. ``db.query.text``,
# ``url.full``, ``url.query`` and ``user_agent.original`` are left out on purpose: they carry
# literals, signatures and whatever a client chose to send.
ALLOWED_KEYS = frozenset(
    {
        "http.request.method",
        "http.response.status_code",
        "http.route",
        "http.request.resend_count",
        "url.path",
        "url.scheme",
        "server.address",
        "server.port",
        "client.address",
        "client.port",
        "network.peer.address",
        "network.peer.port",
        "network.protocol.name",
        "network.protocol.version",
        "error.type",
        "db.system.name",
        "db.namespace",
        "db.collection.name",
        "db.operation.name",
        "db.operation.batch.size",
        "db.query.summary",
        "db.response.status_code",
        "db.cassandra.consistency_level",
        "db.cassandra.page_size",
        "enduser.id",
        "airflow.dag_id",
        "airflow.task_id",
        "airflow.dag_run.run_id",
        "airflow.task_instance.try_number",
        "airflow.task_instance.map_index",
    }
)
# A lockgate.* key naming one of these is a mistake waiting to leak: dropped.
_SECRET_WORDS = re.compile(r"token|secret|password|passwd|signature|sig\b|key|credential|auth")
_MAX_VALUE = 256
_MAX_NAME = 120
# A value is cut at the first of: a query string or fragment, a string literal, a
# dollar-quoted body, a statement separator or a line break (double quotes stay: in CQL and
# SQL they quote identifiers, which are no secret).
_CUT = re.compile(r"[?#';\r\n]|\$\w*\$")
_JWT = re.compile(r"eyJ[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]{4,}")
_NAME_WORD = re.compile(r'\A[A-Za-z0-9_.:/*{}"\[\]-]+\Z')


def clean_text(value: str, limit: int = _MAX_VALUE) -> str:
    """``value`` cut before anything that may be a literal or a query string, capped."""
    # Past twice the cap nothing can reach the result; the cache keeps only short keys.
    return _clean_text(value[: 2 * limit], limit)


@functools.lru_cache(maxsize=4096)  # resources, paths and rules repeat request after request
def _clean_text(value: str, limit: int) -> str:
    if _JWT.search(value):
        return ""
    match = _CUT.search(value)
    if match is not None:
        value = value[: match.start()]
    return value.strip()[:limit]


def clean_name(name: str) -> str:
    """A span name as the conventions shape it, ``{operation} {target}``: at most two
    words, each of identifier, path or glob characters, so no literal a statement or URL
    carried can ride along (``SELECT ks.t WHERE id = 42`` becomes ``SELECT ks.t``)."""
    words = []
    for word in clean_text(name, _MAX_NAME).split()[:2]:
        if not _NAME_WORD.match(word):
            break
        words.append(word)
    return " ".join(words)


def clean_attributes(
    attributes: Mapping[str, AttributeValue] | None,
) -> dict[str, AttributeValue]:
    """The attributes a span may carry: allowed keys, cleaned strings, finite numbers."""
    out: dict[str, AttributeValue] = {}
    for key, value in (attributes or {}).items():
        if isinstance(value, str):
            text = _clean_string(key, value[: 2 * _MAX_VALUE])
            if text:
                out[key] = text
        elif not _allowed_key(key):
            continue
        elif isinstance(value, bool | int) or (isinstance(value, float) and math.isfinite(value)):
            out[key] = value
    return out


@functools.lru_cache(maxsize=512)
def _allowed_key(key: str) -> bool:
    return key in ALLOWED_KEYS or (key.startswith("lockgate.") and not _SECRET_WORDS.search(key))


@functools.lru_cache(maxsize=8192)  # the same pairs come request after request
def _clean_string(key: str, value: str) -> str:
    """A string attribute's recorded value; "" when its key is not allowed."""
    if not _allowed_key(key):
        return ""
    return clean_name(value) if key == "db.query.summary" else clean_text(value)


class TaskClaims(Protocol):
    """The identity fields of a verified Lockgate token (``lockgate.identity.Claims``)."""

    @property
    def sub(self) -> str: ...
    @property
    def deployment(self) -> str: ...
    @property
    def dag_id(self) -> str: ...
    @property
    def task_id(self) -> str: ...
    @property
    def run_id(self) -> str: ...
    @property
    def try_number(self) -> int: ...


def identity_attributes(claims: TaskClaims) -> dict[str, AttributeValue]:
    """The token's identity as a request span's attributes; an empty or missing field is
    left out (a span never carries a blank ``lockgate.dag_id``)."""
    fields: tuple[tuple[str, AttributeValue | None], ...] = (
        ("lockgate.principal", claims.sub),
        ("lockgate.deployment", claims.deployment),
        ("lockgate.dag_id", claims.dag_id),
        ("lockgate.task_id", claims.task_id),
        ("lockgate.run_id", claims.run_id),
        ("lockgate.try_number", claims.try_number),
    )
    return {key: value for key, value in fields if value is not None and value != ""}


__all__ = [
    "ALLOWED_KEYS",
    "AttributeValue",
    "TaskClaims",
    "clean_attributes",
    "clean_name",
    "clean_text",
    "identity_attributes",
]
