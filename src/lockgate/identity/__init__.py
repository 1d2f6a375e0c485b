"""Identity: who a task is, how it proves it, and the short-lived tokens it gets.

- :mod:`.model`       TaskIdentity, Claims, MintDecision
- :mod:`.keys`        signing keys (Ed25519, RSA, P-256: one current key per algorithm),
                      rotation with overlap, JWKS: files under the data dir
                      (:mod:`.key_files`) or, on shared state, a table whose private halves
                      are encrypted under the master key (:mod:`.key_table`); :mod:`.signing_key`
- :mod:`.revocation`  revoked tokens / DAGs / runs / task tries and blocks (SQLite or shared
                      PostgreSQL, answered from memory, reloaded when their version moves);
                      its tables and statements in :mod:`.revocation_schema`
- :mod:`.staleness`   the bound past which decisions stop without the shared database
- :mod:`.rate_limit`  mint and failed-authentication budgets, shared by workers and replicas
- :mod:`.tokens`      TokenIssuer and TokenVerifier (JWTs, audience = resource name; EdDSA
                      unless ``signing.audiences`` says otherwise; the algorithm is pinned
                      per key)
- :mod:`.proofs`      deployment client secret and private-key JWT assertions
- :mod:`.once`        one-time values (assertion jtis) shared by every process and replica
- :mod:`.oidc`        OIDC subject tokens from trusted issuers (RFC 8693 exchange)
- :mod:`.attestation` optional check against the deployment's Airflow REST API
- :mod:`.service`     the token service: authenticate, authorize, issue, revoke (no routes)
- :mod:`.client_auth` a deployment's proof (client secret, assertion, OIDC), the staleness
                      refusal and the failed-authentication brake, before any mint
- :mod:`._request`    request body parsing and validation, OAuthError
- :mod:`.upstream_assertion` the signed caller-identity assertion sent to upstreams

The control listener's routes (token, revoke, JWKS, discovery, catalog, poll token,
database role, Cosmos DB task key, managed-identity endpoint) and the mint policy are in
:mod:`lockgate.control`.
"""

from lockgate.identity._request import (
    MAX_BODY,
    OAuthError,
    invalid_request,
    may_act_for,
    parse_body,
    valid_airflow_id,
    valid_run_id,
)
from lockgate.identity.attestation import AttestationFailed, AttestationUnavailable
from lockgate.identity.keys import KeyStore, SigningKey, thumbprint
from lockgate.identity.model import Claims, MintDecision, TaskIdentity
from lockgate.identity.oidc import OidcVerifier, SubjectToken
from lockgate.identity.proofs import AssertionVerifier, check_client_secret
from lockgate.identity.revocation import Revocation, RevocationStore
from lockgate.identity.service import IssuedToken, MintPolicy, TaskGrant, TokenService
from lockgate.identity.tokens import MAX_TOKEN_BYTES, TokenIssuer, TokenVerifier
from lockgate.identity.upstream_assertion import UpstreamAssertionSigner

__all__ = [
    "MAX_BODY",
    "MAX_TOKEN_BYTES",
    "AssertionVerifier",
    "AttestationFailed",
    "AttestationUnavailable",
    "Claims",
    "IssuedToken",
    "KeyStore",
    "MintDecision",
    "MintPolicy",
    "OAuthError",
    "OidcVerifier",
    "Revocation",
    "RevocationStore",
    "SigningKey",
    "SubjectToken",
    "TaskGrant",
    "TaskIdentity",
    "TokenIssuer",
    "TokenService",
    "TokenVerifier",
    "UpstreamAssertionSigner",
    "check_client_secret",
    "invalid_request",
    "may_act_for",
    "parse_body",
    "thumbprint",
    "valid_airflow_id",
    "valid_run_id",
]
