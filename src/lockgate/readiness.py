"""What ``/readyz`` answers: may a load balancer send this gateway traffic right now?

``/healthz`` is liveness only (the process answers). ``/readyz`` is 200 only when every
check below passes, else 503; both carry every check's outcome as JSON::

    {"ready": false,
     "checks": {"started": "ok", "audit": "ok", "policy": "last reload failed ...",
                "credentials": "no value stored for orders-api-key (resource orders-api) ...",
                "signing_keys": "ok"},
     "problems": ["policy: last reload failed ...", "credentials: ..."]}

- **started**: listeners are up (false while starting and stopping).
- **audit**: the audit trail accepts records in time (``check_writable``); while it does
  not, every request is refused anyway.
- **policy**: the policy files loaded. It says which failure it is: never loaded (every
  request is denied), the last reload failed (the previous good policy is still served,
  the files on disk are not what runs), or ``policies:`` matches no file at all (nothing to
  load, so every request is denied).
- **credentials**: every credential a resource uses that needs a stored value (``static``,
  ``oauth2_client_credentials``) has one (``lockgate creds set``). Managed identities and
  federated credentials store nothing and are not checked here. A vault-held one
  (``azure_key_vault``, ``vault_kv``) must have been fetched once by this process (the
  gateway fetches on its first tick): until then it is named with the vault's last answer;
  a ``vault_kv`` AppRole login without ``secret_id_file`` needs its stored secret id too.
- **signing_keys**: the current signing key of every algorithm in use
  (``config.signing_algorithms()``: EdDSA, and RS256/ES256 when audiences or federated
  credentials need them) is loaded and not retired, and its files are on disk (a restart
  without them would mint with a fresh key and strand every token, or every cloud's trust).
- **shared_state** (only with ``state: {postgresql: ...}``): ``ok`` while PostgreSQL is
  reached; ``unreachable for 12 s, serving from memory (bound 30 s)`` while it is not but
  decisions may still rest on memory (still ready: every replica would fail together
  otherwise); past ``max_staleness`` not ready, and every request is refused anyway
  (:mod:`lockgate.identity.staleness`).

Cost: audit, policy, shared state and the in-memory key checks are attribute reads; the
checks that touch storage (one database query for credentials, two ``stat`` calls for keys)
are cached for :data:`DISK_CHECK_TTL` seconds, so a probe every few hundred milliseconds
costs nothing. With shared state that query is a network round trip: the gateway then runs
:meth:`Readiness.refresh_stored` in a worker thread on its own tick, and probes only read
its last answer. Secrets never appear in an answer: only names.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from lockgate import metrics
from lockgate.audit import AuditLog, RemoteAuditLog, ShipLag
from lockgate.config import FederatedCredential, LockgateConfig, ManagedIdentityCredential
from lockgate.config.credentials import VaultAppRole, VaultCredential, VaultKvCredential
from lockgate.credentials import CredentialStore
from lockgate.errors import AuditUnavailable, StoreUnavailable
from lockgate.identity import KeyStore
from lockgate.identity.staleness import StalenessBound
from lockgate.policy import PolicyStore

DISK_CHECK_TTL = 1.0
OK = "ok"


@dataclass(frozen=True, slots=True)
class Report:
    ready: bool
    checks: dict[str, str]
    # checks that are not "ok" but still let the gateway serve (shared state within bound)
    warnings: frozenset[str] = frozenset()
    # shared state: how far this replica's audit shipping is behind (never fails readiness)
    audit_shipping: ShipLag | None = None

    @property
    def problems(self) -> list[str]:
        """What keeps the gateway from being ready (warnings are in ``checks`` only)."""
        return [
            f"{name}: {text}"
            for name, text in self.checks.items()
            if text != OK and name not in self.warnings
        ]

    def body(self) -> dict[str, object]:
        body: dict[str, object] = {
            "ready": self.ready,
            "checks": self.checks,
            "problems": self.problems,
        }
        lag = self.audit_shipping
        if lag is not None:
            body["audit_shipping"] = {
                "records": lag.records,
                "seconds": round(lag.seconds, 1),
                "error": lag.error,
            }
        return body


class Readiness:
    """The checks of one gateway process; :meth:`report` is what ``/readyz`` serves."""

    def __init__(
        self,
        config: LockgateConfig,
        *,
        audit: AuditLog | RemoteAuditLog,
        policy: PolicyStore,
        credentials: CredentialStore,
        keys: KeyStore,
        staleness: StalenessBound | None = None,
        shipping_lag: Callable[[], ShipLag | None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._audit = audit
        self._staleness = staleness
        # Shared state: the stored checks are network calls, refreshed off the event loop
        # by the gateway (refresh_stored); a probe never waits for the database.
        self._stored_in_background = staleness is not None
        self._shipping_lag = shipping_lag
        self._lag: ShipLag | None = None  # as of the last refresh_stored
        self._policy = policy
        self._policy_patterns = list(config.policies)
        self._credentials = credentials
        self._keys = keys
        self._algorithms = config.signing_algorithms()
        self._clock = clock
        # credential name -> resources using it, for those that need a stored value
        self._needed: dict[str, list[str]] = {}
        # vault-held credential name -> resources using it (fetched by the broker)
        self._fetched: dict[str, list[str]] = {}
        for r in config.resources:
            cred = config.credential(r.credential) if r.credential else None
            unstored = isinstance(cred, ManagedIdentityCredential | FederatedCredential)
            if isinstance(cred, VaultCredential):
                self._fetched.setdefault(cred.name, []).append(r.name)
                unstored = not (
                    isinstance(cred, VaultKvCredential)
                    and isinstance(cred.auth, VaultAppRole)
                    and cred.auth.secret_id_file is None
                )
            if cred is not None and not unstored:
                self._needed.setdefault(cred.name, []).append(r.name)
        self._disk: tuple[float, str, str] | None = None  # (at, credentials, signing_keys)

    def report(self, started: bool) -> Report:
        credentials, signing_keys = self._disk_checks()
        if credentials == OK:
            credentials = self._vault_check()
        checks = {
            "started": OK if started else "not serving yet (starting or stopping)",
            "audit": self._audit_check(),
            "policy": self._policy_check(),
            "credentials": credentials,
            "signing_keys": signing_keys,
        }
        warnings: frozenset[str] = frozenset()
        if self._staleness is not None:
            within, checks["shared_state"] = self._staleness.status()
            if within and checks["shared_state"] != OK:
                warnings = frozenset({"shared_state"})
        ready = all(text == OK for name, text in checks.items() if name not in warnings)
        return Report(ready, checks, warnings, self._lag)

    def refresh_stored(self) -> None:
        """Run the checks that read storage now (blocking: the gateway calls it in a worker
        thread when state is shared)."""
        try:
            credentials = self._credentials_check()
        except StoreUnavailable as exc:
            # The shared database out of reach is the shared_state check's to judge (within
            # its bound the gateway serves from memory): keep the last answer while there is one.
            if self._disk is not None:
                credentials = self._disk[1]
            else:
                credentials = f"cannot list the stored credentials: {exc}"
        self._disk = (self._clock(), credentials, self._keys_check())
        if self._shipping_lag is not None:
            self._lag = self._shipping_lag()
            if self._lag is not None:
                metrics.AUDIT_SHIP_LAG_RECORDS.set(self._lag.records)
                metrics.AUDIT_SHIP_LAG_SECONDS.set(self._lag.seconds)
        if self._staleness is not None:
            metrics.SHARED_STATE_STALE.set(self._staleness.stale_for())

    # -- checks -----------------------------------------------------------------------------
    def _audit_check(self) -> str:
        try:
            self._audit.check_writable()
        except AuditUnavailable as exc:
            return f"refusing records: {exc}"
        return OK

    def _policy_check(self) -> str:
        error = self._policy.last_error
        if self._policy.loaded_at is None:
            return f"never loaded, every request is denied: {error or 'no policy loaded'}"
        if error:
            loaded = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self._policy.loaded_at))
            return f"last reload failed, still serving the policy loaded at {loaded}: {error}"
        if self._policy_patterns and not self._policy.current.sources:
            return f"no file matches policies {self._policy_patterns}, every request is denied"
        return OK

    def _disk_checks(self) -> tuple[str, str]:
        if self._stored_in_background:
            if self._disk is None:
                pending = "not checked yet (starting)"
                return pending, pending
        elif self._disk is None or self._clock() - self._disk[0] >= DISK_CHECK_TTL:
            self.refresh_stored()
        assert self._disk is not None
        return self._disk[1], self._disk[2]

    def _credentials_check(self) -> str:
        if not self._needed:
            return OK
        stored = set(self._credentials.names())
        missing = [
            f"{name} (resource {', '.join(resources)})"
            for name, resources in self._needed.items()
            if name not in stored
        ]
        if missing:
            return f"no value stored for {'; '.join(missing)} (lockgate creds set NAME)"
        return OK

    def _vault_check(self) -> str:
        """Every vault-held credential a resource uses was fetched by this process (memory
        reads only: the broker's fetch state)."""
        status_of = self._credentials.vault_status
        if not self._fetched or status_of is None:
            return OK
        statuses = status_of()
        waiting = []
        for name, resources in self._fetched.items():
            status = statuses.get(name)
            if status is None or status.fetched_at is None:
                why = status.error if status is not None and status.error else "no answer yet"
                held = f" from {status.held_at}" if status is not None else ""
                waiting.append(f"{name} (resource {', '.join(resources)}){held}: {why}")
        if waiting:
            return f"not fetched from the vault yet: {'; '.join(waiting)}"
        return OK

    def _keys_check(self) -> str:
        for alg in self._algorithms:
            problem = self._key_check(alg)
            if problem != OK:
                return problem
        return OK

    def _key_check(self, alg: str) -> str:
        # EdDSA keeps the words it always had; other algorithms are named.
        named = "" if alg == "EdDSA" else f"{alg} "
        try:
            key = self._keys.current(alg)
        except (AssertionError, KeyError, ValueError):
            return f"no current {named}signing key"
        if self._keys.public_key(key.kid) is None:
            return f"current {named}signing key {key.kid} is retired"
        key_dir = self._keys.dir
        if key_dir is None:  # keys kept in the shared database, not in files
            return OK
        for path in (key_dir / "index.json", key_dir / f"{key.kid}.pem"):
            if not path.is_file():
                return f"{path} is missing (a restart would mint with a new key)"
        return OK


__all__ = ["DISK_CHECK_TTL", "Readiness", "Report"]
