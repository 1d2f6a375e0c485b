"""``LockgateConfig``: the whole file, with the checks that span its sections.

Cross-references (a resource's credential, an OIDC issuer's deployment), unique names and
conn_ids, and the listeners some resources need are checked here, after each section has
validated on its own; the error names the field the way it is written in the file.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator

from lockgate.config._base import Section
from lockgate.config.alerts import AlertSettings
from lockgate.config.console import ConsoleSettings
from lockgate.config.credentials import (
    KEY_VAULT_AUDIENCES,
    AnyCredential,
    Credential,
    FederatedCredential,
    KeyVaultCredential,
    ManagedIdentityCredential,
    OAuth2ClientCredential,
    VaultJwt,
    VaultKvCredential,
    key_vault_audience,
    reaches_in_clear,
)
from lockgate.config.identity import Deployment, OidcIssuer, TokenSettings
from lockgate.config.listeners import Listeners
from lockgate.config.metrics import MetricsSettings
from lockgate.config.resources import AnyResource, HttpResource, Resource
from lockgate.config.signing import SigningAlgorithm, SigningSettings
from lockgate.config.state import StateSettings
from lockgate.config.tracing import TracingSettings


class AuditSettings(Section):
    jsonl: Path | None = None
    write_timeout: float = Field(
        default=1.0, gt=0, description="a write slower than this fails closed"
    )
    # thread: a writer thread in the gateway process (fastest on small machines);
    # process: a separate writer process (frees the event loop's core; needed by --workers).
    writer: Literal["thread", "process"] = "thread"
    # What an allowed request's record survives before the request is forwarded (it is
    # journaled first, see docs/audit.md): process: a crash of the gateway process (one
    # write() to the page cache); fsync: a crash of the machine too (group-committed
    # fdatasync per request, at a cost in latency and requests/s).
    durability: Literal["process", "fsync"] = "process"
    # A second JSON-lines mirror of committed records, each an OCSF event (API Activity,
    # Datastore Activity, Authentication, Authorize Session), for a SIEM (docs/audit.md).
    ocsf: Path | None = None


class LockgateConfig(Section):
    data_dir: Path = Path("data")
    issuer: str | None = None
    listeners: Listeners = Listeners()
    tokens: TokenSettings = TokenSettings()
    signing: SigningSettings = SigningSettings()
    deployments: list[Deployment] = []
    oidc_issuers: list[OidcIssuer] = []
    resources: list[Resource] = []
    credentials: list[Credential] = []
    policies: list[str] = []
    audit: AuditSettings = AuditSettings()
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    alerts: AlertSettings = AlertSettings()
    tracing: TracingSettings = TracingSettings()
    metrics: MetricsSettings = MetricsSettings()
    console: ConsoleSettings = ConsoleSettings()
    # Where durable state lives: SQLite files under data_dir, or one shared PostgreSQL.
    state: StateSettings = StateSettings()
    # The credentials master key as a file (else LOCKGATE_MASTER_KEY; with SQLite state and
    # neither, data_dir/master.key is created on first start). Shared state needs one of them.
    master_key_file: Path | None = None
    source: Path | None = Field(default=None, exclude=True)  # set by load_config

    @model_validator(mode="after")
    def _cross_refs(self) -> LockgateConfig:
        _unique("deployments", "name", [d.name for d in self.deployments])
        _unique("resources", "name", [r.name for r in self.resources])
        _unique("credentials", "name", [c.name for c in self.credentials])
        _unique("resources", "conn_id", [r.conn_id for r in self.resources])
        creds = {c.name for c in self.credentials}
        for i, r in enumerate(self.resources):
            if r.credential and r.credential not in creds:
                raise ValueError(
                    f"resources[{i}].credential: unknown credential {r.credential!r}; "
                    f"expected one of {sorted(creds)}"
                )
        intercepted: dict[str, int] = {}
        for i, r in enumerate(self.resources):
            for h in r.intercept if isinstance(r, HttpResource) else ():
                if h in intercepted:
                    raise ValueError(
                        f"resources[{i}].intercept: {h!r} is already intercepted by "
                        f"resources[{intercepted[h]}]"
                    )
                intercepted[h] = i
        if intercepted and self.listeners.forward_proxy is None:
            raise ValueError(
                "resources: 'intercept' needs a listeners.forward_proxy section "
                "(for example {port: 8472, ca: {cert: tls/proxy-ca.pem, key: tls/proxy-ca.key}})"
            )
        if self.listeners.cql is None:
            for i, r in enumerate(self.resources):
                if r.kind == "cql":
                    raise ValueError(
                        f"resources[{i}].kind: 'cql' needs a listeners.cql section "
                        "(for example {port: 9042})"
                    )
        pg = self.listeners.postgres
        for i, r in enumerate(self.resources):
            if r.kind != "postgres":
                continue
            if pg is None:
                raise ValueError(
                    f"resources[{i}].kind: 'postgres' needs a listeners.postgres section "
                    "(for example {port: 5432, tls: {cert: tls/cert.pem, key: tls/key.pem}})"
                )
            if pg.tls is None and not pg.allow_plaintext:
                raise ValueError(
                    "listeners.postgres.tls: the postgres listener needs a certificate "
                    "(tokens are passwords on this wire), or allow_plaintext: true"
                )
        resource_names = {r.name for r in self.resources}
        for i, c in enumerate(self.credentials):
            if isinstance(c, KeyVaultCredential):
                self._check_key_vault_identity(i, c)
            if isinstance(c, VaultKvCredential) and isinstance(c.auth, VaultJwt):
                self._check_assertion_names(
                    f"credentials[{i}].auth", c.auth.audience, c.assertion_subject, resource_names
                )
            if isinstance(c, FederatedCredential):
                self._check_assertion_names(
                    f"credentials[{i}]", c.assertion_audience, c.assertion_subject, resource_names
                )
                alg = self.federation_algorithm(c)
                if alg == "EdDSA" or (c.provider == "entra" and alg != "RS256"):
                    raise ValueError(
                        f"credentials[{i}]: signing.audiences maps {c.assertion_audience!r} "
                        f"to {alg}; provider {c.provider!r} accepts "
                        + ("RS256 only" if c.provider == "entra" else "RS256 or ES256")
                    )
        deps = {d.name for d in self.deployments}
        for i, o in enumerate(self.oidc_issuers):
            if o.deployment not in deps:
                raise ValueError(
                    f"oidc_issuers[{i}].deployment: unknown deployment {o.deployment!r}"
                )
        proven = {o.deployment for o in self.oidc_issuers}
        for i, d in enumerate(self.deployments):
            if d.proof is None and d.name not in proven:
                raise ValueError(
                    f"deployments[{i}].proof: deployment {d.name!r} has no proof and no "
                    "oidc_issuers entry names it, so nothing could ever authenticate as it "
                    "(add an oidc_issuers entry for its workload identity, or a proof)"
                )
        _check_audit_mirrors(self.audit, self.data_dir)
        return self

    def _check_assertion_names(
        self, where: str, audience: str, subject: str, resource_names: set[str]
    ) -> None:
        """A JWT Lockgate signs for itself must never read as a task's token (a resource
        name as aud, airflow:... as sub, same issuer) nor as a caller-identity assertion."""
        if audience in resource_names:
            raise ValueError(
                f"{where}.audience: {audience!r} is also a resource name, so a task's token "
                "would carry it: pick another"
            )
        if subject.lower().startswith("airflow:"):
            raise ValueError(
                f"{where}.subject: 'airflow:' names task principals; "
                "a federated credential's subject must not look like one"
            )
        if audience.startswith(f"{self.issuer_url}/upstream/"):
            raise ValueError(
                f"{where}.audience: {self.issuer_url}/upstream/... is the "
                "audience of the caller-identity assertions upstreams receive"
            )

    def _check_key_vault_identity(self, i: int, cred: KeyVaultCredential) -> None:
        """``identity`` names a token credential of this file whose tokens Key Vault takes."""
        names = [
            c.name
            for c in self.credentials
            if isinstance(c, OAuth2ClientCredential | ManagedIdentityCredential)
            or (isinstance(c, FederatedCredential) and c.provider == "entra")
        ]
        ident = self.credential(cred.identity)
        where = f"credentials[{i}].identity"
        if ident is None:
            raise ValueError(
                f"{where}: unknown credential {cred.identity!r}; expected one of {sorted(names)}"
            )
        if ident.name not in names:
            raise ValueError(
                f"{where}: {cred.identity!r} is a {ident.type} credential; Key Vault is read "
                "with an Entra ID token: a managed_identity, federated (provider entra) or "
                "oauth2_client_credentials credential"
            )
        assert isinstance(
            ident, OAuth2ClientCredential | ManagedIdentityCredential | FederatedCredential
        )
        audience = key_vault_audience(ident)
        if audience not in KEY_VAULT_AUDIENCES:
            field = "resource" if isinstance(ident, ManagedIdentityCredential) else "scope"
            wanted = "https://vault.azure.net" + ("" if field == "resource" else "/.default")
            raise ValueError(
                f"{where}: credential {cred.identity!r} gets tokens for "
                f"{audience or 'no audience'}, which Key Vault refuses: its {field} must be "
                f"{wanted}"
            )

    # -- lookups -----------------------------------------------------------------------------
    @property
    def issuer_url(self) -> str:
        if self.issuer:
            return self.issuer.rstrip("/")
        c = self.listeners.control
        return f"{c.scheme}://{c.host}:{c.port}"

    def resource(self, name: str) -> AnyResource | None:
        return next((r for r in self.resources if r.name == name), None)

    def resource_for_conn_id(self, conn_id: str) -> AnyResource | None:
        return next((r for r in self.resources if r.conn_id == conn_id), None)

    def deployment(self, name: str) -> Deployment | None:
        return next((d for d in self.deployments if d.name == name), None)

    def credential(self, name: str) -> AnyCredential | None:
        return next((c for c in self.credentials if c.name == name), None)

    def issuer_problems(self) -> list[str]:
        """``oidc_issuers`` entries whose every token the gateway refuses at run time (so
        nothing breaks open), said up front: ``config check`` fails on them, ``serve``
        warns."""
        problems: list[str] = []
        for i, o in enumerate(self.oidc_issuers):
            where = f"oidc_issuers[{i}]"
            if not o.claims and any(not glob.strip("*?") for glob in o.subjects):
                problems.append(
                    f"{where}.subjects: wildcards only and no claims: every workload of "
                    f"{o.issuer} could speak for {o.deployment!r}, so its tokens are refused "
                    "(oidc_entry_unpinned); pin a namespace or service account"
                )
            if o.issuer.rstrip("/") == self.issuer_url:
                problems.append(
                    f"{where}.issuer: Lockgate's own issuer: a task's token is never a "
                    "deployment's proof (oidc_own_token)"
                )
            fetched = [] if o.jwks_file else [("issuer", o.issuer), ("jwks_uri", o.jwks_uri)]
            for name, url in fetched:
                if url and not url.startswith("spiffe://") and reaches_in_clear(url):
                    problems.append(
                        f"{where}.{name}: plain http off this machine would let the network "
                        "choose the keys, so they are never fetched: use https"
                    )
        return problems

    def federation_algorithm(
        self, cred: FederatedCredential | VaultKvCredential
    ) -> SigningAlgorithm:
        """The algorithm of ``cred``'s assertions (a federated credential's, or a Vault jwt
        login's): its own setting, else the audience mapping, else RS256 (what every
        federating cloud and Vault's jwt auth accept)."""
        if isinstance(cred, VaultKvCredential):
            if not isinstance(cred.auth, VaultJwt):
                raise ValueError(f"credential {cred.name!r} signs no JWT (auth method approle)")
            algorithm, audience = cred.auth.algorithm, cred.auth.audience
        else:
            algorithm, audience = cred.algorithm, cred.assertion_audience
        if algorithm is not None:
            return algorithm
        return self.signing.algorithm_for(audience, default="RS256")

    def signing_algorithms(self) -> list[SigningAlgorithm]:
        """Every algorithm a signing key must be kept for: the configured ones, those the
        audience mappings name and those federated credentials sign with (EdDSA first)."""
        wanted: list[SigningAlgorithm] = [*self.signing.algorithms]
        wanted += self.signing.audiences.values()
        wanted += [
            self.federation_algorithm(c)
            for c in self.credentials
            if isinstance(c, FederatedCredential)
            or (isinstance(c, VaultKvCredential) and isinstance(c.auth, VaultJwt))
        ]
        order: list[SigningAlgorithm] = ["EdDSA", "RS256", "ES256"]
        return [a for a in order if a in wanted]

    def policy_files(self) -> list[Path]:
        base = self.source.parent if self.source else Path.cwd()
        found: list[Path] = []
        for pattern in self.policies:
            p = Path(pattern)
            if p.is_absolute():
                matches = sorted(Path(p.anchor).glob(str(p.relative_to(p.anchor))))
            else:
                matches = sorted(base.glob(pattern))
            found.extend(m for m in matches if m.is_file())
        return found


# What the gateway keeps in data_dir: a mirror written over one of them would wreck it (the
# writer cuts a mirror back to its last whole line, and a SQLite file has none).
_STATE_SUFFIXES = (".db", ".db-wal", ".db-shm", ".db-journal", ".key", ".pem")
_STATE_DIRS = ("keys", "audit-journal", "metrics")


def _check_audit_mirrors(audit: AuditSettings, data_dir: Path) -> None:
    """``audit.jsonl`` and ``audit.ocsf``: two files, neither one of the gateway's own."""
    mirrors = {"jsonl": audit.jsonl, "ocsf": audit.ocsf}
    same = (
        audit.jsonl is not None
        and audit.ocsf is not None
        and (os.path.normpath(audit.jsonl) == os.path.normpath(audit.ocsf))
    )
    if same:
        raise ValueError("audit.ocsf: the same file as audit.jsonl; each needs its own")
    home = Path(os.path.normpath(data_dir))
    for field, path in mirrors.items():
        if path is None:
            continue
        where = Path(os.path.normpath(path))
        if not where.is_relative_to(home):
            continue
        inside = where.relative_to(home).parts
        if inside[0] in _STATE_DIRS or where.name.endswith(_STATE_SUFFIXES):
            raise ValueError(
                f"audit.{field}: {path} is the gateway's own state in data_dir; "
                "choose a file of its own (for example data_dir/audit.{field}.jsonl)"
            )


def _unique(section: str, field: str, values: list[str | None]) -> None:
    """Raise naming the second occurrence, e.g. ``resources[2].conn_id: duplicate ...``."""
    seen: dict[str, int] = {}
    for i, v in enumerate(values):
        if v is None:
            continue
        if v in seen:
            raise ValueError(
                f"{section}[{i}].{field}: duplicate {field} {v!r} "
                f"(first used by {section}[{seen[v]}]); expected unique values"
            )
        seen[v] = i
