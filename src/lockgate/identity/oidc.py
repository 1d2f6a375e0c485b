"""OIDC subject tokens from trusted issuers, for RFC 8693 token exchange.

Strategy: pick the configured issuer by the token's (unverified) ``iss`` — exact string
match, nothing else is trusted — then verify with keys from that issuer's JWKS only.
Discovery (``/.well-known/openid-configuration``) and the JWKS are fetched with aiohttp and
cached for ``max_age``; an unknown ``kid`` triggers one refetch, at most every
``refetch_interval`` seconds, so a flood of garbage kids cannot make us hammer the IdP.
An issuer's ``ca_file`` is the only CA its discovery and JWKS are verified with (a
cluster's ``ca.crt``); its ``jwks_file`` (a JWKS, a SPIFFE trust bundle) replaces
discovery and is read again as soon as the file changes (same refetch rules otherwise).

Rules: ``alg`` must be in the issuer's configured ``algorithms`` (config already forbids
``none`` and HS*), and must fit the JWK's key type (an RSA key of 2048 bits at least);
``iss``, ``aud``, ``exp`` are required and checked (``aud`` must hold one of the entry's
audiences and no other: a token also addressed to another party could be replayed by it,
``foreign_audience``); ``sub`` must match one of the issuer's ``subjects`` globs and each
of its ``claims`` matchers (a dotted path, e.g. ``kubernetes.io.namespace``, to a string or
integer matching a glob; a claim missing, not a scalar, or reachable two ways —
``{"kubernetes.io": {"namespace": ..}}`` and a top-level ``"kubernetes.io.namespace"`` —
fails closed, and the refusal names the path, never the value).

Deny by default, also against a lax entry: an entry that pins nothing (a subject glob of
wildcards only and no claim matchers) takes no token (``entry_unpinned``): any workload of
a cluster or trust domain can get a token for any audience it likes, so the audience alone
proves nothing. A token Lockgate signed itself (``iss`` its own issuer) is never a subject
token (``own_token``): a task's token must not become a deployment's proof. Discovery and
keys are fetched over https, or plain http to loopback alone (a discovery naming a
``jwks_uri`` in plain http, or an issuer configured so, would let the network choose the
keys). A ``spiffe://`` subject, whichever issuer signed it, must be a well-formed SPIFFE
ID (no empty, ``.`` or ``..`` segment: nothing a glob's ``*`` could be fooled by). A
Kubernetes token past its ``kubernetes.io.warnafter`` (the lifetime the pod asked for,
before the API server extended it to a year) is refused (``stale_token``): the kubelet has
replaced it long since, so whoever presents it copied it out of a pod. A refetch that
fails keeps the keys in hand while they are within ``max_age`` (anyone can cause a
refetch with a garbage kid; an issuer's blip at that moment must not refuse every
worker); keys past ``max_age`` are dropped.

Workload identities in practice:

- Kubernetes projected service-account tokens: ``iss`` the cluster's issuer, discovery at
  ``<iss>/.well-known/openid-configuration`` naming ``<iss>/openid/v1/jwks``, ``sub``
  ``system:serviceaccount:<namespace>:<name>``, claims under ``kubernetes.io``.
- SPIFFE JWT-SVIDs: an entry whose ``issuer`` is ``spiffe://<trust domain>`` (keys from the
  trust bundle in ``jwks_file``) takes tokens whose ``sub`` is a SPIFFE ID of that trust
  domain; SPIRE puts no ``iss`` in a JWT-SVID unless told to, so none is required then
  (one that is present must name the trust domain); ``aud`` is required as everywhere.

One issuer may be trusted by several deployments (one Kubernetes cluster or Entra tenant
hosting two Airflow installations): each entry is tried, and the token speaks for the one
deployment whose entry takes it (audience, algorithm, subjects, claims). A token that
entries of two deployments would take is refused (``ambiguous_subject``), never given to
either.
"""

from __future__ import annotations

import asyncio
import fnmatch
import json
import re
import ssl
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import jwt
from cryptography.hazmat.primitives.asymmetric import rsa

from lockgate import _log
from lockgate._files import read_regular_file
from lockgate._urls import private_channel
from lockgate.config import OidcIssuer
from lockgate.errors import AuthenticationError
from lockgate.identity.tokens import split_jwt, unverified_claims, verified_claims

SUBJECT_TOKEN_TYPES = frozenset(
    {"urn:ietf:params:oauth:token-type:jwt", "urn:ietf:params:oauth:token-type:id_token"}
)
SPIFFE_SCHEME = "spiffe://"
# A SPIFFE ID as the SPIFFE ID spec allows it: a lowercase trust domain, then path segments
# of letters, digits, ".", "-", "_" (no empty, "." or ".." segment: checked apart).
_SPIFFE_ID_RE = re.compile(r"spiffe://[a-z0-9._-]+(/[A-Za-z0-9._-]+)+\Z")
_MAX_DOC_BYTES = 512 * 1024
_MIN_RSA_BITS = 2048
_KTY_FOR_ALG = {"RS": "RSA", "PS": "RSA", "ES": "EC", "Ed": "OKP"}
# What a verification key's ``use`` may say: signatures (JWKS), JWT-SVIDs (SPIFFE bundle).
_SIGNING_USES = (None, "sig", "jwt-svid")
log = _log.get("identity.oidc")

# One key of an issuer's JWKS document, as published (JSON; PyJWK builds the key from it).
Jwk = dict[str, Any]
# A JWKS file's identity on disk: a change of any of these means "read it again".
_FileStamp = tuple[int, int, int, int]


@dataclass
class _IssuerKeys:
    keys: dict[str, Jwk] = field(default_factory=dict)  # kid -> the key as published
    fetched_at: float = float("-inf")  # last fetch tried (the refetch interval's clock)
    keys_at: float = float("-inf")  # last fetch that answered (the keys' age)
    file_stamp: _FileStamp | None = None  # of the jwks_file the keys were read from
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)


@dataclass(frozen=True, slots=True)
class SubjectToken:
    issuer: OidcIssuer
    subject: str
    claims: dict[str, Any]

    @property
    def deployment(self) -> str:
        return self.issuer.deployment


class OidcVerifier:
    def __init__(
        self,
        issuers: list[OidcIssuer],
        session: Callable[[], Awaitable[aiohttp.ClientSession]],
        *,
        leeway: int = 5,
        refetch_interval: float = 10.0,
        max_age: float = 3600.0,
        timeout: float = 5.0,
        own_issuer: str | None = None,
    ) -> None:
        """``own_issuer``: Lockgate's own issuer URL, whose tokens are never subject tokens."""
        self._issuers: dict[str, list[OidcIssuer]] = {}
        for entry in issuers:
            self._issuers.setdefault(entry.issuer.rstrip("/"), []).append(entry)
            if _unpinned(entry):
                log.error(
                    "oidc issuer entry pins no subject: it takes no token until it names "
                    "subjects or claims",
                    extra={"fields": {"issuer": entry.issuer, "deployment": entry.deployment}},
                )
        self._own_issuer = own_issuer.rstrip("/") if own_issuer else None
        self._session = session
        self._leeway = leeway
        self._refetch_interval = refetch_interval
        self._max_age = max_age
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._cache: dict[tuple[str, ...], _IssuerKeys] = {}
        self._ssl: dict[Path, ssl.SSLContext] = {}  # ca_file -> its context

    async def verify(self, token: str) -> SubjectToken:
        header, _ = split_jwt(token)
        claims = unverified_claims(token)
        iss = _issuer_named(claims)
        if iss is not None and self._own_issuer is not None and iss.rstrip("/") == self._own_issuer:
            raise AuthenticationError("own_token")
        entries = self._issuers.get(iss.rstrip("/")) if iss is not None else None
        if not entries or iss is None:
            raise AuthenticationError("wrong_issuer")
        alg = header["alg"]
        if alg.upper().startswith("HS") or alg.lower() == "none":
            raise AuthenticationError("unsupported_alg")
        entries = [conf for conf in entries if alg in conf.algorithms]
        if not entries:
            raise AuthenticationError("unsupported_alg")
        kid = header.get("kid")
        if kid is not None and not isinstance(kid, str):
            raise AuthenticationError("bad_header")
        taken: list[SubjectToken] = []
        refusal: AuthenticationError | None = None
        for conf in entries:
            try:
                taken.append(await self._verify_for(conf, token, claims, kid, alg))
            except AuthenticationError as exc:
                refusal = refusal or exc
        if len({subject.deployment for subject in taken}) > 1:
            raise AuthenticationError("ambiguous_subject")
        if taken:
            return taken[0]
        assert refusal is not None
        raise refusal

    async def _verify_for(
        self, conf: OidcIssuer, token: str, unverified: dict[str, Any], kid: str | None, alg: str
    ) -> SubjectToken:
        if _unpinned(conf):
            raise AuthenticationError("entry_unpinned")
        jwk = await self._key_for(conf, kid, alg)
        spiffe = conf.issuer.startswith(SPIFFE_SCHEME)
        # A JWT-SVID without ``iss`` (SPIRE's default) is checked without one; one that has
        # an ``iss`` must name the entry's issuer like any other token.
        iss = unverified.get("iss") if spiffe else conf.issuer
        claims = verified_claims(
            token,
            jwk.key,
            alg=alg,
            audience=conf.audience,
            issuer=iss if isinstance(iss, str) else None,  # type: ignore[arg-type]
            leeway=self._leeway,
            require=("exp", "aud", "sub") if spiffe else ("exp", "iss", "aud", "sub"),
        )
        if not _only_our_audiences(claims.get("aud"), conf.audience):
            raise AuthenticationError("foreign_audience")
        sub = claims.get("sub")
        if not isinstance(sub, str) or not any(
            fnmatch.fnmatchcase(sub, pattern) for pattern in conf.subjects
        ):
            raise AuthenticationError("subject_not_allowed")
        if spiffe and not sub.startswith(conf.issuer.rstrip("/") + "/"):
            raise AuthenticationError("subject_not_allowed")  # another trust domain
        if (spiffe or sub.startswith(SPIFFE_SCHEME)) and not _spiffe_id(sub):
            # also from an https issuer (SPIRE's OIDC discovery provider): "*" spans "/"
            raise AuthenticationError("subject_not_allowed")
        for path, globs in conf.claims.items():
            if not claim_matches(claims, path, globs):
                raise AuthenticationError(f"claim_not_allowed:{path}")
        if _past_warnafter(claims, time.time() - self._leeway):
            raise AuthenticationError("stale_token")
        return SubjectToken(conf, sub, claims)

    # -- keys ---------------------------------------------------------------------------------
    async def _key_for(self, conf: OidcIssuer, kid: str | None, alg: str) -> jwt.PyJWK:
        source = (conf.issuer.rstrip("/"), str(conf.jwks_uri), str(conf.jwks_file))
        entry = self._cache.setdefault(source, _IssuerKeys())
        # Stale keys are refetched too, so a key the IdP withdrew stops working within max_age;
        # a JWKS file that changed on disk is stale at once (a rotated trust bundle).
        changed = conf.jwks_file is not None and _stamp(conf.jwks_file) != entry.file_stamp
        stale = changed or time.monotonic() - entry.keys_at >= self._max_age
        jwk = None if stale else _pick(entry.keys, kid, alg)
        if jwk is None:
            async with entry.lock:
                jwk = _pick(entry.keys, kid, alg)  # another request may have refetched
                due = changed or time.monotonic() - entry.fetched_at >= self._refetch_interval
                if (jwk is None or stale) and due:
                    entry.fetched_at = time.monotonic()
                    if conf.jwks_file is not None:
                        entry.file_stamp = _stamp(conf.jwks_file)
                    fetched = await self._fetch_jwks(conf)
                    if fetched is not None:
                        entry.keys, entry.keys_at = fetched, entry.fetched_at
                    elif stale:
                        entry.keys = {}  # keys past max_age are not vouched for: fail closed
                    # else: a refetch for an unknown kid failed; the keys in hand are within
                    # max_age and stay (anyone can send a kid that makes us refetch, so a
                    # blip of the issuer at that moment must not refuse every worker)
                    jwk = _pick(entry.keys, kid, alg)
        if jwk is None:
            raise AuthenticationError("unknown_kid")
        return jwk

    async def _fetch_jwks(self, conf: OidcIssuer) -> dict[str, Jwk] | None:
        """The issuer's verification keys by kid; None when they could not be had."""
        try:
            if conf.jwks_file is not None:
                # A regular file only: a FIFO put in its place would hold the event loop
                doc = _json_object(read_regular_file(conf.jwks_file, _MAX_DOC_BYTES))
            else:
                doc = await self._get_json(await self._jwks_uri(conf), conf)
        except (aiohttp.ClientError, TimeoutError, OSError, ValueError) as exc:
            log.warning(
                "oidc key fetch failed",
                extra={"fields": {"issuer": conf.issuer, "error": type(exc).__name__}},
            )
            return None
        keys: dict[str, Jwk] = {}
        for raw in doc.get("keys", []) if isinstance(doc.get("keys"), list) else []:
            if not isinstance(raw, dict) or raw.get("kty") == "oct" or "d" in raw:
                continue  # symmetric or private material never counts as a verification key
            keys[str(raw.get("kid", ""))] = raw
        return keys

    async def _jwks_uri(self, conf: OidcIssuer) -> str:
        """The configured ``jwks_uri``, else the one the issuer's discovery names (only if
        that discovery names this very issuer); ValueError otherwise."""
        if conf.jwks_uri is not None:
            return conf.jwks_uri
        discovery = await self._get_json(
            conf.issuer.rstrip("/") + "/.well-known/openid-configuration", conf
        )
        named = discovery.get("issuer")
        if not isinstance(named, str) or named.rstrip("/") != conf.issuer.rstrip("/"):
            log.warning(
                "oidc discovery names another issuer", extra={"fields": {"issuer": conf.issuer}}
            )
            raise ValueError("discovery names another issuer")
        uri = discovery.get("jwks_uri")
        if not isinstance(uri, str):
            raise ValueError("discovery names no jwks_uri")
        if conf.issuer.startswith("https:") and not uri.startswith("https:"):
            # Another host is fine (OIDC Discovery allows it, Google does it); leaving TLS is
            # not: whoever sits on the network would pick the keys.
            log.warning(
                "oidc discovery names a jwks_uri outside https",
                extra={"fields": {"issuer": conf.issuer}},
            )
            raise ValueError("discovery names a jwks_uri outside https")
        return uri

    async def _get_json(self, url: str, conf: OidcIssuer) -> dict[str, Any]:
        if not private_channel(url):
            log.error(
                "oidc discovery and keys are fetched over https only (plain http to loopback "
                "alone): whoever sits on the network would choose the keys",
                extra={"fields": {"issuer": conf.issuer}},
            )
            raise ValueError("plain http to another host")
        session = await self._session()
        tls = self._ssl_for(conf.ca_file) if url.startswith("https:") else None
        async with session.get(
            url, timeout=self._timeout, allow_redirects=False, ssl=tls if tls else True
        ) as resp:
            if resp.status != 200:
                raise ValueError(f"HTTP {resp.status}")
            # read(n) answers with what has arrived so far: a key set in several packets
            # (Entra ID's, with its certificates) is read to its end, within the bound.
            body = bytearray()
            async for chunk in resp.content.iter_chunked(64 * 1024):
                body += chunk
                if len(body) > _MAX_DOC_BYTES:
                    raise ValueError("document too large")
            return _json_object(bytes(body))

    def _ssl_for(self, ca_file: Path | None) -> ssl.SSLContext | None:
        """The context that trusts only ``ca_file`` (None: the system's trust store)."""
        if ca_file is None:
            return None
        context = self._ssl.get(ca_file)
        if context is None:
            try:
                context = ssl.create_default_context(cafile=str(ca_file))
            except (OSError, ssl.SSLError) as exc:
                raise ValueError(f"cannot load CA file {ca_file}") from exc
            self._ssl[ca_file] = context
        return context


def _issuer_named(claims: dict[str, Any]) -> str | None:
    """The issuer a token names: its ``iss``, or for a JWT-SVID without one (SPIRE's
    default), the trust domain of its SPIFFE ID subject."""
    iss = claims.get("iss")
    if isinstance(iss, str):
        return iss
    sub = claims.get("sub")
    if iss is None and isinstance(sub, str) and sub.startswith(SPIFFE_SCHEME):
        domain = sub[len(SPIFFE_SCHEME) :].split("/", 1)[0]
        return SPIFFE_SCHEME + domain if domain else None
    return None


def claim_values(claims: dict[str, Any], path: str) -> list[object]:
    """Every claim dotted ``path`` can name: a key holding dots itself (``kubernetes.io``)
    is one reading, nested objects another (``{"kubernetes": {"io": ...}}``), a top-level
    key ``"kubernetes.io.namespace"`` a third. JSON nulls count as absent."""
    found: list[object] = []
    if claims.get(path) is not None:
        found.append(claims[path])
    for cut, char in enumerate(path):
        inner = claims.get(path[:cut]) if char == "." else None
        if isinstance(inner, dict):
            found.extend(claim_values(inner, path[cut + 1 :]))
    return found


def claim_value(claims: dict[str, Any], path: str) -> object:
    """The one claim at dotted ``path`` (see :func:`claim_values`); None when there is none
    or when two readings of the path reach claims (which one the issuer meant is unknown,
    and an attacker who controls one of them must not choose)."""
    found = claim_values(claims, path)
    return found[0] if len(found) == 1 else None


def claim_matches(claims: dict[str, Any], path: str, globs: str | list[str]) -> bool:
    """Whether the claim at ``path`` is a string (or integer) matching one of ``globs``;
    a missing or ambiguous claim, a boolean, a list or an object never matches (fails
    closed)."""
    value = claim_value(claims, path)
    if isinstance(value, bool) or not isinstance(value, str | int):
        return False
    patterns = [globs] if isinstance(globs, str) else globs
    return any(fnmatch.fnmatchcase(str(value), pattern) for pattern in patterns)


def _unpinned(entry: OidcIssuer) -> bool:
    """An entry that would take every subject of its issuer: a subject glob of wildcards
    only (``*``, ``**``, ``?*``) and no claims."""
    return not entry.claims and any(not glob.strip("*?") for glob in entry.subjects)


def _only_our_audiences(aud: object, ours: str | list[str]) -> bool:
    """Whether every audience a token names is one of the entry's (PyJWT checked that one
    is)."""
    accepted = {ours} if isinstance(ours, str) else set(ours)
    named = aud if isinstance(aud, list) else [aud]
    return bool(named) and all(isinstance(a, str) and a in accepted for a in named)


def _past_warnafter(claims: dict[str, Any], now: float) -> bool:
    """Whether a Kubernetes token outlived the lifetime its pod asked for. An API server
    that extends projected tokens (``--service-account-extend-token-expiration``, on by
    default) makes a one-hour token valid for a year and notes the hour in
    ``kubernetes.io.warnafter``; the kubelet replaces the file well before then, so only a
    token copied out of a pod (and kept after the pod is gone) is presented later."""
    k8s = claims.get("kubernetes.io")
    warnafter = k8s.get("warnafter") if isinstance(k8s, dict) else None
    if isinstance(warnafter, bool) or not isinstance(warnafter, int | float):
        return False
    return now > warnafter


def _spiffe_id(sub: str) -> bool:
    """Whether ``sub`` is a well-formed SPIFFE ID (no dot segments, nothing encoded)."""
    if not _SPIFFE_ID_RE.match(sub):
        return False
    segments = sub[len(SPIFFE_SCHEME) :].split("/")[1:]
    return not any(segment in (".", "..") for segment in segments)


def _stamp(path: Path) -> _FileStamp | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def _json_object(raw: bytes) -> dict[str, Any]:
    try:
        doc = json.loads(raw)
    except RecursionError:  # [[[[...]]]]: as unplaceable as any other bad JSON
        raise ValueError("nested too deeply") from None
    if not isinstance(doc, dict):
        raise ValueError("not a JSON object")
    return doc


def _pick(keys: dict[str, Jwk], kid: str | None, alg: str) -> jwt.PyJWK | None:
    """The JWK for ``kid`` that fits ``alg``; without a kid, only if exactly one fits."""
    kty = _KTY_FOR_ALG.get(alg[:2])
    candidates = list(keys.values()) if kid is None else [keys[kid]] if kid in keys else []
    fitting = [
        raw
        for raw in candidates
        if raw.get("kty") == kty
        and raw.get("alg") in (None, alg)
        and raw.get("use") in _SIGNING_USES
    ]
    if len(fitting) != 1:
        return None
    try:
        jwk = jwt.PyJWK(fitting[0], algorithm=alg)
    except jwt.PyJWTError:
        return None
    if isinstance(jwk.key, rsa.RSAPublicKey) and jwk.key.key_size < _MIN_RSA_BITS:
        return None  # as for a deployment's own key: no RSA key under 2048 bits
    return jwk
