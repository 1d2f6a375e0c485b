"""A HashiCorp Vault / OpenBao server, as far as KV version 2, AppRole, JWT auth and tokens
go, written from Vault's HTTP API docs.

Routes (all under ``/v1``; ``X-Vault-Namespace: <ns>`` selects a namespace; a token works
only in the namespace it was issued in):

- ``POST /v1/auth/approle/login`` ``{"role_id", "secret_id"}`` -> ``{"auth": {...}}``;
  a wrong pair is 400 ``invalid role or secret ID``;
- ``POST /v1/auth/jwt/login`` ``{"role", "jwt"}``: the JWT's signature by a key of the
  configured ``jwks_url`` (RS256/ES256 here; Vault also takes RS384/512, ES384/512, PS*,
  EdDSA), ``iss`` = ``bound_issuer`` when set, ``sub`` = ``bound_subject`` when set,
  ``aud`` holding one of the role's ``bound_audiences``, ``iat``/``nbf``/``exp`` with 60 s
  clock skew (``exp`` optional: ``iat`` + 150 s), every ``bound_claims`` entry; else 400
  with Vault's words (``error validating token: invalid subject (sub) claim``, ...);
- ``POST /v1/auth/token/renew-self``, ``GET /v1/auth/token/lookup-self``;
- ``GET /v1/{mount}/data/{path}[?version=N]`` -> ``{"data": {"data": {...}, "metadata":
  {"version", "created_time", "deletion_time", "destroyed", "custom_metadata"}}}``; a
  deleted or destroyed version is a 404 with that body, ``data`` null (never an older
  version in its place);
  ``POST|PUT /v1/{mount}/data/{path}`` ``{"data": {...}}`` writes a version;
  ``DELETE /v1/{mount}/data/{path}`` soft-deletes the latest version; ``POST
  /v1/{mount}/{delete,undelete,destroy}/{path}`` ``{"versions": [...]}`` (204);
  ``GET /v1/{mount}/metadata/{path}``; ``GET /v1/sys/health``.

Answers carry ``request_id``, ``lease_id``, ``renewable``, ``lease_duration``, ``data``,
``wrap_info``, ``warnings``, ``auth``. Errors are ``{"errors": [...]}``: 403 ``permission
denied`` (no, expired or foreign-namespace token) or, from a policy without the capability,
Vault's multierror text ``1 error occurred:\n\t* permission denied\n\n``; 404 ``[]`` (no
such secret or version), 400 for bad logins.

Tokens carry policies; a policy here is a list of ``(path glob, capabilities)``. Token TTL:
``token_ttl`` per role, renewable up to ``token_max_ttl``. ``requests`` records each request
(method, path, namespace, status) -- never a token, a secret id, a JWT or a value.

Part of a stand-in for demos and tests, written from the public docs: not the service.
"""

from __future__ import annotations

import fnmatch
import json
import secrets
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jwt
from aiohttp import web

from lockgate.demo.standins._serving import serve_stand_in
from lockgate.demo.standins.entra.issuer_keys import IssuerKeyError, IssuerKeys, verify_signature

LEEWAY = 60  # a jwt role's clock_skew_leeway (default 60 s)
DEFAULT_LEEWAY = 150  # its expiration_leeway and not_before_leeway (default 150 s)
#: What Vault answers a policy's refusal: the text of a one-error multierror.
POLICY_DENIED = "1 error occurred:\n\t* permission denied\n\n"
#: A policy: (path glob under the namespace, capabilities), e.g. ("secret/data/app/*", {"read"}).
Policy = list[tuple[str, set[str]]]


NAMESPACE_KEY = web.RequestKey("namespace", str)


@dataclass
class AppRole:
    role_id: str
    secret_ids: set[str] = field(default_factory=set, repr=False)
    policies: list[str] = field(default_factory=list)
    token_ttl: int = 3600
    token_max_ttl: int = 86400


@dataclass
class JwtRole:
    bound_audiences: list[str]
    bound_subject: str | None = None
    bound_claims: dict[str, Any] = field(default_factory=dict)
    policies: list[str] = field(default_factory=list)
    token_ttl: int = 3600
    token_max_ttl: int = 86400


@dataclass
class _Token:
    namespace: str
    policies: list[str]
    issued_at: float
    ttl: int
    max_until: float
    renewable: bool = True

    def expires_at(self) -> float:
        return self.issued_at + self.ttl


@dataclass
class _KvVersion:
    data: dict[str, Any] | None = field(repr=False)
    created_time: str
    destroyed: bool = False
    deletion_time: str = ""  # set by a soft delete, cleared by an undelete


@dataclass
class SeenRequest:
    method: str
    path: str
    namespace: str
    status: int = 0


@dataclass
class FakeVault:
    jwks_url: str | None = None
    jwks_ca: Path | str | None = None
    bound_issuer: str | None = None
    approle_roles: dict[str, AppRole] = field(default_factory=dict)  # role name -> role
    jwt_roles: dict[str, JwtRole] = field(default_factory=dict)
    policies: dict[str, Policy] = field(default_factory=dict)
    namespaces: set[str] = field(default_factory=lambda: {""})
    kv: dict[tuple[str, str, str], list[_KvVersion]] = field(default_factory=dict)
    requests: list[SeenRequest] = field(default_factory=list)
    base_url: str = ""
    available: bool = True  # False: 503 for everything (sealed / down)
    logins: int = 0
    clock: Callable[[], float] = time.time  # token times (tests move it)

    def __post_init__(self) -> None:
        self._tokens: dict[str, _Token] = {}
        self._keys = IssuerKeys(self.jwks_ca, allow_http=True)

    # -- what an operator does with the vault CLI --------------------------------------------
    def add_approle(self, name: str, *, policies: list[str], token_ttl: int = 3600,
                    token_max_ttl: int = 86400) -> tuple[str, str]:  # fmt: skip
        """``vault write auth/approle/role/<name>``: returns (role_id, a new secret_id)."""
        role = AppRole(str(uuid.uuid4()), {str(uuid.uuid4())}, policies, token_ttl, token_max_ttl)
        self.approle_roles[name] = role
        return role.role_id, next(iter(role.secret_ids))

    def put(self, path: str, data: dict[str, Any], *, mount: str = "secret",
            namespace: str = "") -> int:  # fmt: skip
        """``vault kv put``: a new version of ``mount/path``; returns its number."""
        versions = self.kv.setdefault((namespace, mount, path.strip("/")), [])
        versions.append(_KvVersion(dict(data), _now_rfc3339()))
        return len(versions)

    def destroy(self, path: str, version: int, *, mount: str = "secret",
                namespace: str = "") -> None:  # fmt: skip
        """``vault kv destroy -versions=N``: the data is gone for good."""
        v = self.kv[(namespace, mount, path.strip("/"))][version - 1]
        v.data, v.destroyed = None, True

    def delete(self, path: str, version: int | None = None, *, mount: str = "secret",
               namespace: str = "") -> None:  # fmt: skip
        """``vault kv delete [-versions=N]``: a soft delete (the latest version by default);
        reads of that version are 404 until it is undeleted."""
        versions = self.kv[(namespace, mount, path.strip("/"))]
        versions[(version or len(versions)) - 1].deletion_time = _now_rfc3339()

    def revoke_all_tokens(self) -> None:
        self._tokens.clear()

    # -- plumbing ----------------------------------------------------------------------------
    @web.middleware
    async def gate(self, request: web.Request, handler: Any) -> web.StreamResponse:
        namespace = request.headers.get("X-Vault-Namespace", "").strip("/")
        seen = SeenRequest(request.method, request.path, namespace)
        self.requests.append(seen)
        if not self.available:
            seen.status = 503
            return _errors(503, ["Vault is sealed"])
        if namespace not in self.namespaces:
            # Vault answers a namespace it does not have as a denied request.
            seen.status = 403
            return _errors(403, ["permission denied"])
        request[NAMESPACE_KEY] = namespace
        response: web.StreamResponse = await handler(request)
        seen.status = response.status
        return response

    def _caller(self, request: web.Request) -> _Token | None:
        value = request.headers.get("X-Vault-Token", "")
        if not value and request.headers.get("Authorization", "").startswith("Bearer "):
            value = request.headers["Authorization"][7:]
        token = self._tokens.get(value)
        if token is None or token.namespace != request[NAMESPACE_KEY]:
            return None
        if self.clock() >= token.expires_at():
            self._tokens.pop(value, None)
            return None
        return token

    def _may(self, token: _Token, path: str, capability: str) -> bool:
        for name in token.policies:
            for glob, capabilities in self.policies.get(name, []):
                if fnmatch.fnmatchcase(path, glob) and capability in capabilities:
                    return True
        return False

    def _issue(self, namespace: str, policies: list[str], ttl: int, max_ttl: int,
               metadata: dict[str, str]) -> web.Response:  # fmt: skip
        value = "hvs." + secrets.token_urlsafe(24)
        now = self.clock()
        self._tokens[value] = _Token(namespace, ["default", *policies], now, ttl, now + max_ttl)
        self.logins += 1
        return _answer(auth={
            "client_token": value, "accessor": secrets.token_urlsafe(18),
            "policies": ["default", *policies], "token_policies": ["default", *policies],
            "metadata": metadata, "lease_duration": ttl, "renewable": True,
            "entity_id": str(uuid.uuid4()), "token_type": "service", "orphan": True,
        })  # fmt: skip

    # -- auth --------------------------------------------------------------------------------
    async def approle_login(self, request: web.Request) -> web.Response:
        body = await _body(request)
        role_id, secret_id = body.get("role_id"), body.get("secret_id")
        # Vault's order and words (builtin/credential/approle/path_login.go): no role_id,
        # an unknown one, no secret_id, a wrong one; all 400.
        if not isinstance(role_id, str) or not role_id.strip():
            return _errors(400, ["missing role_id"])
        found = [(n, r) for n, r in self.approle_roles.items() if r.role_id == role_id.strip()]
        if not found:
            return _errors(400, ["invalid role or secret ID"])
        name, role = found[0]
        if not isinstance(secret_id, str) or not secret_id.strip():
            return _errors(400, ["missing secret_id"])
        if secret_id.strip() not in role.secret_ids:
            return _errors(400, ["invalid role or secret ID"])
        return self._issue(request[NAMESPACE_KEY], role.policies, role.token_ttl,
                           role.token_max_ttl, {"role_name": name})  # fmt: skip

    async def jwt_login(self, request: web.Request) -> web.Response:
        body = await _body(request)
        name = str(body.get("role") or "")
        role = self.jwt_roles.get(name)
        if role is None:
            return _errors(400, [f'role "{name}" could not be found' if name else "missing role"])
        token = body.get("jwt")
        if not isinstance(token, str) or not token or self.jwks_url is None:
            return _errors(400, ["missing token"])
        try:
            header = jwt.get_unverified_header(token)
            alg = str(header.get("alg", ""))
            if alg not in ("RS256", "ES256"):
                raise jwt.InvalidAlgorithmError(alg)
            claims = verify_signature(
                token, await self._keys.key_at(self.jwks_url, header.get("kid")), alg
            )
        except (jwt.PyJWTError, IssuerKeyError) as exc:
            return _errors(400, ["error validating token: error verifying token signature: "
                                 f"{type(exc).__name__}"])  # fmt: skip
        refusal = self._jwt_refusal(role, claims)
        if refusal is not None:
            return _errors(400, [refusal])
        return self._issue(request[NAMESPACE_KEY], role.policies, role.token_ttl,
                           role.token_max_ttl, {"role": name})  # fmt: skip

    def _jwt_refusal(self, role: JwtRole, claims: dict[str, Any]) -> str | None:
        """What Vault's jwt auth says of a signed token's claims, in its order: issuer,
        subject, audience, times (hashicorp/cap jwt.Validator.Validate, each prefixed
        "error validating token: "), then bound claims ("error validating claims: ",
        vault-plugin-auth-jwt path_login.go and claims.go)."""
        if self.bound_issuer and claims.get("iss") != self.bound_issuer:
            return "error validating token: invalid issuer (iss) claim"
        if role.bound_subject and claims.get("sub") != role.bound_subject:
            return "error validating token: invalid subject (sub) claim"
        audiences = claims.get("aud")
        audiences = [audiences] if isinstance(audiences, str) else list(audiences or [])
        if role.bound_audiences and not set(audiences) & set(role.bound_audiences):
            return ("error validating token: invalid audience (aud) claim: audience claim "
                    "does not match any expected audience")  # fmt: skip
        times = [claims.get(c) for c in ("iat", "nbf", "exp")]
        iat, nbf, exp = (float(t) if isinstance(t, int | float) else 0.0 for t in times)
        if not (iat or nbf or exp):
            return ("error validating token: no issued at (iat), not before (nbf), or "
                    "expiration time (exp) claims in token")  # fmt: skip
        # No exp: Vault takes the later of iat and nbf plus the expiration leeway (150 s).
        exp = exp or max(iat, nbf) + DEFAULT_LEEWAY
        nbf = nbf or iat or exp - DEFAULT_LEEWAY
        now = self.clock()
        if now + LEEWAY < nbf:
            return "error validating token: invalid not before (nbf) claim: token not yet valid"
        if now - LEEWAY > exp:
            return "error validating token: invalid expiration time (exp) claim: token is expired"
        if iat and now + LEEWAY < iat:
            return ("error validating token: invalid issued at (iat) claim: token issued in "
                    "the future")  # fmt: skip
        if not role.bound_audiences and audiences:
            return "audience claim found in JWT but no audiences bound to the role"
        for claim, wanted in role.bound_claims.items():
            allowed = wanted if isinstance(wanted, list) else [wanted]
            if claim not in claims:
                return f'error validating claims: claim "{claim}" is missing'
            if claims[claim] not in allowed:
                return (f'error validating claims: claim "{claim}" does not match any '
                        "associated bound claim values")  # fmt: skip
        return None

    async def renew_self(self, request: web.Request) -> web.Response:
        token = self._caller(request)
        if token is None:
            return _errors(403, ["permission denied"])
        value = request.headers.get("X-Vault-Token", "")
        now = self.clock()
        body = await _body(request)
        wanted = int(body.get("increment", 0) or 0) or self._role_ttl(token)
        # Renewal restarts the lease from now, never past the token's max TTL.
        token.ttl = int(min(wanted, token.max_until - now))
        token.issued_at = now
        return _answer(
            auth={
                "client_token": value,
                "policies": token.policies,
                "token_policies": token.policies,
                "lease_duration": token.ttl,
                "renewable": token.ttl > 0,
                "metadata": {},
            },
            warnings=(
                ["TTL of the token was capped by its max TTL"] if token.ttl < wanted else None
            ),
        )

    def _role_ttl(self, token: _Token) -> int:
        return max(1, round(token.ttl))

    async def lookup_self(self, request: web.Request) -> web.Response:
        token = self._caller(request)
        if token is None:
            return _errors(403, ["permission denied"])
        return _answer(data={
            "policies": token.policies, "ttl": int(token.expires_at() - self.clock()),
            "renewable": token.renewable,
            "namespace_path": token.namespace + ("/" if token.namespace else ""),
            "expire_time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(token.expires_at())),
        })  # fmt: skip

    # -- kv v2 -----------------------------------------------------------------------------
    async def secrets_engine(self, request: web.Request) -> web.Response:
        namespace, path = request[NAMESPACE_KEY], request.match_info["path"]
        mount, kind, secret_path = self._split(path)
        if kind is None:
            if path == "sys/health":
                return _json({"initialized": True, "sealed": False, "standby": False,
                              "version": "1.17.0"})  # fmt: skip
            return _errors(404, [])
        token = self._caller(request)
        capability = {"GET": "read", "POST": "create", "PUT": "update", "LIST": "list",
                      "DELETE": "delete"}.get(request.method, "read")  # fmt: skip
        if kind in ("delete", "undelete", "destroy"):
            capability = "update"
        if token is None:
            return _errors(403, ["permission denied"])
        if not (
            self._may(token, f"{mount}/{kind}/{secret_path}", capability)
            or (
                capability == "create"
                and self._may(token, f"{mount}/{kind}/{secret_path}", "update")
            )
        ):
            # Vault appends the ACL's refusal to a multierror and answers its text.
            return _errors(403, [POLICY_DENIED])
        versions = self.kv.get((namespace, mount, secret_path))
        if kind in ("delete", "undelete", "destroy") or request.method == "DELETE":
            return await self._version_states(request, kind, versions or [])
        if request.method in ("POST", "PUT") and kind == "data":
            body = await _body(request)
            data = body.get("data")
            if not isinstance(data, dict):
                return _errors(400, ["no data provided"])
            number = self.put(secret_path, data, mount=mount, namespace=namespace)
            v = self.kv[(namespace, mount, secret_path)][-1]
            return _answer(data=_metadata(v, number))
        if not versions:
            return _errors(404, [])
        if kind == "metadata":
            return _answer(data={
                "current_version": len(versions), "current_metadata_version": 1,
                "oldest_version": 0, "max_versions": 0, "cas_required": False,
                "metadata_cas_required": False, "delete_version_after": "0s",
                "created_time": versions[0].created_time,
                "updated_time": versions[-1].created_time, "custom_metadata": None,
                "versions": {str(i + 1): {"created_time": v.created_time, "destroyed":
                             v.destroyed, "deletion_time": v.deletion_time}
                             for i, v in enumerate(versions)},
            })  # fmt: skip
        wanted = request.query.get("version", "0")
        number = int(wanted) if wanted.isdigit() and int(wanted) > 0 else len(versions)
        if number > len(versions):
            return _errors(404, [])
        v = versions[number - 1]
        if v.deletion_time or v.destroyed:
            # Vault: a deleted or destroyed version is a 404 whose body has its metadata and
            # data null; the latest version deleted does not bring back the one before.
            answer = _answer(data={"data": None, "metadata": _metadata(v, number)})
            answer.set_status(404)
            return answer
        return _answer(data={"data": v.data, "metadata": _metadata(v, number)})

    async def _version_states(
        self, request: web.Request, kind: str, versions: list[_KvVersion]
    ) -> web.Response:
        """Soft delete (DELETE data/ or POST delete/), undelete, destroy: 204 No Content."""
        if request.method == "DELETE" and kind == "data":
            if versions and not versions[-1].destroyed:
                versions[-1].deletion_time = versions[-1].deletion_time or _now_rfc3339()
            return web.Response(status=204)
        body = await _body(request)
        numbers = body.get("versions")
        if not isinstance(numbers, list) or not numbers:
            return _errors(400, ["no version number provided"])
        for n in numbers:
            if not isinstance(n, int) or not 0 < n <= len(versions):
                continue  # Vault skips versions it does not hold
            v = versions[n - 1]
            if kind == "destroy":
                v.data, v.destroyed = None, True
            elif kind == "delete" and not v.destroyed:
                v.deletion_time = v.deletion_time or _now_rfc3339()
            elif kind == "undelete" and not v.destroyed:
                v.deletion_time = ""
        return web.Response(status=204)

    def _split(self, path: str) -> tuple[str, str | None, str]:
        """``<mount>/<kind>/<secret path>`` at the first KV v2 kind in the path."""
        parts = path.split("/")
        for i, part in enumerate(parts[1:], start=1):
            if part in ("data", "metadata", "delete", "undelete", "destroy"):
                return "/".join(parts[:i]), part, "/".join(parts[i + 1 :]).strip("/")
        return path, None, ""


def _now_rfc3339() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S.000000Z", time.gmtime())


def _metadata(v: _KvVersion, number: int) -> dict[str, Any]:
    return {"created_time": v.created_time, "custom_metadata": None,
            "deletion_time": v.deletion_time, "destroyed": v.destroyed,
            "version": number}  # fmt: skip


def _json(payload: dict[str, Any], status: int = 200) -> web.Response:
    # Vault's Content-Type is exactly application/json (no charset): clients such as hvac
    # read an error body's "errors" only then (sdk/logical/response_util.go RespondError).
    return web.Response(
        body=json.dumps(payload).encode(), status=status,
        headers={"Content-Type": "application/json"},
    )  # fmt: skip


def _answer(
    *, data: Any = None, auth: Any = None, warnings: list[str] | None = None
) -> web.Response:
    return _json({
        "request_id": str(uuid.uuid4()), "lease_id": "", "renewable": False,
        "lease_duration": 0, "data": data, "wrap_info": None, "warnings": warnings,
        "auth": auth, "mount_type": "kv" if data is not None and auth is None else "",
    })  # fmt: skip


def _errors(status: int, errors: list[str]) -> web.Response:
    return _json({"errors": errors}, status)


async def _body(request: web.Request) -> dict[str, Any]:
    try:
        body = await request.json()
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}


def make_app(vault: FakeVault) -> web.Application:
    app = web.Application(middlewares=[vault.gate])
    app.router.add_post("/v1/auth/approle/login", vault.approle_login)
    app.router.add_post("/v1/auth/jwt/login", vault.jwt_login)
    app.router.add_post("/v1/auth/token/renew-self", vault.renew_self)
    app.router.add_put("/v1/auth/token/renew-self", vault.renew_self)
    app.router.add_get("/v1/auth/token/lookup-self", vault.lookup_self)
    app.router.add_route("*", "/v1/{path:.+}", vault.secrets_engine)
    return app


async def start(vault: FakeVault, port: int = 0, ssl_context: Any = None) -> web.AppRunner:
    """Serve on 127.0.0.1 (HTTPS when ``ssl_context``); sets ``vault.base_url``."""
    return await serve_stand_in(vault, make_app(vault), port, ssl_context)
