"""The Lockgate process: token service, engines, metrics and health in one event loop.

``Gateway(config)`` wires the parts together; each part stays ignorant of the others:

- identity: KeyStore, RevocationStore, TokenIssuer, TokenVerifier, TokenService
- policy:   PolicyStore (reloads on change, keeps the last good set)
- credentials: CredentialStore (encrypted) and CredentialBroker (what engines call)
- audit:    AuditLog (a writer thread) or RemoteAuditLog (a writer process), fail closed
- gateway:  HttpEngine on the ``http`` listener and resource listeners, the forward proxy,
  CqlEngine on the ``cql`` listener
- control:  ControlPlane, the control listener's routes (:mod:`lockgate.control`), with the
  mint policy and the token audit sink
- dynamic roles: one DynamicRoles per ``dynamic_roles: true`` cql resource behind
  ``POST /v1/db-role`` (:mod:`lockgate.gateway.cql.dynamic_roles`), swept in the
  background, dropped on revocation

The durable parts alone (keys, revocations, credentials, audit, policy files) are
:class:`lockgate.state.State`, which the CLI opens without serving. ``lockgate serve
--workers N`` runs N Gateways under a supervisor (:mod:`lockgate.supervisor`).

Background loops pick up what the CLI changes in another process: revocations and mint
blocks five times a second (so they hold on every worker within well under a second),
rotated credentials and keys and policy files about once a second.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import ssl
from pathlib import Path
from typing import Any

from lockgate import _log, control
from lockgate.audit import AuditLog, RemoteAuditLog
from lockgate.config import ForwardProxyConfig, ListenerConfig, LockgateConfig
from lockgate.control import ControlPlane, MintPolicy, TokenAudit
from lockgate.credentials import CredentialBroker
from lockgate.gateway.cql import CqlEngine
from lockgate.gateway.cql.dynamic_roles import DbRoles, upstream_password
from lockgate.gateway.http import HttpEngine
from lockgate.gateway.http.forward_proxy import ForwardProxy
from lockgate.identity import TokenIssuer, TokenVerifier
from lockgate.identity.revocation import REFRESH_INTERVAL as REVOCATION_REFRESH
from lockgate.identity.upstream_assertion import UpstreamAssertionSigner
from lockgate.readiness import Readiness
from lockgate.state import State
from lockgate.supervisor import event_loop_runner, supervise

log = _log.get("server")


def server_ssl_context(listener: ListenerConfig | ForwardProxyConfig) -> ssl.SSLContext | None:
    if listener.tls is None:
        return None
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(str(listener.tls.cert), str(listener.tls.key))
    return ctx


def _limits(listener: ListenerConfig) -> dict[str, Any]:
    """A listener's connection limits, as the engines' ``start`` takes them."""
    return {
        "handshake_timeout": listener.handshake_timeout,
        "max_connections": listener.max_connections,
    }


class Gateway:
    """One serving process: :meth:`start` opens the listeners this worker runs (all of
    them for worker 0, the http listeners only for the others), :meth:`stop` closes them
    and drains the audit trail."""

    def __init__(
        self,
        config: LockgateConfig,
        *,
        worker: int = 0,
        audit_socket: Path | None = None,
        reuse_port: bool = False,
        http_port: int | None = None,
    ) -> None:
        self.config = config
        self.worker = worker
        self.primary = worker == 0  # runs the control plane (token service, /metrics ...)
        self.reuse_port = reuse_port
        self._http_listen_port = http_port  # the supervisor's pick when the config says 0
        self.state = State(config)
        # A shared writer process when workers share one chain or the config asks for it;
        # otherwise a writer thread, which measured faster on 2 cores (benchmarks/http_proxy).
        self.audit: AuditLog | RemoteAuditLog = (
            self.state.remote_audit_log(audit_socket)
            if audit_socket is not None or config.audit.writer == "process"
            else self.state.audit_log()
        )
        self.policy = self.state.policy_store()
        self.readiness = Readiness(
            config,
            audit=self.audit,
            policy=self.policy,
            credentials=self.state.credentials,
            keys=self.state.keys,
        )
        self.issuer = TokenIssuer(self.state.keys, config.issuer_url)
        self.verifier = TokenVerifier(
            self.state.keys, self.state.revocations, config.issuer_url, config.tokens.leeway
        )
        # every door that mints asks it (the token service, poll tokens, database roles)
        self.mint_policy = MintPolicy(config, self.policy, self.state.revocations)
        self.token_audit = TokenAudit(self.audit)
        self.sign_assertion = UpstreamAssertionSigner(self.state.keys, config.issuer_url)
        self.broker: CredentialBroker | None = None
        self.engine: HttpEngine | None = None
        self.cql_engine: CqlEngine | None = None
        self.control: ControlPlane | None = None  # worker 0 only
        self.db_roles: DbRoles | None = None
        self.db_role_sweep_interval = 15.0  # seconds; tests shorten it before start()
        self._tasks: list[asyncio.Task[Any]] = []
        self.control_port = 0
        self.http_port = 0
        self.cql_port = 0
        self.mounted_ports: dict[str, int] = {}  # http resources served on their own port
        self.forward_proxy: ForwardProxy | None = None
        self.forward_proxy_port = 0
        self._ready = False

    # -- control plane (routes in lockgate.control) -----------------------------------------
    def _start_control_plane(self) -> ControlPlane:
        assert self.broker is not None
        self.db_roles = DbRoles(
            self.config.resources,
            upstream_password(self.broker),
            self.policy,
            self.state.revocations,
            sweep_interval=self.db_role_sweep_interval,
        )
        return ControlPlane.build(
            self.config,
            keys=self.state.keys,
            revocations=self.state.revocations,
            issuer=self.issuer,
            verifier=self.verifier,
            mint_policy=self.mint_policy,
            audit=self.token_audit,
            master_key=self.state.master_key,
            ports=self,
            readiness=lambda: self.readiness.report(self.serving),
            db_roles=self.db_roles,
        )

    def _catalog_entries(self, deployment: str) -> list[dict[str, Any]]:
        assert self.control is not None
        return control.catalog_entries(self.control.ctx, deployment)

    def _connection_template(self, resource: Any) -> dict[str, Any] | None:
        assert self.control is not None
        return control.connection_template(self.control.ctx, resource)

    @property
    def serving(self) -> bool:
        """Listeners are up (readiness' ``started`` check)."""
        return self._ready

    # -- lifecycle ------------------------------------------------------------------------
    async def start(self) -> None:
        self.broker = CredentialBroker(self.config, self.state.credentials, None)
        self.policy.reload_if_changed()
        if self.policy.last_error:
            log.error("policy not loaded", extra={"fields": {"error": self.policy.last_error}})
        c = self.config.listeners.control
        if self.primary:
            self.control = self._start_control_plane()
            self.control_port = await self.control.start(c, server_ssl_context(c))
        h = self.config.listeners.http
        self.engine = HttpEngine(
            [r for r in self.config.resources if r.kind == "http"],
            self.verifier,
            self.policy,
            self.broker,
            self.audit,
            self.sign_assertion,
            data_dir=self.config.data_dir,
        )
        port = h.port if self._http_listen_port is None else self._http_listen_port
        server = await self.engine.start(
            h.host, port, ssl=server_ssl_context(h), reuse_port=self.reuse_port, **_limits(h)
        )
        self.http_port = server.sockets[0].getsockname()[1]
        for r in self.config.resources:
            if r.kind == "http" and r.listen is not None:
                ml = await self.engine.start_mounted(
                    r.name, r.listen.host, r.listen.port, ssl=server_ssl_context(r.listen),
                    reuse_port=self.reuse_port, **_limits(r.listen),
                )  # fmt: skip
                self.mounted_ports[r.name] = ml.sockets[0].getsockname()[1]
        fp = self.config.listeners.forward_proxy
        if fp is not None:  # CONNECT for clients with a fixed upstream URL (ARM)
            self.forward_proxy = ForwardProxy.from_config(self.engine, self.config)
            fsrv = await self.forward_proxy.start(
                fp.host, fp.port, ssl=server_ssl_context(fp), reuse_port=self.reuse_port
            )
            self.forward_proxy_port = fsrv.sockets[0].getsockname()[1]
        cql = self.config.listeners.cql
        if cql is not None and self.primary:  # with --workers, CQL runs in worker 0 only
            self.cql_engine = CqlEngine(
                [r for r in self.config.resources if r.kind == "cql"],
                self.verifier,
                self.policy,
                self.broker,
                self.audit,
            )
            await self.cql_engine.start(
                cql.host, cql.port, ssl=server_ssl_context(cql), **_limits(cql)
            )
            self.cql_port = self.cql_engine.port
        self._tasks = [
            asyncio.create_task(self._every(1.0, self._refresh), name="lockgate-refresh"),
            asyncio.create_task(
                self._every(REVOCATION_REFRESH, self._refresh_revocations),
                name="lockgate-revocations",
            ),
        ]
        self._ready = True
        log.info(
            "lockgate serving",
            extra={
                "fields": {
                    "control": f"{c.scheme}://{c.host}:{self.control_port}",
                    "http": f"{h.scheme}://{h.host}:{self.http_port}",
                    "resources": [r.name for r in self.config.resources],
                    "policy_files": [str(p) for p in self.config.policy_files()],
                }
            },
        )

    async def _refresh_revocations(self) -> None:
        # One PRAGMA when nothing changed: revocations by the CLI or another worker are
        # enforced here within REVOCATION_REFRESH seconds.
        changed = self.state.revocations.refresh()
        if self.db_roles is not None:  # their roles go with the newly revoked tokens
            self.db_roles.after_refresh(changed)

    async def _refresh(self) -> None:
        self.state.keys.maybe_reload()
        self.policy.reload_if_changed()
        if self.broker is not None:
            self.broker.refresh()

    async def _every(self, interval: float, fn: Any) -> None:
        while True:
            await asyncio.sleep(interval)
            try:
                await fn()
            except Exception:  # a background refresh must never stop the loop
                log.exception("background refresh failed")

    async def stop(self) -> None:
        self._ready = False
        for t in self._tasks:
            t.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await t
        if self.forward_proxy is not None:
            await self.forward_proxy.close()
        if self.engine is not None:
            await self.engine.close()
        if self.cql_engine is not None:
            await self.cql_engine.close()
        if self.control is not None:  # before the broker: dropping roles needs the password
            await self.control.close()
        if self.broker is not None:
            await self.broker.close()
        self.audit.flush(2.0)
        self.audit.close()

    async def serve_forever(self) -> None:
        """Serve until SIGINT or SIGTERM, then stop cleanly (drains the audit trail)."""
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            # Not available off the main thread or on some platforms: Ctrl-C still works.
            with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
                loop.add_signal_handler(sig, stop.set)
        await self.start()
        try:
            await stop.wait()
            log.info("lockgate stopping")
        finally:
            await self.stop()


def run(config: LockgateConfig, workers: int = 1) -> None:
    """Serve until interrupted, on uvloop when it is installed; ``workers`` > 1 supervises
    that many worker processes sharing the http port and one audit writer process."""
    _log.setup(config.log_level)
    if workers > 1:
        supervise(config, workers)
        return
    with contextlib.suppress(KeyboardInterrupt):
        event_loop_runner()(Gateway(config).serve_forever())


__all__ = ["Gateway", "State", "run", "server_ssl_context"]
