"""Between the upstream login and the client's greeting: may this session go on, and the
greeting itself.

A :class:`~.session.ClientSession` logs in upstream as the gateway once the client's token
verified, and reads the relation catalog. Before the client hears ``AuthenticationOk`` the
session must still be one the gateway can judge and may serve: the server lexes statements
as the gateway does (:func:`lexing_mismatch`), the resource did not change or go while the
upstream was awaited, and the token was not revoked meanwhile (:func:`refusal_after_login`).
Each "no" is a :class:`LoginRefusal`: what the client is told (a FATAL) and what is audited.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from lockgate.errors import AuthenticationError

from . import codec, upstream
from .context import EngineContext
from .startup import PINNED_PARAMETERS, Login, safe_encoding


@dataclass(frozen=True, slots=True)
class LoginRefusal:
    """A login ended before the greeting: the client's FATAL and the audit record's fields."""

    sqlstate: str
    message: str
    event: str
    decision: str
    reason: str
    detail: dict[str, Any] | None = None


def lexing_mismatch(parameters: dict[str, str]) -> str | None:
    """A reported setting under which the server would lex statements unlike the gateway."""
    for name, value in PINNED_PARAMETERS.items():
        if parameters.get(name, value) != value:
            return f"{name}={parameters[name]}"
    encoding = parameters.get("client_encoding", "UTF8")
    return None if safe_encoding(encoding) else f"client_encoding={encoding}"


def unreachable(resource: str, exc: BaseException) -> LoginRefusal:
    """The upstream login or its catalog read failed."""
    return LoginRefusal(
        "08006",
        f"Lockgate could not connect to the server of {resource!r}; try again later",
        "upstream_error", "error", "upstream_unavailable",
        {"error": (str(exc) or type(exc).__name__)[:1000]},
    )  # fmt: skip


def refusal_after_login(
    ctx: EngineContext, login: Login, link: upstream.UpstreamLink
) -> LoginRefusal | None:
    """Why the session logged in upstream as ``link`` must not be greeted, or None."""
    resource = login.resource
    unsafe = lexing_mismatch(link.parameters)
    if unsafe is not None:  # fail closed: the server would lex statements otherwise
        return LoginRefusal(
            "08006", f"Lockgate: the server of {resource.name!r} runs with {unsafe}",
            "upstream_error", "error", "upstream_session_unsafe", {"setting": unsafe},
        )  # fmt: skip
    # The catalog may have changed while the upstream was awaited; the engine ends only
    # sessions already logged in, so this login must not finish on the old resource.
    current = ctx.resources.get(resource.name)
    if current != resource:
        return LoginRefusal(
            "08006", f"Lockgate: resource {resource.name!r} changed; connect again",
            "auth_failed", "deny", "resource_removed" if current is None else "resource_changed",
        )  # fmt: skip
    # Likewise a revocation reloaded meanwhile: the engine ends only sessions logged in, so
    # the token is verified again (in memory) before the client is greeted.
    try:
        ctx.verifier.verify(login.token, resource.name)
    except AuthenticationError as exc:
        reason = str(getattr(exc, "reason", "invalid"))
        return LoginRefusal(
            "28000", f"Lockgate token refused ({reason}); connect with a fresh one",
            "auth_failed", "deny", reason,
        )  # fmt: skip
    return None


def greeting(link: upstream.UpstreamLink, cancel_pid: int, cancel_secret: bytes) -> bytes:
    """``AuthenticationOk``, the server's parameters, the gateway's own cancel key
    (:mod:`.cancel`) and ``ReadyForQuery``: what the client hears once the session may go on."""
    messages = [codec.authentication_ok()]
    messages += [codec.parameter_status(k, v) for k, v in link.parameters.items()]
    messages += [codec.backend_key_data(cancel_pid, cancel_secret), codec.ready_for_query("I")]
    return b"".join(messages)


__all__ = ["LoginRefusal", "greeting", "lexing_mismatch", "refusal_after_login", "unreachable"]
