"""Deployment client authentication at the token endpoint.

Two proofs, chosen by the deployment's configured ``proof.type`` (a deployment configured
for one never authenticates with the other; a deployment with no ``proof`` — proven only by
a workload-identity issuer, :mod:`lockgate.identity.oidc` — authenticates with neither):

- ``client_secret``: the config holds only ``sha256(secret)``; we hash what was presented
  and compare with :func:`hmac.compare_digest`. Unknown client ids still hash, so timing
  does not tell which names exist.
- ``private_key_jwt`` (RFC 7523): a short-lived JWT signed by the deployment's key.
  ``alg`` must match the key type (Ed25519 → EdDSA, RSA → RS256, EC P-256 → ES256),
  ``iss == sub == deployment``, ``aud`` is the token endpoint or the issuer (and nothing
  else: an assertion also addressed to another server could be replayed by it), ``exp`` is at
  most 5 minutes ahead, and a ``jti`` is accepted once (remembered until its ``exp``) by
  every process on the state database (:mod:`lockgate.identity.once`), so a captured
  assertion cannot be replayed to a sibling ``--workers`` process, another replica, or
  after a restart. The
  public key file is read again when it changes, so replacing a leaked key needs no restart.

Failures raise :class:`AuthenticationError` with a slug; messages never echo the proof.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from collections.abc import Callable
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.hazmat.primitives.asymmetric.types import PublicKeyTypes

from lockgate.config import ClientSecretProof, LockgateConfig, PrivateKeyJwtProof
from lockgate.errors import AuthenticationError
from lockgate.identity.once import LedgerUnavailable, OnceLedger
from lockgate.identity.tokens import split_jwt, unverified_claims, verified_claims

ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
MAX_ASSERTION_LIFETIME = 300
ASSERTION_LEDGER = "assertions.db"  # in data_dir, shared by every worker process
# The key types a client assertion may be signed with.
VerifyingKey = ed25519.Ed25519PublicKey | rsa.RSAPublicKey | ec.EllipticCurvePublicKey
_DUMMY_SHA256 = "0" * 64


def check_client_secret(config: LockgateConfig, client_id: str, secret: str) -> str:
    """Return the deployment name if ``secret`` is its client secret."""
    dep = config.deployment(client_id)
    expected = (
        dep.proof.secret_sha256
        if dep is not None and isinstance(dep.proof, ClientSecretProof)
        else _DUMMY_SHA256
    )
    presented = hashlib.sha256(secret.encode("utf-8", "surrogatepass")).hexdigest()
    ok = hmac.compare_digest(presented.encode(), expected.encode())
    if not ok or dep is None or not isinstance(dep.proof, ClientSecretProof):
        raise AuthenticationError("bad_client_secret")
    return dep.name


def _signing_alg(key: PublicKeyTypes) -> tuple[str, VerifyingKey] | None:
    """The one algorithm a deployment's key may sign with (and the key, so typed); None for
    a key of any other type or a weak size."""
    if isinstance(key, ed25519.Ed25519PublicKey):
        return "EdDSA", key
    if isinstance(key, rsa.RSAPublicKey) and key.key_size >= 2048:
        return "RS256", key
    if isinstance(key, ec.EllipticCurvePublicKey) and isinstance(key.curve, ec.SECP256R1):
        return "ES256", key
    return None


class AssertionVerifier:
    """Verifies RFC 7523 client assertions; seen jtis go to a ledger that every process of the
    gateway shares (``ledger=None``: the SQLite file ``data_dir/assertions.db``; a shared
    deployment passes the state's ``OnceLedger(state.database("assertions"))``)."""

    def __init__(
        self,
        config: LockgateConfig,
        *,
        leeway: int | None = None,
        clock: Callable[[], float] = time.time,
        ledger: OnceLedger | None = None,
    ) -> None:
        self._config = config
        self._audiences = {config.issuer_url, config.issuer_url + "/v1/token"}
        self._leeway = config.tokens.leeway if leeway is None else leeway
        self._clock = clock
        self._keys: dict[
            Path, tuple[tuple[int, ...], PublicKeyTypes]
        ] = {}  # path -> (file stamp, key)
        self._ledger = ledger or OnceLedger(Path(config.data_dir) / ASSERTION_LEDGER)

    def verify(self, assertion: str, client_id: str | None = None) -> str:
        """Return the deployment name the assertion proves."""
        header, _ = split_jwt(assertion)
        name = unverified_claims(assertion).get("iss")
        if not isinstance(name, str) or (client_id is not None and client_id != name):
            raise AuthenticationError("bad_assertion")
        dep = self._config.deployment(name)
        if dep is None or not isinstance(dep.proof, PrivateKeyJwtProof):
            raise AuthenticationError("bad_assertion")
        signing = _signing_alg(self._public_key(dep.proof.public_key))
        if signing is None or header["alg"] != signing[0]:
            raise AuthenticationError("unsupported_alg")
        alg, key = signing
        claims = verified_claims(
            assertion,
            key,
            alg=alg,
            audience=sorted(self._audiences),
            issuer=name,
            leeway=self._leeway,
            require=("exp", "iss", "sub", "aud", "jti"),
            misaddressed="bad_assertion",  # a prober learns nothing about our names
        )
        now = self._clock()
        exp, jti = claims["exp"], claims["jti"]
        if claims.get("sub") != name or not isinstance(jti, str) or not jti:
            raise AuthenticationError("bad_assertion")
        aud = claims["aud"]
        if not all(a in self._audiences for a in (aud if isinstance(aud, list) else [aud])):
            # Addressed to another server too (the audience injection of private_key_jwt):
            # that server could present it here.
            raise AuthenticationError("bad_assertion")
        if not isinstance(exp, int | float) or exp > now + MAX_ASSERTION_LIFETIME + self._leeway:
            raise AuthenticationError("lifetime_too_long")
        self._remember(name, jti, float(exp), now)
        return name

    def _remember(self, name: str, jti: str, exp: float, now: float) -> None:
        try:
            first = self._ledger.claim(name, jti, exp + self._leeway, now)
        except LedgerUnavailable:
            # Unable to tell a replay from a first use: refuse (fail closed).
            raise AuthenticationError("replay_check_unavailable") from None
        if not first:
            raise AuthenticationError("replayed")

    def _public_key(self, path: Path) -> PublicKeyTypes:
        """The deployment's public key, read again whenever its file changes: an operator who
        replaces a leaked key's file expects the old key refused from then on, not after a
        restart. One stat per assertion; assertions are not the per-request path."""
        try:
            st = path.stat()
            stamp = (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
            cached = self._keys.get(path)
            if cached is not None and cached[0] == stamp:
                return cached[1]
            key = serialization.load_pem_public_key(path.read_bytes())
        except (OSError, ValueError):
            # A config problem, not the client's; the slug stays generic for the client.
            self._keys.pop(path, None)
            raise AuthenticationError("bad_assertion", f"cannot load {path}") from None
        self._keys[path] = (stamp, key)
        return key
