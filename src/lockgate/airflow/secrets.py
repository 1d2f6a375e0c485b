"""``LockgateSecretsBackend``: per-task Connections that point at the gateway.

Configure it in the worker-side slot so it runs inside the task process. The worker
proves itself with its workload identity, holding no secret (here a Kubernetes projected
service-account token whose audience is Lockgate's; the gateway trusts the cluster's
issuer through an ``oidc_issuers`` entry)::

    [workers]
    secrets_backend = lockgate.airflow.secrets.LockgateSecretsBackend
    secrets_backend_kwargs = {"url": "https://lockgate.internal:8470", "deployment": "prod",
                              "identity_token_file": "/var/run/secrets/lockgate/token",
                              "ca_file": "/etc/lockgate/ca.pem"}

The proof is exactly one of (see :mod:`lockgate.airflow.workload_identity`):

- ``identity_token_file``: a token file read again at every mint (projected
  service-account token, a SPIFFE helper's JWT-SVID file, any OIDC token file);
- ``identity_token_env``: the name of an environment variable holding such a file's path
  (``"AZURE_FEDERATED_TOKEN_FILE"`` under Azure workload identity);
- ``spiffe_socket`` + ``spiffe_audience``: a JWT-SVID from the SPIFFE Workload API (a
  path or ``unix://`` URI; ``"env"`` for ``$SPIFFE_ENDPOINT_SOCKET``);
- ``client_secret_file`` or ``client_secret_env``: the deployment's client secret, for
  workers with no workload identity (a laptop, a VM outside any cloud identity).

Rules:

- A conn_id that is not in the gateway's catalog → ``None``, so Airflow's other backends
  still answer.
- No task context (the API-server copy of the chain, callbacks) → ``None`` and an info log
  line saying why: a token is only ever minted for a task try. Exceptions, for a deferred
  operator's trigger (docs/airflow.md, "Deferrable operators"):

  * a conn_id the catalog marks ``poll`` (Databricks, ARM) gets a *poll token* from
    ``/v1/poll-token``, so the trigger can watch its run from the triggerer. A poll token
    may only read runs this deployment's DAGs started through Lockgate (ARM: and cancel
    them); when the triggerer's log context names the trigger's DAG run, the token is
    narrowed to that DAG run. ARM's goes into the environment the Azure SDK builds its
    credential from, which every trigger of the process shares: it is the deployment's;
    the trigger's own connection then carries its DAG run as ``managed_identity_client_id``
    (``lockgate-run:<dag_id>/<run_id>``, the catalog's ``trigger_extra``), which the
    provider's async hook hands its managed identity credential and the identity endpoint
    answers with a poll token narrowed to that DAG run.
  * a conn_id marked ``"trigger": "task"`` (plain http: ``HttpTrigger`` sends the task's
    whole request) gets, in an asynchronous lookup, a token of the deferred task try the
    triggerer names in its log context (or, under ``dag.test()``, which runs the trigger
    inline and unnamed, of the try of this process that deferred on it): the task's own
    identity and policy, revoked when that try ends.
- Outside a task, a catalog entry whose connection holds no secret (ARM: subscription,
  resource group, factory) is answered as it is, without the environment a task gets:
  Airflow builds operator extra links ("Monitor Pipeline Run") after the task body, out of
  its context. Never a token, nor the identity endpoint, outside a task but as above.
- A deferral that cannot work fails before anything starts upstream: a task running with
  ``deferrable=True`` asking for a conn_id that serves no trigger is refused (at ERROR,
  with the reason) at its first lookup, before the operator starts its pipeline; a trigger
  (an asynchronous lookup outside a task) the backend cannot serve is refused the same way,
  instead of Airflow's bare "conn_id isn't defined".
- The gateway refuses (policy, delegation, attestation) → ``AirflowSecretsBackendAccessDenied``
  with the gateway's reason, so Airflow does not fall through to another backend.
- A conn_id the catalog marks ``cosmos_key`` (Cosmos DB) also gets the task's derived
  account key from ``/v1/cosmos-key`` (the deployment authenticates and shows the token):
  the password the stock hook signs with, valid only together with that token.
- Tokens are cached per (task try, conn_id) and reused until a minute before expiry; hooks
  such as ``HttpHook`` look the connection up on every request.
- The requested lifetime covers the task's ``execution_timeout`` (policy may cap it).
- A conn_id the catalog marks ``"mode": "dynamic_role"`` (a Cassandra or PostgreSQL resource
  with ``dynamic_roles: true``) gets a per-task role from ``/v1/db-role`` instead of a token:
  the Connection points straight at the database (the cluster's contact points; the
  PostgreSQL server's host, port and database) with the role's username and password. The
  role is cached like a token and dropped when the task try ends. A PostgreSQL server
  verified against its own CA: the catalog carries that certificate, written once per
  process to a private temporary directory for libpq's ``sslrootcert``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

from lockgate.airflow import task_env
from lockgate.airflow._client import (
    Coordinates,
    DbRole,
    GatewayDenied,
    GatewayUnavailable,
    MintedToken,
    TokenServiceClient,
)
from lockgate.airflow.connections import (
    CA_PLACEHOLDER,
    COSMOS_KEY_PLACEHOLDER,
    ROLE_PASSWORD_PLACEHOLDER,
    ROLE_USER_PLACEHOLDER,
    TOKEN_PLACEHOLDER,
    UPSTREAM_CA_PLACEHOLDER,
    holds_no_secret,
    quiet_stock_cassandra_hook,
    substitute,
    upstream_ca_file,
)
from lockgate.airflow.deferral import (
    ASYNC_LOOKUP,
    defers,
    in_trigger,
    serves_triggers,
    task_defers,
    trigger_scope,
    trigger_task_try,
    unpollable_deferral,
    unserved_trigger,
    with_trigger_extra,
)

# Re-exported: the listener (plugin.py) and tests reach these through this module.
from lockgate.airflow.task_try import TaskTry as TaskTry
from lockgate.airflow.task_try import coordinates_of as coordinates_of
from lockgate.airflow.task_try import current_ttl
from lockgate.airflow.task_try import task_coordinates as task_coordinates
from lockgate.airflow.trace_context import task_traceparent

try:  # Airflow 3 task SDK
    from airflow.sdk.bases.secrets_backend import BaseSecretsBackend
    from airflow.sdk.exceptions import AirflowSecretsBackendAccessDenied
except ImportError:  # pragma: no cover - lets the module import where Airflow is absent
    BaseSecretsBackend = object  # type: ignore[misc,assignment]

    class AirflowSecretsBackendAccessDenied(PermissionError):  # type: ignore[no-redef]
        pass


log = logging.getLogger(__name__)

DYNAMIC_ROLE = "dynamic_role"
RENEW_BEFORE = 60.0

# What the backend caches until a minute before it expires.
_Expiring = TypeVar("_Expiring", MintedToken, DbRole)

# Backends that minted tokens in this process; the listener revokes through them.
_ACTIVE: list[LockgateSecretsBackend] = []


def _denied(what: str, conn_id: str, exc: GatewayDenied) -> AirflowSecretsBackendAccessDenied:
    body = exc.body
    reason = body.get("reason") or body.get("error_description") or body
    return AirflowSecretsBackendAccessDenied(
        f"Lockgate denied {what} for conn_id {conn_id!r}: {reason}"
    )


class LockgateSecretsBackend(BaseSecretsBackend):
    def __init__(
        self,
        url: str,
        deployment: str,
        client_secret_file: str | None = None,
        client_secret_env: str | None = None,
        ca_file: str | None = None,
        timeout: float = 10.0,
        catalog_ttl: float = 60.0,
        identity_token_file: str | None = None,
        identity_token_env: str | None = None,
        spiffe_socket: str | None = None,
        spiffe_audience: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.client = TokenServiceClient(
            url,
            deployment,
            client_secret_file=client_secret_file,
            client_secret_env=client_secret_env,
            identity_token_file=identity_token_file,
            identity_token_env=identity_token_env,
            spiffe_socket=spiffe_socket,
            spiffe_audience=spiffe_audience,
            ca_file=ca_file,
            timeout=timeout,
        )
        self.catalog_ttl = catalog_ttl
        self.ca_file = ca_file
        self._catalog: dict[str, dict[str, Any]] = {}
        self._catalog_at = 0.0
        self._tokens: dict[tuple[object, ...], MintedToken] = {}
        self._cosmos_keys: dict[str, str] = {}  # jti -> the task's derived Cosmos key
        self._roles: dict[tuple[object, ...], DbRole] = {}  # (conn_id, *coords) -> role
        self._deferring: dict[str, Coordinates] = {}  # conn_id -> the try deferring on it
        self._lock = threading.Lock()
        _ACTIVE.append(self)

    # -- catalog ---------------------------------------------------------------------------
    def _template(self, conn_id: str) -> dict[str, Any] | None:
        now = time.monotonic()
        if now - self._catalog_at > self.catalog_ttl or (
            conn_id not in self._catalog and now - self._catalog_at > 1.0
        ):
            try:
                self._catalog = self.client.catalog()
                self._catalog_at = now
            except (GatewayDenied, GatewayUnavailable) as exc:
                log.warning(
                    "Lockgate catalog unavailable, conn_id %s not resolved: %s", conn_id, exc
                )
                if not self._catalog:
                    return None
        return self._catalog.get(conn_id)

    # -- BaseSecretsBackend ----------------------------------------------------------------
    def get_conn_value(self, conn_id: str, team_name: str | None = None) -> str | None:
        template = self._template(conn_id)
        if template is None:
            return None
        coords = task_coordinates()
        if coords is None:
            return self._outside_task(conn_id, template)
        refusal = unpollable_deferral(conn_id, template)
        if refusal is not None:
            log.error(refusal)
            raise AirflowSecretsBackendAccessDenied(refusal)
        if serves_triggers(template) and task_defers():
            with self._lock:  # dag.test(): the trigger runs next, in this very process
                self._deferring[conn_id] = coords
        return self._task_connection(conn_id, template, coords)

    def _task_connection(self, conn_id: str, template: dict[str, Any], coords: Coordinates) -> str:
        """The connection of ``conn_id`` for task try ``coords`` (its token, role or key)."""
        if template.get("mode") == DYNAMIC_ROLE:
            role = self._role_for(conn_id, coords)
            values = {
                ROLE_USER_PLACEHOLDER: role.username,
                ROLE_PASSWORD_PLACEHOLDER: role.password,
                # no CA sent: libpq then finds none and refuses (fails closed)
                UPSTREAM_CA_PLACEHOLDER: upstream_ca_file(template.get("upstream_ca") or ""),
            }
            return json.dumps(substitute(template["connection"], values))
        token = self._token_for(conn_id, coords)
        values = self._values(token)
        if template["connection"].get("conn_type") == "cassandra":
            quiet_stock_cassandra_hook()
        if template.get("env"):  # e.g. ARM: identity endpoint, forward proxy (task_env)
            task_env.export(substitute(template["env"], values))
        if template.get("cosmos_key"):  # Cosmos DB: the key the task signs with
            values[COSMOS_KEY_PLACEHOLDER] = self._cosmos_key(conn_id, token)
        return json.dumps(substitute(template["connection"], values))

    async def aget_connection(self, conn_id: str, team_name: str | None = None) -> Any:
        """The asynchronous lookup (triggers): the synchronous one in a worker thread, marked
        so that a conn_id without poll tokens is refused with the reason."""
        token = ASYNC_LOOKUP.set(True)
        try:  # to_thread runs it in a copy of this context, so the mark is seen there
            return await asyncio.to_thread(self.get_connection, conn_id)
        finally:
            ASYNC_LOOKUP.reset(token)

    def _outside_task(self, conn_id: str, template: dict[str, Any]) -> str | None:
        """What a lookup outside any task try gets: a poll entry its poll token, a trigger
        of a deferred task try on a ``"trigger": "task"`` entry that try's token."""
        # ARM's poll token goes into the process environment: only for a trigger, never
        # for the extra link Airflow builds after the task body (answered below, as it is).
        if template.get("poll") and (in_trigger() or not template.get("env")):
            return self._poll_connection(conn_id, template)
        deferred = self._deferred_try(conn_id) if serves_triggers(template) else None
        if deferred is not None:
            log.info(
                "Lockgate: conn_id %s asked for by the trigger of deferred task try %s",
                conn_id, deferred,
            )  # fmt: skip
            return self._task_connection(conn_id, template, deferred)
        if ASYNC_LOOKUP.get():  # a trigger: say why at ERROR rather than "isn't defined"
            refusal = unserved_trigger(conn_id, template)
            log.error(refusal)
            raise AirflowSecretsBackendAccessDenied(refusal)
        if holds_no_secret(template["connection"]):
            # e.g. the ADF extra link, built after the task body: the connection's
            # subscription, resource group and factory, without the task's environment
            log.debug("Lockgate: conn_id %s answered outside a task (holds no secret)", conn_id)
            return json.dumps(template["connection"])
        log.info(
            "Lockgate: no running task context for conn_id %s (API server, callback or "
            "DAG parsing); no token minted",
            conn_id,
        )
        return None

    def get_variable(self, key: str, team_name: str | None = None) -> str | None:
        return None

    def _deferred_try(self, conn_id: str) -> Coordinates | None:
        """The deferred task try whose trigger asks for ``conn_id`` now: as the triggerer names
        it, else (``dag.test()`` runs the trigger inline, unnamed) the try of this process
        that deferred on ``conn_id``. Only a trigger's own (asynchronous) lookup qualifies."""
        named = trigger_task_try()
        if named is not None:
            return named
        if not ASYNC_LOOKUP.get():
            return None
        with self._lock:
            return self._deferring.get(conn_id)

    def _poll_connection(self, conn_id: str, template: dict[str, Any]) -> str:
        """A ``poll`` entry outside a task: the trigger's poll token in the connection, and
        (ARM) in the environment the Azure SDK builds its credential from."""
        if template.get("env"):
            # Process-wide: every trigger in this triggerer shares it, whatever its DAG run,
            # so the token is the deployment's (the profile still serves it only runs that
            # this deployment's tasks started through Lockgate).
            token = self._poll_token(conn_id, scope={})
            task_env.export(substitute(template["env"], self._values(token)))
            connection = self._narrowed_by_client_id(conn_id, template)
        else:
            token = self._poll_token(conn_id)
            connection = template["connection"]
        return json.dumps(substitute(connection, self._values(token)))

    def _narrowed_by_client_id(self, conn_id: str, template: dict[str, Any]) -> dict[str, Any]:
        """ARM: the connection carrying the trigger's DAG run (as the triggerer names it,
        else under ``dag.test()`` the try that deferred on ``conn_id``) for the identity
        endpoint."""
        deferred = self._deferred_try(conn_id)
        scope = trigger_scope() or (
            {"dag_id": str(deferred["dag_id"]), "run_id": str(deferred["run_id"])}
            if deferred
            else {}
        )
        return with_trigger_extra(template, scope)

    # -- tokens, roles and keys ----------------------------------------------------------
    def _values(self, token: MintedToken) -> dict[str, str]:
        return {TOKEN_PLACEHOLDER: token.token, CA_PLACEHOLDER: self.ca_file or ""}

    def _cached(
        self,
        cache: dict[tuple[object, ...], _Expiring],
        key: tuple[object, ...],
        fetch: Callable[[], _Expiring],
        renew_before: Callable[[_Expiring], float] = lambda _: RENEW_BEFORE,
    ) -> _Expiring:
        """``cache[key]`` while it is more than ``renew_before`` (a minute) from expiry, else
        ``fetch()``d anew."""
        with self._lock:
            cached = cache.get(key)
            if cached and cached.expires_at - renew_before(cached) > time.time():
                return cached
        fresh = fetch()
        with self._lock:
            cache[key] = fresh
        return fresh

    def _token_for(self, conn_id: str, coords: Coordinates) -> MintedToken:
        def mint() -> MintedToken:
            try:
                minted = self.client.mint(
                    conn_id=conn_id,
                    coords=coords,
                    requested_ttl=current_ttl(),
                    traceparent=task_traceparent(coords),  # the gateway's spans join it
                )
            except GatewayDenied as exc:
                raise _denied(f"{coords['dag_id']}.{coords['task_id']}", conn_id, exc) from None
            log.info(
                "Lockgate token minted for conn_id %s as %s (jti %s, expires in %ds, trace %s)",
                conn_id, minted.principal, minted.jti, int(minted.expires_at - time.time()),
                (minted.traceparent or "")[3:35],
            )  # fmt: skip
            return minted

        return self._cached(self._tokens, (conn_id, *coords.values()), mint)

    def _poll_token(self, conn_id: str, scope: dict[str, str] | None = None) -> MintedToken:
        """A read-only poll token for ``conn_id``, outside any task (the triggerer), narrowed
        to ``scope`` (default: the trigger's DAG run when the triggerer names it)."""
        scope = trigger_scope() if scope is None else scope

        def mint() -> MintedToken:
            try:
                minted = self.client.poll_token(conn_id=conn_id, scope=scope)
            except GatewayDenied as exc:
                raise _denied("a poll token", conn_id, exc) from None
            log.info(
                "Lockgate poll token minted for conn_id %s as %s (jti %s)",
                conn_id, minted.principal, minted.jti,
            )  # fmt: skip
            return minted

        # A trigger keeps what it got for its whole life (the Azure SDK captures it in its
        # credential, Databricks' hook in its connection): hand out at least half a lifetime.
        return self._cached(
            self._tokens, ("@poll", conn_id, *scope.values()), mint,
            renew_before=lambda token: max(RENEW_BEFORE, token.lifetime / 2),
        )  # fmt: skip

    def _role_for(self, conn_id: str, coords: Coordinates) -> DbRole:
        """The task try's dynamic database role for ``conn_id`` (cached until near expiry)."""

        def issue() -> DbRole:
            try:
                role = self.client.db_role(
                    conn_id=conn_id, coords=coords, requested_ttl=current_ttl()
                )
            except GatewayDenied as exc:
                what = f"a database role for {coords['dag_id']}.{coords['task_id']}"
                raise _denied(what, conn_id, exc) from None
            log.info(
                "Lockgate database role %s issued for conn_id %s as %s (expires in %ds)",
                role.username, conn_id, role.principal, int(role.expires_at - time.time()),
            )  # fmt: skip
            return role

        return self._cached(self._roles, (conn_id, *coords.values()), issue)

    def _cosmos_key(self, conn_id: str, token: MintedToken) -> str:
        """The Cosmos key derived for ``token`` (the gateway derives it; cached per jti)."""
        with self._lock:
            cached = self._cosmos_keys.get(token.jti)
        if cached:
            return cached
        try:
            key = self.client.cosmos_key(token.token)
        except GatewayDenied as exc:
            raise _denied("the Cosmos key", conn_id, exc) from None
        with self._lock:
            if len(self._cosmos_keys) > 256:
                self._cosmos_keys.clear()
            self._cosmos_keys[token.jti] = key
        return key

    def end_task_try(self, coords: Coordinates, *, deferred: bool = False) -> None:
        """Forget and revoke every token and database role issued for this task try;
        ``deferred``: its trigger may have had tokens minted elsewhere (the triggerer), so
        the try's tokens are revoked even when this process minted none."""
        with self._lock:
            keys = [k for k in self._tokens if tuple(k[1:]) == tuple(coords.values())]
            for k in keys:
                del self._tokens[k]
            roles = [k for k in self._roles if tuple(k[1:]) == tuple(coords.values())]
            for k in roles:
                del self._roles[k]
            for conn_id in [c for c, at in self._deferring.items() if at == coords]:
                del self._deferring[conn_id]
        if not keys and not roles and not deferred:
            return
        try:
            self.client.revoke_task_try(coords)
            log.info("Lockgate tokens of %s revoked at task end", coords)
        except (GatewayDenied, GatewayUnavailable) as exc:
            log.warning("Lockgate could not revoke the tokens of %s: %s", coords, exc)


def end_task_try(ti: TaskTry) -> None:
    coords = coordinates_of(ti)
    deferred = defers(getattr(ti, "task", None))
    for backend in list(_ACTIVE):
        backend.end_task_try(coords, deferred=deferred)
