"""Quotas: how fast and how much each DAG may use a resource, shared by every process.

A policy file's ``quotas:`` list names, per principal glob and resource (optionally actions
and objects), a request or statement rate (token bucket), a cap on requests in flight, a cap
on open sessions (CQL, PostgreSQL) and, for Databricks and Data Factory, a cap on runs
started and not yet finished. Engines ask the :class:`QuotaGate` after policy allowed and
before the admitted record is written ahead; over a limit they answer in the protocol's own
throttling form (HTTP 429 + ``Retry-After``, Cosmos 429 + ``x-ms-retry-after-ms``, CQL
Overloaded, PostgreSQL 53300), which stock clients back off on, and audit the refusal as
event ``throttled`` (decision deny, reason ``throttled``, ``detail.limit`` the quota's id).

The door: :class:`QuotaGate` (engines), :class:`Throttled`, :class:`QuotaTicket`,
:class:`RunSlot`, :data:`NO_QUOTAS` (a gate with no quota: what engines get when none is
configured, and in tests).
"""

from __future__ import annotations

from collections.abc import Awaitable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, Protocol

if TYPE_CHECKING:
    from lockgate.identity import Claims

#: Audit reason (and event) of a request refused by a quota.
THROTTLED = "throttled"

LimitKind = Literal["rate", "concurrency", "sessions", "runs"]


@dataclass(frozen=True, slots=True)
class Throttled:
    """Over a quota: answer in the protocol's throttling form, audit ``throttled``."""

    limit: str  # the quota's id, for the audit record's detail and the client's message
    kind: LimitKind
    retry_after: float  # seconds the client should wait before trying again (> 0)


class QuotaTicket(Protocol):
    """What an admitted request, statement or session holds until it ends."""

    def release(self) -> None:
        """Give back the in-flight or session slot (idempotent; never raises)."""
        ...


class RunSlot(QuotaTicket, Protocol):
    """A run start admitted under a ``runs`` cap: :meth:`started` once the upstream named
    the run (it then counts until :meth:`QuotaGate.run_finished` or its maximum age), or
    :meth:`release` when the start failed."""

    def started(self, run_id: str) -> None: ...


class _NoTicket:
    __slots__ = ()

    def release(self) -> None:
        return None

    def started(self, run_id: str) -> None:
        return None


#: The ticket of a request no in-flight cap applies to (nothing to give back).
NO_TICKET = _NoTicket()

Admission = QuotaTicket | Throttled
RunAdmission = RunSlot | Throttled


class QuotaGate(Protocol):
    """What engines ask. Every method returns its answer, or an awaitable of it when the
    answer needs shared state or pacing (``await`` it then; a quota with ``max_delay``
    holds a request up to that long for a token instead of refusing it). A call no quota
    matches returns :data:`NO_TICKET` at once, without I/O: the hot path pays one lookup."""

    def admit(
        self,
        claims: Claims,
        resource: str,
        action: str,
        obj: str,
        cost: int = 1,
        also: Sequence[str] = (),
    ) -> Admission | Awaitable[Admission]:
        """One request or statement (rate, then in-flight cap); release the ticket when
        its response has been relayed (or it failed). ``cost``: the statements of a batch
        on this object (a CQL BATCH): admitted on one token, the rest taken into debt,
        one in-flight slot. ``also``: other names of what it touches (a quota on any of
        them counts it once)."""
        ...

    def open_session(self, claims: Claims, resource: str) -> Admission | Awaitable[Admission]:
        """A CQL or PostgreSQL session logging in (``sessions`` cap); release on close."""
        ...

    def start_run(
        self, claims: Claims, resource: str, obj: str, also: Sequence[str] = ()
    ) -> RunAdmission | Awaitable[RunAdmission]:
        """A Databricks job run or Data Factory pipeline run about to be started (``runs``
        cap, also counted as a request by :meth:`admit`); ``also`` as for :meth:`admit`."""
        ...

    def run_finished(self, resource: str, run_id: str) -> None:
        """The upstream reported ``run_id`` in a terminal state: it no longer counts."""
        ...


class _NoQuotas:
    """A gate with no quota at all."""

    __slots__ = ()

    def admit(
        self,
        claims: Claims,
        resource: str,
        action: str,
        obj: str,
        cost: int = 1,
        also: Sequence[str] = (),
    ) -> Admission:
        return NO_TICKET

    def open_session(self, claims: Claims, resource: str) -> Admission:
        return NO_TICKET

    def start_run(
        self, claims: Claims, resource: str, obj: str, also: Sequence[str] = ()
    ) -> RunAdmission:
        return NO_TICKET

    def run_finished(self, resource: str, run_id: str) -> None:
        return None


NO_QUOTAS: QuotaGate = _NoQuotas()

__all__ = [
    "NO_QUOTAS",
    "NO_TICKET",
    "THROTTLED",
    "Admission",
    "LimitKind",
    "QuotaGate",
    "QuotaTicket",
    "RunAdmission",
    "RunSlot",
    "Throttled",
]
