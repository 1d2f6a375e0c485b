"""The console's live page: sessions and tokens open now, the kill switch, and the buttons
that revoke and block.

``GET /live`` (viewer and above; ``?dag=`` narrows it): the CQL and PostgreSQL sessions open
now in every worker and replica (:mod:`lockgate.gateway.live_sessions`), the tokens live now
(:func:`lockgate.console.live.live_tokens`) and the blocks in force. Operators see, per row,
links to revoke a token, a run's tokens or a DAG's, and to block or unblock a DAG; admins
also block a whole deployment. Every link leads to ``GET /live/confirm``, which says what
will happen and holds the one POST form (``POST /live/act``: role, same origin and CSRF
checked by :func:`~lockgate.console.web.action`).

An action is stored in the revocation store (every worker and replica applies it within a
second; the engines end the open sessions of a revoked token), then audited as the human who
pressed the button (``token_revoked`` / ``mint_blocked`` / ``mint_unblocked``, principal
``console:<subject>``, detail: by, role, via) before the answer: a 303 back to ``/live``
with a notice. A trail that cannot write refuses the action before anything is stored.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from inspect import isawaitable
from typing import Any, Protocol
from urllib.parse import urlencode

from aiohttp import web

from lockgate import _log
from lockgate.audit import AuditRecord
from lockgate.console import reads
from lockgate.console.live import MAX_TOKENS, LiveTokens, live_tokens, operator_record, visible
from lockgate.console.reads import run_read
from lockgate.console.web import (
    CSRF,
    ConsoleContext,
    ConsoleUser,
    OpenSession,
    action,
    context,
    forbidden,
    form_text,
    render,
    requires,
    user_of,
)
from lockgate.identity.revocation import ANY_DAG, ANY_DEPLOYMENT, Block

log = _log.get("console.live")


# -- what the page shows ----------------------------------------------------------------------
class SessionSource(Protocol):
    """What :class:`LiveSessionsView` reads (a :class:`~lockgate.gateway.live_sessions.
    SessionRegistry`)."""

    def open_sessions(self, limit: int = ...) -> list[Any]: ...


class LiveSessionsView:
    """The console's :class:`~lockgate.console.web.LiveSessions` over the gateway's session
    registry (the gateway does not know the console's types)."""

    def __init__(self, registry: SessionSource) -> None:
        self.registry = registry

    def open_sessions(self) -> list[OpenSession]:
        return [_open_session(s) for s in self.registry.open_sessions()]


def _open_session(s: Any) -> OpenSession:
    return OpenSession(
        kind=s.kind, resource=s.resource, principal=s.principal, deployment=s.deployment,
        dag_id=s.dag_id, run_id=s.run_id, task_id=s.task_id, try_number=s.try_number,
        jti=s.jti, opened_at=s.opened_at, peer=s.peer, where=s.where,
    )  # fmt: skip


def when(ts: float | None) -> str:
    """A time as the tables show it (UTC, to the second)."""
    if ts is None:
        return ""
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def iso(ts: float | None) -> str:
    """A time for a ``<time datetime>`` attribute."""
    if ts is None:
        return ""
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="seconds")


@dataclass(frozen=True)
class LivePage:
    sessions: list[OpenSession]
    tokens: LiveTokens
    blocks: list[Block]
    tracked: bool  # sessions are registered by this gateway (else: not shown)


def _read_page(ctx: ConsoleContext, dag: str | None) -> LivePage:
    """Everything ``GET /live`` shows (blocking reads: run in a worker thread)."""
    sessions = ctx.live.open_sessions() if ctx.live is not None else []
    if dag:
        sessions = [s for s in sessions if s.dag_id == dag]
    with ctx.audit_reader() as reader:
        tokens = live_tokens(
            reader, ctx.revocations, max_ttl=ctx.config.tokens.max_ttl, dag=dag or None
        )
    blocks = [b for b in ctx.revocations.blocks() if not dag or b.dag_id in (dag, ANY_DAG)]
    return LivePage(sessions, tokens, blocks, ctx.live is not None)


@requires("viewer")
async def live_page(request: web.Request) -> web.StreamResponse:
    ctx = context(request)
    dag = request.query.get("dag", "").strip()
    page = await run_read(request, _read_page, ctx, dag or None)  # live tokens: the trail
    return render(
        request, "live_index.html", page=page, dag=dag, notice=_signed_notice(request),
        now=time.time(), when=when, iso=iso, confirm=confirm_href, any_dag=ANY_DAG,
        any_deployment=ANY_DEPLOYMENT, max_tokens=MAX_TOKENS,
    )  # fmt: skip


# -- actions ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Act:
    """One operator action: who may do it, what its confirm page and button say."""

    role: str
    title: str
    button: str
    needs: tuple[str, ...]  # form fields it requires


ACTS: Mapping[str, Act] = {
    "revoke_token": Act("operator", "Revoke a token", "Revoke token", ("jti",)),
    "revoke_run": Act("operator", "Revoke a run's tokens", "Revoke run", ("dag", "run")),
    "revoke_dag": Act("operator", "Revoke a DAG's tokens", "Revoke DAG", ("dag",)),
    "block_dag": Act("operator", "Block a DAG", "Block DAG", ("dag",)),
    "unblock_dag": Act("operator", "Unblock a DAG", "Unblock DAG", ("dag",)),
    "block_deployment": Act("admin", "Block a deployment", "Block deployment", ("deployment",)),
    "unblock_deployment": Act(
        "admin", "Unblock a deployment", "Unblock deployment", ("deployment",)
    ),
}
_TARGET_FIELDS = ("jti", "deployment", "dag", "run")
#: the query parameter a "done" notice's signature travels in
NOTICE_SIG = "sig"
#: the longest jti, deployment, DAG or run id an action takes (Airflow's ids are shorter)
MAX_TARGET = 500


def confirm_href(act: str, **target: str | None) -> str:
    """The link to the confirm page of ``act`` on ``target`` (jti, deployment, dag, run)."""
    values = {k: v for k, v in target.items() if v and v != ANY_DEPLOYMENT and v != ANY_DAG}
    return "/console/live/confirm?" + urlencode({"act": act, **values})


def _act_of(values: Mapping[str, Any]) -> tuple[str, Act]:
    name = values.get("act")
    act = ACTS.get(name) if isinstance(name, str) else None
    if act is None:
        raise web.HTTPBadRequest(text="act: not an action of this page")
    assert isinstance(name, str)
    for needed in act.needs:
        form_text(values, needed)
    return name, act


def _target(values: Mapping[str, Any]) -> dict[str, str]:
    target = {k: form_text(values, k, required=False) for k in _TARGET_FIELDS}
    for name, value in target.items():  # cut short it would name another DAG, run or token
        if len(value) > MAX_TARGET:
            raise web.HTTPBadRequest(text=f"{name}: longer than {MAX_TARGET} characters")
    # "*" is the store's "every DAG" / "every deployment": DAG "*" of prod would be prod
    # itself, an admin's kill switch set or lifted by an operator's DAG action
    if target["dag"] == ANY_DAG or target["deployment"] == ANY_DEPLOYMENT:
        raise web.HTTPBadRequest(
            text="dag, deployment: '*' is not a name (every DAG of a "
            "deployment is the deployment's own action)"
        )
    return target


@requires("operator")
async def confirm_page(request: web.Request) -> web.StreamResponse:
    name, act = _act_of(request.query)
    if not user_of(request).can(act.role):
        return forbidden(request, act.role)
    target = _target(request.query)
    return render(
        request, "live_confirm.html", act=name, spec=act, target=target,
        shown=_shown(target), effect=effect(name, target),
    )  # fmt: skip


@action("operator")
async def act(request: web.Request) -> web.StreamResponse:
    form = await request.post()
    name, spec = _act_of(form)
    user = user_of(request)
    if not user.can(spec.role):
        return forbidden(request, spec.role)
    ctx = context(request)
    target = _target(form)
    reason = form_text(form, "reason", required=False)[:500]
    if target["deployment"] and ctx.config.deployment(target["deployment"]) is None:
        raise web.HTTPBadRequest(text=f"deployment: no deployment named {target['deployment']!r}")
    check = getattr(ctx.audit, "check_writable", None)
    stored = False
    try:
        if callable(check):  # refuse before anything is stored when the trail cannot write
            check()
        record = await ctx.revocations.off_loop(_apply, ctx, name, target, reason, user)
        stored = True
        if record is not None:
            await _audit(ctx, record)
    except Exception as exc:
        log.error("console action failed", extra={"fields": {"act": name, "error": str(exc)}})
        return render(
            request, "live_confirm.html", status=503, act=name, spec=spec, target=target,
            shown=_shown(target), effect=effect(name, target), failed=_failure(exc, stored),
        )  # fmt: skip
    done = name if record is not None else f"no_{name}"
    query = {"done": done, **{k: v for k, v in target.items() if v}}
    query[NOTICE_SIG] = _notice_sig(request, query)
    raise web.HTTPSeeOther("/console/live?" + urlencode(query))


def _notice_sig(request: web.Request, query: Mapping[str, str]) -> str:
    """What makes a "done" notice the action's own: an HMAC of the notice and its target
    under the session's CSRF token (a link's author cannot make one, so a crafted link never
    says "DAG etl blocked" when nothing was)."""
    said = urlencode(sorted((k, v) for k, v in query.items() if k != NOTICE_SIG))
    key = request.get(CSRF, "").encode()
    return hmac.new(key, said.encode(), hashlib.sha256).hexdigest()[:32]


def _signed_notice(request: web.Request) -> str | None:
    """The notice the query asks for, when the action that redirected here signed it."""
    sent = request.query.get(NOTICE_SIG, "")
    if not sent or not request.get(CSRF):
        return None
    if not hmac.compare_digest(sent.encode(), _notice_sig(request, request.query).encode()):
        return None
    return notice(request.query)


def _failure(exc: Exception, stored: bool) -> str:
    """What the person is told: whether anything changed, never the error's text."""
    from lockgate.errors import AuditUnavailable, StoreUnavailable

    if stored:  # it cannot be taken back: a revocation undone would let a token through
        return (
            "The change is in force, but its audit record could not be written; tell whoever "
            "reads the trail. The gateway's log says more."
        )
    if isinstance(exc, AuditUnavailable):
        return "The audit trail cannot be written: nothing was done. Try again shortly."
    if isinstance(exc, StoreUnavailable):
        return "The revocation store cannot be reached: nothing was done. Try again shortly."
    return "The action failed and nothing was done; the gateway's log says more."


def _apply(
    ctx: ConsoleContext, name: str, target: Mapping[str, str], reason: str, user: ConsoleUser
) -> AuditRecord | None:
    """Store the action (blocking: runs off the loop on shared state); its audit record, or
    None when there was nothing to do (an unblock with no block)."""
    store = ctx.revocations
    deployment = target["deployment"] or None
    dag, run, jti = target["dag"] or None, target["run"] or None, target["jti"] or None
    why = reason or f"revoked from the console by {user.name}"
    event = "token_revoked"
    if name == "revoke_token":
        assert jti is not None
        store.revoke_jti(jti, time.time() + ctx.config.tokens.max_ttl, why)
        deployment = dag = run = None
    elif name in ("revoke_run", "revoke_dag"):
        assert dag is not None
        run = run if name == "revoke_run" else None
        store.revoke_dag(deployment, dag, run, why)
        jti = None
    elif name in ("block_dag", "block_deployment"):
        dag = dag if name == "block_dag" else None
        store.block(deployment, dag, user.name, reason)
        event, run, jti = "mint_blocked", None, None
    else:  # unblock_dag, unblock_deployment
        dag = dag if name == "unblock_dag" else None
        if not store.unblock(deployment, dag):
            return None
        event, run, jti, why = "mint_unblocked", None, None, reason
    return operator_record(
        event, by=user.name, principal=user.principal, deployment=deployment, dag_id=dag,
        run_id=run, jti=jti, reason=why, detail={"role": user.role, "via": user.via},
    )  # fmt: skip


async def _audit(ctx: ConsoleContext, record: AuditRecord) -> None:
    """Write ``record`` and wait until the trail has it (fail closed: raises)."""
    write: Callable[[AuditRecord], Any] | None = getattr(ctx.audit, "write", None)
    if write is None:
        ctx.emit(record)
        return
    written = write(record)
    if isawaitable(written):
        await written


# -- what the page says -----------------------------------------------------------------------
_APPLIED = "every gateway refuses its next request within a second"


def _shown(target: Mapping[str, str]) -> dict[str, str]:
    """``target`` as the page shows it (see :func:`~lockgate.console.live.visible`); the
    form carries it as it is."""
    return {k: visible(v) for k, v in target.items()}


def effect(name: str, target: Mapping[str, str]) -> str:
    """What ``name`` on ``target`` will do, for the confirm page."""
    t = _shown(target)
    dag, run, dep = t.get("dag", ""), t.get("run", ""), t.get("deployment", "")
    of = f" of deployment {dep}" if dep else ""
    return {
        "revoke_token": f"Token {t.get('jti', '')} will be refused from now on; its open "
        "sessions are ended.",
        "revoke_run": f"Every token issued so far for run {run} of DAG {dag}{of} will be "
        "refused; its open sessions are ended. New tokens can still be minted.",
        "revoke_dag": f"Every token issued so far for DAG {dag}{of} will be refused; its open "
        "sessions are ended. New tokens can still be minted.",
        "block_dag": f"DAG {dag}{of} gets no new token until unblocked, and every token it "
        "holds is refused (kill switch).",
        "unblock_dag": f"DAG {dag}{of} can get new tokens again; tokens revoked by the block "
        "stay revoked.",
        "block_deployment": f"Every DAG of deployment {dep} gets no new token until unblocked, "
        "and every token they hold is refused (kill switch).",
        "unblock_deployment": f"The DAGs of deployment {dep} can get new tokens again; tokens "
        "revoked by the block stay revoked.",
    }[name]


def notice(query: Mapping[str, str]) -> str | None:
    """The notice after an action (a fixed sentence per action; values shown as text)."""
    done = query.get("done")
    if not done:
        return None
    dag, run, dep, jti = (visible(query.get(k, "")) for k in ("dag", "run", "deployment", "jti"))
    of = f" of deployment {dep}" if dep else ""
    notices = {
        "revoke_token": f"Token {jti} revoked; its next request will be refused within a second.",
        "revoke_run": f"Tokens of run {run} of DAG {dag}{of} revoked; {_APPLIED}.",
        "revoke_dag": f"Tokens of DAG {dag}{of} revoked; {_APPLIED}.",
        "block_dag": f"DAG {dag}{of} blocked: no new token until unblocked; {_APPLIED}.",
        "unblock_dag": f"DAG {dag}{of} unblocked: new tokens can be minted again.",
        "no_unblock_dag": f"DAG {dag}{of} was not blocked: nothing to lift.",
        "block_deployment": f"Deployment {dep} blocked: no new token for any of its DAGs; "
        f"{_APPLIED}.",
        "unblock_deployment": f"Deployment {dep} unblocked: new tokens can be minted again.",
        "no_unblock_deployment": f"Deployment {dep} was not blocked: nothing to lift.",
    }
    return notices.get(done)


def add_routes(app: web.Application) -> None:
    reads.install(app)
    app.router.add_get("/live", live_page)
    app.router.add_get("/live/confirm", confirm_page)
    app.router.add_post("/live/act", act)


__all__ = [
    "ACTS",
    "LiveSessionsView",
    "add_routes",
    "confirm_href",
    "effect",
    "notice",
]
