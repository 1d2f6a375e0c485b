"""One-time admin links: how the embedded default (no OIDC provider) signs its first admin in.

``lockgate serve`` prints one at start (``console.print_link``, when ``console.oidc`` is not
set) and ``lockgate console link`` makes another at any time, also while the gateway runs:
both write to the same ``console`` store. A link is ``<console URL>/login/link?token=<256
random bits>``; the store keeps the token's digest, so the database alone signs nobody in.
Opening it shows a confirmation page with a button (a link scanner or a browser's
prefetch that GETs it does not use it up); the POST uses it once and starts an admin
session whose subject is ``link:<first 8 hex of the token's digest>`` (so the audit trail
can tell two links' admins apart without naming the token). With ``console.oidc`` set,
links still work: they are the break-glass way in when the provider is down.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import quote

from lockgate.config import LockgateConfig
from lockgate.console.sessions import ConsoleStore, digest
from lockgate.store import Database

LINK_PATH = "/login/link"
#: what a link's session subject starts with (an OIDC user's may not: see oidc.user_of)
LINK_SUBJECT_PREFIX = "link:"
_ANY_ADDRESS = {"", "0.0.0.0", "::", "[::]"}


def console_url(config: LockgateConfig, base_url: str | None = None) -> str:
    """The console's URL as browsers reach it: ``console.public_url``, else ``base_url``
    (the control listener's URL as bound) or the configured control listener, plus
    ``/console``."""
    if config.console.public_url:
        return config.console.public_url.rstrip("/")
    if not base_url:
        control = config.listeners.control
        host = control.advertise or control.host
        if host in _ANY_ADDRESS:
            host = "localhost"
        if ":" in host and not host.startswith("["):
            host = f"[{host}]"
        base_url = f"{control.scheme}://{host}:{control.port}"
    return base_url.rstrip("/") + "/console"


def link_subject(token: str) -> str:
    """The subject of a session a link started: stable per link, never the token."""
    return f"{LINK_SUBJECT_PREFIX}{digest(token)[:8]}"


def create(store: ConsoleStore, ttl: float) -> str:
    """A new one-time link; its path and query relative to the console's root."""
    return f"{LINK_PATH}?token={quote(store.add_link(ttl=ttl))}"


@dataclass(frozen=True)
class IssuedLink:
    """A link just made: its URL (holds the token: print it, never log or audit it) and the
    subject of the session it will start (what the audit trail may name)."""

    url: str
    subject: str
    ttl: float


def issue_link(
    config: LockgateConfig, database: Database, *, base_url: str | None = None,
    ttl: float | None = None,
) -> IssuedLink:  # fmt: skip
    """A new one-time admin link (``ttl`` default: ``console.link_ttl``), made in
    ``database`` (the State's ``database("console")``)."""
    seconds = config.console.link_ttl if ttl is None else ttl
    if not 0 < seconds <= 86400:
        raise ValueError("a link's ttl must be more than 0 and at most 86400 seconds")
    store = ConsoleStore(database)
    try:
        token = store.add_link(ttl=seconds)
    finally:
        store.close()
    url = f"{console_url(config, base_url)}{LINK_PATH}?token={quote(token)}"
    return IssuedLink(url, link_subject(token), seconds)


def console_link_url(
    config: LockgateConfig, database: Database, *, base_url: str | None = None,
    ttl: float | None = None,
) -> str:  # fmt: skip
    """A new one-time admin link's full URL (see :func:`issue_link`)."""
    return issue_link(config, database, base_url=base_url, ttl=ttl).url


__all__ = [
    "LINK_PATH",
    "LINK_SUBJECT_PREFIX",
    "IssuedLink",
    "console_link_url",
    "console_url",
    "create",
    "issue_link",
    "link_subject",
]
