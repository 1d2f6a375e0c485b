"""``tokens:``, ``deployments:`` and ``oidc_issuers:``: who may ask for a Lockgate token."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, field_validator

from lockgate.config._base import NAME_RE, Section


class RateLimitSettings(Section):
    """``tokens.rate_limit``: brakes on the token service, one budget shared by every
    process and replica on the same state (see :mod:`lockgate.identity.rate_limit`).
    A limit of 0 switches that brake off."""

    mint_per_second: float = Field(
        default=50, ge=0, description="tokens a deployment may mint per second, all doors"
    )
    burst: int = Field(default=200, ge=1, description="mints a deployment may make at once")
    failed_auth_per_client: int = Field(
        default=10, ge=0, description="failed authentications of one deployment per window"
    )
    failed_auth_per_remote: int = Field(
        default=30, ge=0, description="failed authentications from one address per window"
    )
    failed_auth_window: float = Field(default=60, gt=0, le=86400, description="seconds")
    failed_auth_cooldown: float = Field(
        default=60, ge=0, le=86400, description="seconds refused once a failure limit is hit"
    )


class TokenSettings(Section):
    default_ttl: int = Field(default=900, gt=0, description="seconds; used when policy sets no max")
    max_ttl: int = Field(default=3600, gt=0, description="hard cap for any token, seconds")
    leeway: int = Field(
        default=5, ge=0, le=60, description="clock skew allowed on exp/nbf, seconds"
    )
    rate_limit: RateLimitSettings = RateLimitSettings()


class ClientSecretProof(Section):
    type: Literal["client_secret"]
    secret_sha256: str = Field(pattern=r"^[0-9a-f]{64}$")


class PrivateKeyJwtProof(Section):
    type: Literal["private_key_jwt"]
    public_key: Path  # PEM, Ed25519 or RSA or EC


Proof = Annotated[ClientSecretProof | PrivateKeyJwtProof, Field(discriminator="type")]


class AirflowApi(Section):
    """Attest asserted task coordinates against the deployment's Airflow REST API."""

    url: str
    token_env: str | None = None  # env var holding a bearer token for the Airflow API
    verify_tls: bool = True


class Deployment(Section):
    """An Airflow installation that asks for tokens. ``proof`` is how it authenticates with
    a client secret or key of its own; without one, only a workload-identity token from an
    ``oidc_issuers`` entry naming it can (the secretless form: nothing stored on workers)."""

    name: str = Field(pattern=NAME_RE)
    proof: Proof | None = None
    dags: list[str] = Field(min_length=1, description="globs of dag_ids it may act for")
    airflow_api: AirflowApi | None = None


class OidcIssuer(Section):
    """A workload-identity issuer whose tokens prove a deployment (RFC 8693 token exchange):
    a Kubernetes cluster's service-account issuer, Entra ID, a SPIRE server, any OIDC IdP.

    A token speaks for ``deployment`` when its ``iss`` is ``issuer`` exactly, its ``aud``
    holds one of ``audience``, its ``sub`` matches one of ``subjects`` and every entry of
    ``claims`` matches: a dotted path into the claims (``kubernetes.io.namespace``,
    ``kubernetes.io.serviceaccount.name``) to a glob or a list of globs."""

    issuer: str
    audience: str | list[str]
    deployment: str
    jwks_uri: str | None = None  # else taken from OIDC discovery
    # A JWKS file (a SPIFFE trust bundle, a cluster's keys copied out), re-read when it
    # changes; instead of discovery and jwks_uri.
    jwks_file: Path | None = None
    # CA bundle the issuer's discovery and JWKS are verified with (a cluster's
    # /var/run/secrets/kubernetes.io/serviceaccount/ca.crt); default: the system's.
    ca_file: Path | None = None
    subjects: list[str] = ["*"]
    claims: dict[str, str | list[str]] = Field(
        default={}, description="dotted claim path -> glob(s) the claim must match"
    )
    algorithms: list[str] = ["RS256", "ES256", "EdDSA"]

    @field_validator("algorithms")
    @classmethod
    def _no_symmetric(cls, algs: list[str]) -> list[str]:
        bad = [a for a in algs if a.lower() == "none" or a.upper().startswith("HS")]
        if bad:
            raise ValueError(f"symmetric or 'none' algorithms are not accepted: {bad}")
        return algs
