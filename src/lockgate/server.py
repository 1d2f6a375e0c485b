"""The Lockgate process: token service, engines, metrics and health in one event loop.

``Gateway(config)`` wires the parts together; each part stays ignorant of the others:

- identity: KeyStore, RevocationStore, TokenIssuer, TokenVerifier, TokenService
- policy:   PolicyStore (reloads on change, keeps the last good set)
- credentials: CredentialStore (encrypted) and CredentialBroker (what engines call)
- audit:    AuditLog (a writer thread) or RemoteAuditLog (a writer process), fail closed
- gateway:  one engine per resource kind (:mod:`lockgate.gateway.registry`), all sharing
  one :class:`~lockgate.gateway.engine.Collaborators`; each opens its own listeners
  (``listeners.<kind>``). :meth:`Gateway.update_resources` hands engines a new catalog
  without a restart
- control:  ControlPlane, the control listener's routes (:mod:`lockgate.control`), with the
  mint policy and the token audit sink
- dynamic roles: one role set per ``dynamic_roles: true`` cql or postgres resource behind
  ``POST /v1/db-role`` (:mod:`lockgate.gateway.dynamic_roles`), swept in the background,
  dropped on revocation

The durable parts alone (keys, revocations, credentials, audit, policy files) are
:class:`lockgate.state.State`, which the CLI opens without serving. ``lockgate serve
--workers N`` runs N Gateways under a supervisor (:mod:`lockgate.supervisor`).

Background loops pick up what the CLI changes in another process: revocations and mint
blocks five times a second (so they hold on every worker within well under a second),
rotated credentials and keys and policy files about once a second.

With shared state (``state: {postgresql: ...}``) the stores follow the database's change
versions (LISTEN/NOTIFY plus a catch-up poll, :meth:`State.start_watching`), and every
reload runs in a worker thread, never on the event loop: revocations, signing keys and
credentials are checked five times a second, so a change made on another replica holds
here within a second (newly revoked tokens lose their dynamic database roles at once, and
their open CQL/PostgreSQL sessions at their next statement). How long memory may serve
while the database is out of reach: :mod:`lockgate.identity.staleness`.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import signal
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from lockgate import _log, control, metrics, tracing
from lockgate.alerts import Alerts
from lockgate.audit import AuditLog, AuditRecord, RemoteAuditLog
from lockgate.config import (
    AnyResource,
    Listeners,
    LockgateConfig,
    load_config,
)
from lockgate.console.links import issue_link
from lockgate.console.sessions import DOMAIN as CONSOLE_STORE
from lockgate.console.views_live import LiveSessionsView
from lockgate.console.web import ConsoleContext
from lockgate.control import ControlPlane, MintPolicy, TokenAudit
from lockgate.credentials import CredentialBroker
from lockgate.errors import ConfigError
from lockgate.gateway import registry
from lockgate.gateway.dynamic_roles import DbRoles, upstream_password
from lockgate.gateway.engine import Collaborators, Engine, end_revoked_sessions
from lockgate.gateway.listeners import server_ssl_context
from lockgate.gateway.live_sessions import DOMAIN as LIVE_SESSIONS
from lockgate.gateway.live_sessions import NoLiveSessions, SessionRegistry
from lockgate.gateway.role_leases import DEFAULT_GRACE, RoleLeases
from lockgate.gateway.role_leases import DOMAIN as ROLE_LEASES
from lockgate.identity import TokenIssuer, TokenVerifier
from lockgate.identity.once import DOMAIN as ASSERTION_LEDGER
from lockgate.identity.once import OnceLedger
from lockgate.identity.revocation import REFRESH_INTERVAL as REVOCATION_REFRESH
from lockgate.identity.staleness import StalenessBound
from lockgate.identity.upstream_assertion import UpstreamAssertionSigner
from lockgate.quotas.gate import QuotaService
from lockgate.readiness import Readiness
from lockgate.state import State
from lockgate.supervisor import event_loop_runner, supervise

log = _log.get("server")


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
        metrics.configure(config.metrics)
        tracing.configure(config.tracing, service_instance=f"worker-{worker}")
        # quotas: budgets shared by every worker and replica on the same state
        self.quotas = QuotaService(config, self.policy, self.state.database)
        # alerts follow the whole trail: one process (the control plane's) sends them
        self.alerts = Alerts(config, self.state, audit=self.audit) if self.primary else None
        # None with SQLite state; else how long decisions may rest on memory alone
        self.staleness = StalenessBound.for_config(config, self.state.revocations.database)
        self.readiness = Readiness(
            config,
            audit=self.audit,
            policy=self.policy,
            credentials=self.state.credentials,
            keys=self.state.keys,
            staleness=self.staleness,
            shipping_lag=self.state.audit_reader().shipping_lag if self.state.shared else None,
        )
        # Lockgate tokens and caller assertions: EdDSA unless signing.audiences maps the
        # resource (or assertion audience) to RS256/ES256.
        self.issuer = TokenIssuer(self.state.keys, config.issuer_url, signing=config.signing)
        self.verifier = TokenVerifier(
            self.state.keys, self.state.revocations, config.issuer_url, config.tokens.leeway,
            staleness=self.staleness,
        )  # fmt: skip
        # every door that mints asks it (the token service, poll tokens, database roles)
        self.mint_policy = MintPolicy(config, self.policy, self.state.revocations)
        self.token_audit = TokenAudit(self.audit)
        self.sign_assertion = UpstreamAssertionSigner(
            self.state.keys, config.issuer_url, signing=config.signing
        )
        self.broker: CredentialBroker | None = None
        self.engines: dict[str, Engine] = {}  # resource kind -> its engine, once started
        self.control: ControlPlane | None = None  # worker 0 only
        self.console: ConsoleContext | None = None  # worker 0 only, when console.enabled
        # `lockgate serve` sets it: a one-time admin link on the terminal at start (gateways
        # embedded in other programs and tests make their own with issue_link)
        self.offer_console_link = False
        # CQL and PostgreSQL sessions open now, shared by every worker and replica (the
        # console's live page reads them)
        self.live_sessions: SessionRegistry | None = None
        self.db_roles: DbRoles | None = None
        self.db_role_sweep_interval = 15.0  # seconds; tests shorten it before start()
        self._tasks: list[asyncio.Task[Any]] = []
        self.control_port = 0
        self._ready = False

    # -- control plane (routes in lockgate.control) -----------------------------------------
    def _start_control_plane(self) -> ControlPlane:
        assert self.broker is not None
        pg = self.config.state.postgresql
        self.db_roles = DbRoles(
            self.config.resources,
            upstream_password(self.broker),
            self.policy,
            self.state.revocations,
            sweep_interval=self.db_role_sweep_interval,
            # a role outlives a crashed process only until a sweep (this or another replica)
            leases=RoleLeases(
                self.state.database(ROLE_LEASES),
                self.state.replica_id,
                grace=pg.lease_grace if pg is not None else DEFAULT_GRACE,
            ),
            # past it the roles go: a login this replica can no longer revoke in time
            staleness=self.staleness,
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
            assertion_ledger=OnceLedger(self.state.database(ASSERTION_LEDGER)),
            console=self._console_context(),
        )

    def _console_context(self) -> ConsoleContext | None:
        if not self.config.console.enabled:
            return None
        live = self.live_sessions
        self.console = ConsoleContext(
            config=self.config,
            audit_reader=self.state.audit_reader,
            audit=self.audit,
            policy=self.policy,
            revocations=self.state.revocations,
            # the broker's own store: the credentials page shows its vault fetch status
            credentials=self.state.credentials,
            database=self.state.database,
            live=LiveSessionsView(live) if live is not None else None,
        )
        return self.console

    async def _offer_console_link(self, control_url: str) -> None:
        """The embedded default's way in: with no OIDC sign-in configured, a one-time admin
        link on the terminal (never in the logs or the audit trail: it is a credential)."""
        console = self.config.console
        if (
            not self.offer_console_link
            or self.console is None
            or console.oidc is not None
            or not console.print_link
        ):
            return
        link = await asyncio.to_thread(
            issue_link, self.config, self.state.database(CONSOLE_STORE), base_url=control_url
        )
        self.audit.emit(
            AuditRecord(
                event="console_link_created", object=link.subject, decision="allow",
                reason="printed by lockgate serve", detail={"ttl": link.ttl},
            )
        )  # fmt: skip
        print(
            f"lockgate: console: sign in as admin with this one-time link (valid "
            f"{int(link.ttl // 60)} min; `lockgate console link` makes another):\n  {link.url}",
            file=sys.stderr,
            flush=True,
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

    # -- engines --------------------------------------------------------------------------
    async def _start_engines(self) -> None:
        """One engine per kind whose listener is configured, by the registry alone; with
        ``--workers``, an engine that cannot share its port runs in worker 0 only."""
        assert self.broker is not None
        shared = Collaborators(
            self.verifier, self.policy, self.broker, self.audit, self.sign_assertion,
            data_dir=self.config.data_dir, database_for=self.state.database,
            master_key=self.state.master_key, quotas=self.quotas.gate,
            live=self.live_sessions or NoLiveSessions(),
        )  # fmt: skip
        listeners = self._listeners()
        for kind in registry.kinds():
            if getattr(listeners, kind, None) is None:  # e.g. no cql section: no CQL
                continue
            cls = registry.engine_class(kind)
            if not (self.primary or cls.every_worker):
                continue
            engine = self.engines[kind] = cls(self.config.resources, shared)
            await engine.listen(listeners, reuse_port=self.reuse_port)

    def _listeners(self) -> Listeners:
        """The configured listeners, with the http port the supervisor picked for all workers
        when the config says 0."""
        listeners = self.config.listeners
        if self._http_listen_port is None:
            return listeners
        http = listeners.http.model_copy(update={"port": self._http_listen_port})
        return listeners.model_copy(update={"http": http})

    def update_resources(self, resources: Iterable[AnyResource]) -> None:
        """Serve a new catalog without a restart: every engine takes the resources of its
        kind (what happens to requests and sessions in flight: each engine's docstring),
        the control plane mints tokens for, and lists, exactly these, and policy files are
        checked against them."""
        catalog = list(resources)
        previous = list(self.config.resources)
        try:
            self._serve_catalog(catalog)
        except Exception:  # no part stays on a catalog the others do not serve
            self._serve_catalog(previous)
            raise
        self.config = self.config.model_copy(update={"resources": catalog})

    def _serve_catalog(self, catalog: list[AnyResource]) -> None:
        for engine in self.engines.values():
            engine.update_resources(catalog)
        if self.control is not None:
            self.control.update_resources(catalog)
        # Policy files are checked against the catalog served: one naming a resource just
        # added is accepted from now on, not only after a restart.
        self.policy.update_known_resources(r.name for r in catalog)

    def reload_config(self) -> bool:
        """Read the config file again (``SIGHUP``); a change confined to ``resources`` is
        served at once, any other change waits for a restart: it is logged and nothing is
        applied. False when nothing was applied. Every outcome is logged and audited
        (``config_reloaded``), so the trail says which catalog was served when."""
        source = self.config.source
        if source is None:
            log.warning("config reload: this gateway was not started from a file")
            return False
        try:
            new = load_config(source)
        except ConfigError as exc:  # the running catalog stays
            log.error("config reload failed", extra={"fields": {"error": str(exc)}})
            # the message may quote the file, secrets included: the trail gets the reason only
            self._audit_reload("invalid_file", {})
            return False
        old_rest = self.config.model_dump(exclude={"resources"})
        new_rest = new.model_dump(exclude={"resources"})
        changed = sorted(k for k in old_rest.keys() | new_rest.keys()
                         if old_rest.get(k) != new_rest.get(k))  # fmt: skip
        if changed:
            log.error(
                "config reload refused: these sections change only with a restart",
                extra={"fields": {"sections": changed}},
            )
            self._audit_reload("refused", {"sections": changed})
            return False
        if new.resources != self.config.resources:
            was = {r.name: r for r in self.config.resources}
            now = {r.name: r for r in new.resources}
            try:
                self.update_resources(new.resources)
            except Exception:  # e.g. a profile's store does not open: the old catalog stays
                log.exception("config reload failed while applied; the old catalog is served")
                self._audit_reload("failed", {})
                return False
            log.info(
                "config reloaded: new catalog served",
                extra={"fields": {"resources": [r.name for r in new.resources]}},
            )
            self._audit_reload(
                "applied",
                {
                    "added": sorted(now.keys() - was.keys()),
                    "removed": sorted(was.keys() - now.keys()),
                    "changed": sorted(n for n in now.keys() & was.keys() if now[n] != was[n]),
                },
            )
        return True

    def _audit_reload(self, reason: str, detail: dict[str, list[str]]) -> None:
        # emit, not write: a reload never blocks the loop, and a full queue is counted/logged
        self.audit.emit(
            AuditRecord(
                event="config_reloaded", reason=reason, detail={"worker": self.worker, **detail}
            )
        )

    @property
    def ports(self) -> dict[str, int]:
        """Every engine listener's bound port, by listener name (``http``, ``cql``,
        ``forward_proxy``, ``resource:<name>`` for a resource on its own port)."""
        return {name: port for e in self.engines.values() for name, port in e.ports.items()}

    @property
    def http_port(self) -> int:
        return self.ports.get("http", 0)

    @property
    def cql_port(self) -> int:
        return self.ports.get("cql", 0)

    @property
    def postgres_port(self) -> int:
        return self.ports.get("postgres", 0)

    @property
    def forward_proxy_port(self) -> int:
        return self.ports.get("forward_proxy", 0)

    @property
    def mounted_ports(self) -> dict[str, int]:
        """Resources served on their own port: name -> port."""
        prefix = "resource:"
        return {k[len(prefix) :]: p for k, p in self.ports.items() if k.startswith(prefix)}

    # -- lifecycle ------------------------------------------------------------------------
    async def start(self) -> None:
        self.state.start_watching()  # shared state: follow other replicas' changes
        # Federated credentials are assertions Lockgate signs (no upstream secret held).
        self.broker = CredentialBroker(
            self.config, self.state.credentials, None, assertion_signer=self.state.keys.sign
        )
        if self.state.shared:  # probes only read what the background checks found
            await asyncio.to_thread(self.readiness.refresh_stored)
        self.policy.reload_if_changed()
        if self.policy.last_error:
            log.error("policy not loaded", extra={"fields": {"error": self.policy.last_error}})
        c = self.config.listeners.control
        self.live_sessions = SessionRegistry(
            self.state.database(LIVE_SESSIONS), self.state.replica_id, self.worker
        )
        await asyncio.to_thread(self.live_sessions.start)  # drops this worker's old rows
        self.live_sessions.serve()
        if self.primary:
            self.control = self._start_control_plane()
            self.control_port = await self.control.start(c, server_ssl_context(c))
            control_url = f"{c.scheme}://{c.host}:{self.control_port}"
            if self.console is not None:
                self.console.base_url = control_url
                await self._offer_console_link(control_url)
        await self._start_engines()
        if self.alerts is not None:
            await self.alerts.start()
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
                    "engines": {kind: dict(e.ports) for kind, e in self.engines.items()},
                    "resources": [r.name for r in self.config.resources],
                    "policy_files": [str(p) for p in self.config.policy_files()],
                }
            },
        )

    async def _refresh_revocations(self) -> None:
        # One version read when nothing changed: revocations by the CLI, another worker or
        # another replica are enforced here within REVOCATION_REFRESH seconds.
        if self.state.shared:
            changed = await asyncio.to_thread(self._reload_shared)
        else:
            changed = self.state.revocations.refresh()
        if changed:  # idle CQL/PostgreSQL sessions of a newly revoked token end now
            try:
                end_revoked_sessions(self.engines.values(), self.state.revocations.is_revoked)
            except Exception:  # the roles and credentials below must still follow
                log.exception("sessions of revoked tokens not ended")
        if self.db_roles is not None:  # their roles go with the newly revoked tokens
            self.db_roles.after_refresh(changed)
        if self.state.shared and self.broker is not None:
            await self.broker.poll()  # a credential rotated on another replica (off the loop)

    def _reload_shared(self) -> bool:
        """Blocking (a worker thread): the revocations and signing keys of the shared
        database, each on its own so one failing holds back neither. True if the
        revocations reloaded."""
        changed = self.state.revocations.refresh()
        try:
            self.state.keys.reload()  # a version read when nothing moved
        except Exception:
            log.exception("signing keys not reloaded from the shared state")
        return changed

    async def _refresh(self) -> None:
        if self.state.shared:  # keys and credentials follow the revocations' faster tick
            await asyncio.to_thread(self.readiness.refresh_stored)
        else:
            self.state.keys.maybe_reload()
            if self.broker is not None:
                self.broker.refresh()
        self.policy.reload_if_changed()

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
        for engine in self.engines.values():
            await engine.close()
        if self.live_sessions is not None:  # after the engines: their sessions are closed
            await self.live_sessions.aclose()
        if self.alerts is not None:
            await self.alerts.close()
        self.quotas.close()
        await asyncio.to_thread(tracing.shutdown)  # flushes batched spans (at most ~5 s)
        if self.control is not None:  # before the broker: dropping roles needs the password
            await self.control.close()
        if self.broker is not None:
            await self.broker.close()
        self.audit.flush(2.0)
        self.audit.close()
        self.state.close()

    async def serve_forever(self) -> None:
        """Serve until SIGINT or SIGTERM, then stop cleanly (drains the audit trail);
        SIGHUP reloads the catalog (:meth:`reload_config`)."""
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            # Not available off the main thread or on some platforms: Ctrl-C still works.
            with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
                loop.add_signal_handler(sig, stop.set)
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError, AttributeError):
            loop.add_signal_handler(signal.SIGHUP, self.reload_config)
        # A SIGHUP between reading the file and the line above was ignored: read it again
        # (nothing happens when it is unchanged), so no worker stays on an older catalog.
        if self.config.source is not None:
            self.reload_config()
        await self.start()
        # A full collection walks every object alive (~65,000 after start-up: models,
        # aiohttp, cryptography...), ~40 ms with the GIL held: a p99 spike for every request
        # in flight. Start-up objects live as long as the process: take them out of its sight.
        gc.collect()
        gc.freeze()
        try:
            await stop.wait()
            log.info("lockgate stopping")
        finally:
            await self.stop()


def _worker_main(source: str, index: int, audit_socket: str, http_port: int) -> None:
    """One ``serve --workers`` process (spawned): SIGTERM stops it like Ctrl-C, which
    drains the audit."""
    config = load_config(source)
    _log.setup(config.log_level)
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    # Until the loop handles SIGHUP (it then reads the file again, so none is lost); it was
    # blocked by the supervisor while this process started (see supervise's spawn).
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGHUP})
    gw = Gateway(
        config, worker=index, audit_socket=Path(audit_socket), reuse_port=True, http_port=http_port
    )
    gw.offer_console_link = True
    with contextlib.suppress(KeyboardInterrupt):
        event_loop_runner()(gw.serve_forever())


def run(config: LockgateConfig, workers: int = 1) -> None:
    """Serve until interrupted, on uvloop when it is installed; ``workers`` > 1 supervises
    that many worker processes sharing the http port and one audit writer process."""
    _log.setup(config.log_level)
    if workers > 1:
        supervise(config, workers, _worker_main)
        return
    gw = Gateway(config)
    gw.offer_console_link = True
    with contextlib.suppress(KeyboardInterrupt):
        event_loop_runner()(gw.serve_forever())


__all__ = ["Gateway", "State", "run", "server_ssl_context"]
