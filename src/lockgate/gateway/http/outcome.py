"""What one upstream attempt and one exchange end with (shared by both exchange drivers)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import NamedTuple

from lockgate.gateway.engine import UpstreamSecret
from lockgate.gateway.http import framing
from lockgate.gateway.http.admission import Admitted
from lockgate.gateway.http.resources import ResourceState
from lockgate.gateway.http.retry import RETRY_STATUSES
from lockgate.gateway.http.server import ClientConnection, RequestBody
from lockgate.gateway.http.upstream import UpstreamConnection

#: The first attempt, already made by the fast path: (connection, its response head or the
#: error it ended with, the secret it carried).
FirstAttempt = tuple[UpstreamConnection, "framing.Head | Exception", "UpstreamSecret | None"]


class Forwarding(NamedTuple):
    """An admitted request on its way: the client connection, its head and body, and what
    admission decided."""

    conn: ClientConnection
    head: framing.Head
    body: RequestBody
    adm: Admitted


class Sent(NamedTuple):
    """An attempt on its way: the response head will arrive on ``head_fut``."""

    up: UpstreamConnection
    head_fut: asyncio.Future[framing.Head]
    secret: UpstreamSecret | None
    streaming: bool
    sent_at: float


@dataclass(slots=True)
class Outcome:
    """How an admitted request ended (the client has its answer)."""

    status: int
    keep: bool
    error: str | None = None  # upstream_error reason slug, when the gateway answered 5xx
    retries: int = 0
    captured: bytes | None = None  # the response body, when a profile asked to see it
    resp_headers: framing.Headers | None = None


def retry_statuses(rs: ResourceState) -> frozenset[int]:
    """Upstream answers retried for an idempotent request of ``rs`` (a profile may narrow
    them: the Cosmos DB SDK keeps its own throttling budget)."""
    profile = rs.profile
    return RETRY_STATUSES if profile is None else profile.retry_statuses
