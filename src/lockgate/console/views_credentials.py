"""The console's credentials page: what ``lockgate creds list`` says, as tables.

``GET /credentials`` (viewer and above): every configured credential with its type, where
its value is held, its current version's age (marked past ``alerts.credential_max_age``),
the last rotation, the previous version's overlap window, the last fetch of a vault-held
one and who uses it; every version; every resource with its credential and whether it is
served with no secret at all. The facts come from :func:`lockgate.credentials.describe
.describe`, which never reads a value: nothing on this page can show one.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import UTC, datetime

from aiohttp import web

from lockgate.console.charts import audit_href
from lockgate.console.web import context, render, requires
from lockgate.credentials.describe import CredentialFacts, VersionFacts, describe


def when(ts: float | None) -> str:
    """A time as people read it in a table (UTC, to the minute); "" for None."""
    if ts is None:
        return ""
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M UTC")


def iso(ts: float | None) -> str:
    """A time for a ``<time datetime>`` attribute; "" for None."""
    if ts is None:
        return ""
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="seconds")


def span(seconds: float | None) -> str:
    """A duration in its two largest units: ``3d 4h``, ``12m``, ``40s``."""
    if seconds is None:
        return ""
    left = int(max(0.0, seconds))
    parts: list[str] = []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        if left >= size or (unit == "s" and not parts):
            parts.append(f"{left // size}{unit}")
            left %= size
        if len(parts) == 2:
            break
    return " ".join(parts)


@dataclass(frozen=True)
class CredentialRow:
    """One credential as the table shows it (display strings only)."""

    facts: CredentialFacts
    age: str
    overdue: bool
    max_age: str
    created: str
    created_iso: str
    last_rotation: str
    previous_until: str
    fetched: str


def credential_row(facts: CredentialFacts, now: float) -> CredentialRow:
    current = facts.current
    previous = facts.versions[-2] if len(facts.versions) > 1 else None
    until = previous.usable_until if previous is not None else None
    fetched = ""
    if facts.fetched is not None:
        fetched = f"version {facts.fetched.vault_version}, {when(facts.fetched.fetched_at)}"
    return CredentialRow(
        facts=facts,
        age=span(facts.age(now)),
        overdue=facts.overdue(now),
        max_age=span(facts.max_age),
        created=when(current.created_at) if current else "",
        created_iso=iso(current.created_at) if current else "",
        last_rotation=when(facts.last_rotation),
        previous_until=when(until) if until is not None and until > now else "",
        fetched=fetched,
    )


def version_state(version: VersionFacts, now: float) -> str:
    """current; previous (usable until / overlap ended); or older."""
    if version.current:
        return "current"
    if version.usable_until is None:
        return "older" if version.has_value else "older (value discarded)"
    if version.usable_until > now:
        return f"previous: usable until {when(version.usable_until)}"
    return f"previous: overlap ended {when(version.usable_until)}"


@requires("viewer")
async def credentials_page(request: web.Request) -> web.StreamResponse:
    ctx = context(request)
    # the store is read with blocking calls (SQLite or PostgreSQL): off the event loop
    report = await asyncio.to_thread(describe, ctx.config, ctx.credentials)
    rows = [credential_row(c, report.at) for c in report.credentials]
    versions = [
        (c.name, v, when(v.created_at), when(v.rotated_at), version_state(v, report.at))
        for c in report.credentials
        for v in reversed(c.versions)
    ]
    return render(
        request,
        "credentials.html",
        report=report,
        rows=rows,
        versions=versions,
        now=report.at,
        checked=when(report.at),
        rotations_href=audit_href(event="credential_rotated"),
        sets_href=audit_href(event="credential_set"),
    )


def add_routes(app: web.Application) -> None:
    app.router.add_get("/credentials", credentials_page, name="credentials")
