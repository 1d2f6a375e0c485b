"""Which deployment asks: step 2 of every control request a deployment makes.

A deployment proves who it is with one of three proofs, read from the request body and the
``Authorization`` header: a client secret (HTTP Basic or ``client_secret_post``), a
private-key JWT assertion (RFC 7523, its jti claimed once in the shared ledger), or an OIDC
subject token from a trusted issuer (RFC 8693 token exchange: a workload identity such as
a Kubernetes service-account token or a SPIFFE JWT-SVID, :mod:`lockgate.identity.oidc`).
A deployment configured with no ``proof`` is proven by its issuers' tokens only: a client
secret or assertion presented for it is refused like a wrong one. A token exchange that
also names a ``client_id`` must name the deployment the subject token proves.
:class:`ClientAuthenticator` checks the proof and answers the deployment's name, or raises
:class:`OAuthError` (not yet recorded: the token service's ``refused`` records it).

Two brakes stand before the proof: a replica past its staleness bound serves no deployment
(:mod:`lockgate.identity.staleness`), and a client or address cooling down after failed
authentications is refused whatever it presents (:mod:`lockgate.identity.rate_limit`; a
wrong proof counts against both). The brakes are for what can be guessed. A token
exchange, and any request naming a deployment that has no secret or key of its own, counts
against its address only (a name alone, sent ten times with garbage, must not lock a
secretless deployment's workers out); and a token exchange is checked before the address
brake, which refuses only the ones that fail: a signed workload token cannot be guessed,
and the pods of one node share its address, so a neighbour's garbage must not lock the
node's Airflow workers out. Neither a presented secret nor an assertion is ever
logged or put in a message.
"""

from __future__ import annotations

import base64
import binascii
import time
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import unquote_plus

import aiohttp

from lockgate import _log
from lockgate.config import LockgateConfig
from lockgate.errors import AuthenticationError, StoreUnavailable
from lockgate.identity._request import OAuthError
from lockgate.identity.oidc import SUBJECT_TOKEN_TYPES, OidcVerifier
from lockgate.identity.once import OnceLedger
from lockgate.identity.proofs import ASSERTION_TYPE, AssertionVerifier, check_client_secret
from lockgate.identity.rate_limit import RateLimits, is_failed_authentication
from lockgate.identity.revocation import RevocationStore
from lockgate.identity.staleness import STALE_REASON, StalenessBound

TOKEN_EXCHANGE = "urn:ietf:params:oauth:grant-type:token-exchange"  # noqa: S105
# What a token exchange may ask for: Lockgate issues JWT access tokens only.
ISSUED_TOKEN_TYPES = (
    "urn:ietf:params:oauth:token-type:jwt",
    "urn:ietf:params:oauth:token-type:access_token",
)
# The assertion verifier's reason when its replay ledger (the shared database) cannot answer.
REPLAY_CHECK_UNAVAILABLE = "replay_check_unavailable"
log = _log.get("identity.service")


class ClientAuthenticator:
    """Step 2 for every door a deployment calls: (deployment name, proof kind).

    ``revocations`` lends its database (the staleness bound) and its way off the event loop
    (a client assertion's jti is claimed in the shared database); ``rate_limits`` is the
    failed-authentication brake (None: no brake)."""

    def __init__(
        self,
        config: LockgateConfig,
        revocations: RevocationStore,
        session: Callable[[], Awaitable[aiohttp.ClientSession]],
        *,
        clock: Callable[[], float] = time.time,
        assertion_ledger: OnceLedger | None = None,
        rate_limits: RateLimits | None = None,
    ) -> None:
        self.config = config
        self.rate_limits = rate_limits
        self._revocations = revocations
        # seen client-assertion jtis: the state's ledger (None: data_dir/assertions.db)
        self._assertions = AssertionVerifier(config, clock=clock, ledger=assertion_ledger)
        self._staleness = StalenessBound.for_config(config, revocations.database)
        self._oidc = OidcVerifier(
            config.oidc_issuers,
            session,
            leeway=config.tokens.leeway,
            own_issuer=config.issuer_url,
        )

    async def authenticate(
        self,
        body: dict[str, str],
        authorization: str | None,
        remote: str | None,
        ctx: dict[str, Any] | None = None,
    ) -> tuple[str, str]:
        """The deployment the request proves to be and how, or :class:`OAuthError`.
        ``remote``: the caller's address, for the failed-authentication brake. ``ctx``
        (the request's audit fields) learns which workload a verified subject token names
        (``workload_subject``, ``workload_issuer``): an auditor asks which pod minted."""
        brake = self.rate_limits
        if brake is None:
            return await self._prove(body, authorization, ctx)
        if is_token_exchange(body):
            try:
                return await self._prove(body, authorization, ctx)
            except OAuthError as exc:
                if is_failed_authentication(exc):
                    try:
                        await brake.refuse_if_cooling(None, remote)  # a flood still gets 429
                    except OAuthError as cooling:
                        cooling.fields["proof_refusal"] = exc.reason  # what was wrong, too
                        raise cooling from None
                    await brake.failed(None, remote)
                raise
        client = named_client(self.config, body, authorization)
        await brake.refuse_if_cooling(client, remote)
        try:
            return await self._prove(body, authorization, ctx)
        except OAuthError as exc:
            if is_failed_authentication(exc):
                await brake.failed(client, remote)
            raise

    async def _prove(
        self, body: dict[str, str], authorization: str | None, ctx: dict[str, Any] | None
    ) -> tuple[str, str]:
        self._refuse_if_stale()
        grant = body.get("grant_type")
        if is_token_exchange(body):
            return await self._subject_token(body, {} if ctx is None else ctx), "oidc"
        if grant not in (None, "client_credentials"):
            raise OAuthError(
                400,
                "unsupported_grant_type",
                "unsupported grant_type",
                reason="unsupported_grant_type",
            )
        basic = basic_credentials(authorization)
        if "client_assertion" in body:
            if body.get("client_assertion_type") != ASSERTION_TYPE or basic is not None:
                raise OAuthError(
                    401,
                    "invalid_client",
                    "unsupported client assertion",
                    reason="bad_assertion_type",
                )
            return await self._client_assertion(body), "private_key_jwt"
        if basic is not None and ("client_secret" in body):
            raise OAuthError(
                400,
                "invalid_request",
                "use one client authentication method",
                reason="multiple_client_auth",
            )
        client_id, secret = basic or (body.get("client_id"), body.get("client_secret"))
        if not client_id or not secret:
            raise OAuthError(
                401,
                "invalid_client",
                "client authentication required",
                reason="missing_client_auth",
                basic_challenge=True,
            )
        try:
            return check_client_secret(self.config, client_id, secret), "client_secret"
        except AuthenticationError:
            raise OAuthError(
                401,
                "invalid_client",
                "client authentication failed",
                reason="bad_client_secret",
                basic_challenge=True,
                # Only a configured name: an unknown "client id" may be the secret itself
                # (id and secret swapped), which must reach neither audit nor logs.
                client_id=client_id if self.config.deployment(client_id) else "(unknown)",
            ) from None

    async def _subject_token(self, body: dict[str, str], ctx: dict[str, Any]) -> str:
        if body.get("subject_token_type") not in SUBJECT_TOKEN_TYPES:
            raise OAuthError(
                400,
                "invalid_request",
                "unsupported subject_token_type",
                reason="bad_subject_token_type",
            )
        if "actor_token" in body or "actor_token_type" in body:
            # Delegation (RFC 8693 §1.1) is not what Lockgate issues: a caller asking for it
            # must not take an impersonation token for one.
            raise OAuthError(
                400,
                "invalid_request",
                "actor tokens (delegation) are not supported",
                reason="actor_token_unsupported",
            )
        if body.get("requested_token_type") not in (None, *ISSUED_TOKEN_TYPES):
            raise OAuthError(
                400,
                "invalid_request",
                "unsupported requested_token_type",
                reason="bad_requested_token_type",
            )
        try:
            subject = await self._oidc.verify(body.get("subject_token", ""))
        except AuthenticationError as exc:
            raise OAuthError(
                400, "invalid_grant", "subject token rejected", reason=f"oidc_{exc.reason}"
            ) from None
        # Verified, so worth recording (a service account or SPIFFE ID, no secret).
        ctx.update(workload_subject=subject.subject, workload_issuer=subject.issuer.issuer)
        named = body.get("client_id")
        if named is not None and named != subject.deployment:
            # The worker says it is one deployment, its workload identity proves another: a
            # misconfigured worker (or a borrowed token); neither gets a token.
            raise OAuthError(
                400,
                "invalid_grant",
                "subject token speaks for another deployment",
                reason="oidc_client_id_mismatch",
                client_id=named if self.config.deployment(named) else "(unknown)",
            )
        return subject.deployment

    async def _client_assertion(self, body: dict[str, str]) -> str:
        try:
            # Off the loop when shared: the assertion's jti is claimed in the database.
            return await self._revocations.off_loop(
                self._assertions.verify, body["client_assertion"], body.get("client_id")
            )
        except StoreUnavailable as exc:
            raise shared_state_unavailable(exc) from None
        except AuthenticationError as exc:
            if exc.reason == REPLAY_CHECK_UNAVAILABLE:  # our failure, not the client's
                raise OAuthError(
                    503,
                    "temporarily_unavailable",
                    "client assertion replay check unavailable; try again later",
                    reason=f"assertion_{exc.reason}",
                ) from None
            raise OAuthError(
                401,
                "invalid_client",
                "client assertion rejected",
                reason=f"assertion_{exc.reason}",
            ) from None

    def _refuse_if_stale(self) -> None:
        """Past ``max_staleness`` without the shared database, no deployment is served (no
        token, poll token, database role or catalog): a block set on another replica
        meanwhile would not be seen."""
        why = self._staleness.refusal() if self._staleness is not None else None
        if why is not None:
            raise OAuthError(503, "temporarily_unavailable", why, reason=STALE_REASON)


def shared_state_unavailable(exc: StoreUnavailable) -> OAuthError:
    """The refusal of a write the shared database did not take (its message names the
    database, never a password)."""
    log.error("shared state unavailable", extra={"fields": {"error": str(exc)}})
    return OAuthError(
        503,
        "temporarily_unavailable",
        "shared state unavailable; try again later",
        reason="shared_state_unavailable",
    )


def basic_credentials(header: str | None) -> tuple[str, str] | None:
    """(client id, secret) of an HTTP Basic ``Authorization`` header; None without one,
    :class:`OAuthError` when it is malformed."""
    header = header or ""
    if header[:6].lower() != "basic ":
        return None
    try:
        decoded = base64.b64decode(header[6:].strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        raise OAuthError(
            401, "invalid_client", "malformed basic credentials", reason="bad_basic_auth"
        ) from None
    client_id, sep, secret = decoded.partition(":")
    if not sep:
        raise OAuthError(
            401, "invalid_client", "malformed basic credentials", reason="bad_basic_auth"
        )
    # RFC 6749 §2.3.1: both parts are form-urlencoded before base64.
    return unquote_plus(client_id), unquote_plus(secret)


def is_token_exchange(body: dict[str, str]) -> bool:
    """Whether the request proves itself with a subject token (RFC 8693) rather than a
    client secret or assertion: what decides both the proof checked and the brake."""
    grant = body.get("grant_type")
    return grant == TOKEN_EXCHANGE or (grant is None and "subject_token" in body)


def named_client(
    config: LockgateConfig, body: dict[str, str], authorization: str | None
) -> str | None:
    """The configured deployment a request names as its client (Basic user or
    ``client_id``) for the failed-authentication brake, or None. Only a configured name: an
    unknown "client id" may be a secret pasted in the wrong field, which must not become a
    row or a log line. Only a name whose proof could be guessed here: a token exchange
    proves itself with a signature, and a deployment with no proof has nothing to guess,
    so naming either says nothing about who asks (and must not cool it down)."""
    if is_token_exchange(body):
        return None
    try:
        basic = basic_credentials(authorization)
    except OAuthError:
        basic = None
    name = basic[0] if basic is not None else body.get("client_id")
    deployment = config.deployment(name) if name else None
    if deployment is not None and deployment.proof is not None:
        return deployment.name
    return None
