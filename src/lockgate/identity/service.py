"""The token service: who a deployment is, what a task may get, minting and revoking.

The logic behind ``POST /v1/token``, ``POST /v1/revoke``, JWKS and OIDC discovery, with no
web framework in it (the routes are :mod:`lockgate.control.token`; they read the body and
hand over its fields and the ``Authorization`` header). One token request goes through
fixed steps, each able to refuse with an :class:`OAuthError`:

1. (the route) read the body (form or JSON, small, no repeated fields);
2. authenticate the deployment (client secret, private-key JWT, or OIDC token exchange,
   behind the failed-authentication brake): :meth:`TokenService.authenticate`, whose room
   is :mod:`lockgate.identity.client_auth`;
3. parse the task coordinates and the resource (``resource`` or ``conn_id``);
4. the deployment must be delegated the ``dag_id`` (globs in ``Deployment.dags``);
5. optionally, Airflow's REST API must confirm the task try is running;
6. the injected ``mint_policy`` decides and caps the TTL;
7. (the route) one of the deployment's mints, within its rate: :meth:`TokenService.take_mint`
   (:mod:`lockgate.identity.rate_limit`);
8. mint, tell ``on_event`` (an audit failure refuses the token): :meth:`TokenService.issue`.

Steps 2-6 are :meth:`TokenService.authorize`, which ``POST /v1/db-role``
(:mod:`lockgate.control.db_role`) reuses so both doors refuse alike; :meth:`refused`
records and counts any refusal. ``on_revoke`` hears every revocation after it is stored
(kind and target), so per-token state elsewhere (dynamic database roles) ends with the
tokens.

With shared state (PostgreSQL) every call that reaches the database — storing a revocation,
claiming a client assertion's jti, re-reading blocks before a mint — runs in a worker thread
so the event loop never waits on the network; a database that cannot be reached refuses
with 503 (``shared_state_unavailable``), and one out of reach longer than ``max_staleness``
refuses every mint (``shared_state_stale``, :mod:`lockgate.identity.staleness`).

Neither the token nor any presented secret or assertion is ever logged, passed to
``on_event`` or put in a message.
"""

from __future__ import annotations

import inspect
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import aiohttp

from lockgate import _log, metrics
from lockgate.config import AnyResource, Deployment, LockgateConfig
from lockgate.errors import StoreUnavailable
from lockgate.identity._request import OAuthError, may_act_for, revoke_target, task_request
from lockgate.identity.attestation import AttestationFailed, AttestationUnavailable, attest
from lockgate.identity.client_auth import (
    TOKEN_EXCHANGE,
    ClientAuthenticator,
    shared_state_unavailable,
)
from lockgate.identity.keys import KeyStore
from lockgate.identity.model import Claims, MintDecision, TaskIdentity
from lockgate.identity.once import OnceLedger
from lockgate.identity.rate_limit import RateLimits
from lockgate.identity.revocation import RevocationStore
from lockgate.identity.tokens import TokenIssuer

JWT_TOKEN_TYPE = "urn:ietf:params:oauth:token-type:jwt"  # noqa: S105
MintPolicy = Callable[[TaskIdentity, str, "int | None"], "MintDecision | Awaitable[MintDecision]"]
EventSink = Callable[..., Any]
RevokeHook = Callable[[str, dict[str, Any]], Any]  # (kind, target with deployment); may await
log = _log.get("identity.service")


@dataclass(frozen=True, slots=True)
class TaskGrant:
    """What :meth:`TokenService.authorize` concluded: this task may have a token this long."""

    deployment: Deployment
    identity: TaskIdentity
    resource: AnyResource
    decision: MintDecision
    ttl: int


@dataclass(frozen=True, slots=True)
class IssuedToken:
    """A minted token whose ``token_issued`` record is written."""

    token: str
    claims: Claims
    ttl: int
    principal: str


class TokenService:
    """The token service of one process; ``rate_limits`` (None: no brakes) are the mint
    and failed-authentication budgets it shares with every worker and replica."""

    def __init__(
        self,
        config: LockgateConfig,
        keys: KeyStore,
        revocations: RevocationStore,
        issuer: TokenIssuer,
        mint_policy: MintPolicy,
        on_event: EventSink = lambda kind, **f: None,
        http: aiohttp.ClientSession | None = None,
        *,
        clock: Callable[[], float] = time.time,
        on_revoke: RevokeHook | None = None,
        assertion_ledger: OnceLedger | None = None,
        rate_limits: RateLimits | None = None,
    ) -> None:
        self._client_auth = ClientAuthenticator(
            config,
            revocations,
            self._session,
            clock=clock,
            assertion_ledger=assertion_ledger,
            rate_limits=rate_limits,
        )
        self.config = config
        self.keys = keys
        self.revocations = revocations
        self.issuer = issuer
        self._mint_policy = mint_policy
        self._on_event = on_event
        self._http = http
        self._owns_http = http is None
        self._clock = clock
        self._on_revoke = on_revoke

    @property
    def rate_limits(self) -> RateLimits | None:
        return self._client_auth.rate_limits

    @property
    def config(self) -> LockgateConfig:
        return self._config

    @config.setter
    def config(self, config: LockgateConfig) -> None:
        """A new catalog (the control plane's ``update_resources``) reaches every step."""
        self._config = config
        self._client_auth.config = config

    # -- lifecycle ----------------------------------------------------------------------------
    async def close(self) -> None:
        if self._owns_http and self._http is not None:
            await self._http.close()
            self._http = None

    async def _session(self) -> aiohttp.ClientSession:
        if self._http is None:
            self._http = aiohttp.ClientSession()
        return self._http

    # -- the flow -----------------------------------------------------------------------------
    async def authorize(
        self, body: dict[str, str], authorization: str | None, ctx: dict[str, Any]
    ) -> TaskGrant:
        """Steps 2-6: who asks, for which task and resource, and may it; fills ``ctx`` for the
        audit as it learns. Raises :class:`OAuthError` on any refusal."""
        ctx["deployment"], ctx["proof"] = await self.authenticate(
            body, authorization, ctx.get("remote"), ctx
        )
        dep = self.config.deployment(ctx["deployment"])
        assert dep is not None  # authenticate only returns configured deployments
        identity, resource_name, requested_ttl = task_request(self.config, dep.name, body)
        ctx.update(_identity_fields(identity), resource=resource_name)
        if not may_act_for(dep, identity.dag_id):
            raise OAuthError(
                403,
                "access_denied",
                f"deployment {dep.name!r} may not act for this dag",
                reason="dag_not_delegated",
                principal=identity.principal,
                body={"principal": identity.principal, "reason": "dag_not_delegated"},
            )
        await self._refuse_if_blocked(dep.name, identity.dag_id, identity.principal)
        resource = self.config.resource(resource_name)
        if resource is None:
            raise OAuthError(
                404,
                "unknown_resource",
                "no such resource",
                reason="unknown_resource",
                body={"resource": resource_name},
            )
        await self._attest(dep, identity)
        decision = await self._decide(identity, resource.name, requested_ttl)
        if not isinstance(decision, MintDecision) or not decision.allowed:
            reason = getattr(decision, "reason", "") or "denied by policy"
            raise OAuthError(
                403,
                "access_denied",
                reason,
                reason="policy_denied",
                body={
                    "principal": identity.principal,
                    "resource": resource.name,
                    "reason": reason,
                },
                principal=identity.principal,
                policy_reason=reason,
                rule=getattr(decision, "rule", None),
            )
        return TaskGrant(dep, identity, resource, decision, self._ttl(decision, requested_ttl))

    async def issue(
        self, grant: TaskGrant, ctx: dict[str, Any], *, traceparent: str | None = None
    ) -> IssuedToken:
        """Step 8: mint the granted token and record it; no record, no token (the token is
        dropped before anyone sees it and :class:`OAuthError` 503 is raised). The token
        carries ``traceparent`` (the task's trace context) when it is a valid one."""
        token, claims = self.issuer.mint(
            grant.identity, grant.resource.name, grant.ttl, traceparent=traceparent
        )
        await self.record_issued(grant, claims, ctx)
        return IssuedToken(token, claims, grant.ttl, grant.identity.principal)

    async def record_issued(self, grant: TaskGrant, claims: Claims, ctx: dict[str, Any]) -> None:
        """Write the ``token_issued`` record of a minted token (``ctx`` adds to it) and
        count it. Nothing minted may be handed out before this returns: when the audit
        fails it raises :class:`OAuthError` 503 (counted as ``audit_unavailable``)."""
        try:
            await _maybe_await(
                self._on_event(
                    "token_issued",
                    **ctx,
                    jti=claims.jti,
                    ttl=grant.ttl,
                    rule=grant.decision.rule,
                    principal=grant.identity.principal,
                    expires_at=claims.exp,
                )
            )
        except Exception as exc:
            log.error(
                "token not issued: audit failed", extra={"fields": {"error": type(exc).__name__}}
            )
            metrics.TOKEN_REJECTIONS.labels(reason="audit_unavailable").inc()
            raise audit_unavailable() from None
        resource = grant.resource.name
        metrics.TOKENS_ISSUED.labels(
            deployment=grant.deployment.name,
            resource=resource,
            dag=metrics.dag_label(claims.dag_id),
        ).inc()
        log.info("token issued", extra={"fields": {**ctx, "jti": claims.jti, "ttl": grant.ttl}})

    async def revoke(
        self, body: dict[str, str], authorization: str | None, ctx: dict[str, Any]
    ) -> str:
        """Authenticate the deployment and store what it revokes (a token by jti, a DAG, a
        run, a task try) or blocks (a DAG); the kind done. A refusal is recorded, then
        raised as :class:`OAuthError`."""
        try:
            ctx["deployment"], ctx["proof"] = await self.authenticate(
                body, authorization, ctx.get("remote"), ctx
            )
            dep = self.config.deployment(ctx["deployment"])
            assert dep is not None
            kind, target = revoke_target(body)
            ctx.update(target)
            reason = f"revoked by deployment {dep.name}"
            block = _flag(body.get("block"))
            if block and (kind != "dag" or "run_id" in target):
                raise OAuthError(
                    400,
                    "invalid_request",
                    "block takes a dag_id alone (no jti, run or task)",
                    reason="bad_block_target",
                )
            if kind == "jti":
                # A jti is no secret (task logs, audit records): the revocation holds for this
                # deployment's token of that jti only, and the answer is the same either way.
                expires = self._clock() + self.config.tokens.max_ttl + self.config.tokens.leeway
                await self._store(
                    self.revocations.revoke_jti, target["jti"], expires, reason, dep.name
                )
            elif not may_act_for(dep, target["dag_id"]):
                raise OAuthError(
                    403,
                    "access_denied",
                    f"deployment {dep.name!r} may not act for this dag",
                    reason="dag_not_delegated",
                )
            elif block:
                # A deployment may stop its own DAG; lifting the block is an operator's call
                # (``lockgate token unblock``), so a stolen deployment secret cannot undo it.
                by = f"deployment {dep.name}"
                ctx["reason"] = _note(body.get("reason")) or by
                await self._store(
                    self.revocations.block, dep.name, target["dag_id"], by, ctx["reason"]
                )
                kind = "block"
            elif kind == "dag":
                await self._store(
                    self.revocations.revoke_dag,
                    dep.name, target["dag_id"], target.get("run_id"), reason,
                )  # fmt: skip
            else:
                await self._store(
                    self.revocations.revoke_task_try, dep.name, **target, reason=reason
                )
        except OAuthError as exc:
            await self.refused(exc, ctx)
            raise
        if self._on_revoke is not None:
            try:
                await _maybe_await(self._on_revoke(kind, {"deployment": dep.name, **target}))
            except Exception as exc:  # tokens are revoked already; the hook retries on its own
                log.error("revocation hook failed", extra={"fields": {"error": type(exc).__name__}})
        try:
            event = "mint_blocked" if kind == "block" else "token_revoked"
            await _maybe_await(self._on_event(event, kind=kind, **ctx))
        except Exception as exc:  # the revocation already holds; auditing it is best effort
            log.error("revocation not audited", extra={"fields": {"error": type(exc).__name__}})
        log.info("tokens revoked", extra={"fields": {**ctx, "kind": kind}})
        return kind

    def jwks(self) -> dict[str, Any]:
        if not self.revocations.shared:  # shared keys are reloaded off the loop, 5 times a second
            self.keys.maybe_reload()  # show rotations made by `lockgate keys rotate` promptly
        return self.keys.jwks()

    def discovery(self) -> dict[str, Any]:
        """The OpenID provider metadata of this issuer."""
        base = self.issuer.issuer
        return {
            "issuer": base,
            "jwks_uri": f"{base}/.well-known/jwks.json",
            "token_endpoint": f"{base}/v1/token",
            "revocation_endpoint": f"{base}/v1/revoke",
            "grant_types_supported": ["client_credentials", TOKEN_EXCHANGE],
            "token_endpoint_auth_methods_supported": [
                "client_secret_basic",
                "client_secret_post",
                "private_key_jwt",
            ],
            "token_endpoint_auth_signing_alg_values_supported": ["EdDSA", "RS256", "ES256"],
            # Every algorithm a key is kept for: clouds (Entra ID, Databricks) check that the
            # one their assertions use is listed before they trust this issuer.
            "id_token_signing_alg_values_supported": list(self.config.signing_algorithms()),
            "response_types_supported": ["token"],
            "subject_types_supported": ["public"],
        }

    # -- steps --------------------------------------------------------------------------------
    async def authenticate(
        self,
        body: dict[str, str],
        authorization: str | None,
        remote: str | None = None,
        ctx: dict[str, Any] | None = None,
    ) -> tuple[str, str]:
        """Step 2, for every door a deployment calls: (deployment name, proof kind) from the
        body's fields and the ``Authorization`` header, or :class:`OAuthError` (not yet
        recorded: the caller passes it to :meth:`refused`). Every door passes here first, so
        a replica past its staleness bound refuses them all, and a client or ``remote``
        address cooling down after failed authentications is refused whatever it presents
        (:mod:`lockgate.identity.client_auth`). ``ctx``, the request's audit fields, learns
        which workload a verified subject token names (``workload_subject``,
        ``workload_issuer``)."""
        return await self._client_auth.authenticate(body, authorization, remote, ctx)

    async def take_mint(self, deployment: str) -> None:
        """One of ``deployment``'s mints, or :class:`OAuthError` 429: every door that mints
        calls it once the grant is known and before anything is minted."""
        if self.rate_limits is not None:
            await self.rate_limits.take_mint(deployment)

    async def _store(self, write: Callable[..., object], *args: Any, **kwargs: Any) -> None:
        """A revocation write, off the loop when shared; an unreachable database refuses."""
        try:
            await self.revocations.off_loop(write, *args, **kwargs)
        except StoreUnavailable as exc:
            raise shared_state_unavailable(exc) from None

    async def _refuse_if_blocked(self, deployment: str, dag_id: str, principal: str) -> None:
        """The kill switch: a blocked DAG (or deployment) gets no token, with a message that
        says who blocked it and since when."""
        # A block set by the CLI or another replica a moment ago must hold now, not at the
        # next refresh tick; one version read when nothing changed (mints are not the
        # per-request path). An unreachable database keeps memory (the staleness bound).
        await self.revocations.off_loop(self.revocations.refresh)
        blk = self.revocations.blocked(deployment, dag_id)
        if blk is not None:
            message = blk.message(dag_id)
            raise OAuthError(
                403,
                "access_denied",
                message,
                reason="dag_blocked",
                principal=principal,
                body={"principal": principal, "reason": message},  # what the task shows
                policy_reason=message,
            )

    async def _attest(self, dep: Deployment, identity: TaskIdentity) -> None:
        if dep.airflow_api is None:
            return
        try:
            await attest(dep.airflow_api, identity, self._session)
        except AttestationFailed as exc:
            raise OAuthError(
                403, "attestation_failed", str(exc), reason="attestation_failed"
            ) from None
        except AttestationUnavailable as exc:
            raise OAuthError(
                503, "temporarily_unavailable", str(exc), reason="attestation_unavailable"
            ) from None

    async def _decide(
        self, identity: TaskIdentity, resource: str, requested_ttl: int | None
    ) -> object:
        """The mint policy's answer (a :class:`MintDecision` unless it is broken)."""
        try:
            return await _maybe_await(self._mint_policy(identity, resource, requested_ttl))
        except Exception as exc:
            # A policy that cannot answer denies; say so without guessing at the cause.
            log.error("mint policy failed", extra={"fields": {"error": type(exc).__name__}})
            raise OAuthError(
                503, "temporarily_unavailable", "policy unavailable", reason="policy_error"
            ) from None

    def _ttl(self, decision: MintDecision, requested: int | None) -> int:
        ttl = decision.ttl if decision.ttl > 0 else self.config.tokens.default_ttl
        if requested is not None:
            ttl = min(ttl, requested)
        return max(1, min(ttl, self.config.tokens.max_ttl))

    async def refused(self, exc: OAuthError, ctx: dict[str, Any]) -> None:
        metrics.TOKEN_REJECTIONS.labels(reason=exc.reason).inc()
        kind = (
            "proof_rejected"
            if exc.status in (400, 401) and "deployment" not in ctx
            else ("token_denied")
        )
        fields = {**ctx, **exc.fields, "reason": exc.reason, "status": exc.status}
        log.warning("token request refused", extra={"fields": fields})
        try:
            await _maybe_await(self._on_event(kind, **fields))
        except Exception as err:  # the request is refused either way
            log.error("refusal not audited", extra={"fields": {"error": type(err).__name__}})


def audit_unavailable() -> OAuthError:
    """The refusal of anything that could not be recorded first."""
    return OAuthError(
        503, "temporarily_unavailable", "audit unavailable", reason="audit_unavailable"
    )


def _identity_fields(identity: TaskIdentity) -> dict[str, Any]:
    return {
        "dag_id": identity.dag_id,
        "task_id": identity.task_id,
        "run_id": identity.run_id,
        "try_number": identity.try_number,
        "map_index": identity.map_index,
    }


def _flag(value: str | None) -> bool:
    return (value or "").strip().lower() in ("1", "true", "yes")


def _note(value: str | None) -> str:
    """A caller's free-text reason, bounded and printable (it is shown to operators)."""
    return "".join(c for c in (value or "")[:200] if c.isprintable()).strip()


async def _maybe_await(value: Any) -> Any:
    return await value if inspect.isawaitable(value) else value
