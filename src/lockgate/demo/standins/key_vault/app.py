"""An Azure Key Vault data plane, as far as secrets go, written from Microsoft's Key Vault
REST reference (api-version 7.4) and its authentication docs.

Routes (every one needs ``?api-version=`` of a version the service knows; else 400
``BadParameter``):

- ``GET /secrets/{name}[/]`` — the latest version: a disabled latest version is refused
  (403 ``SecretDisabled``), never replaced by an older enabled one;
- ``GET /secrets/{name}/{version}`` — one version;
- ``GET /secrets/{name}/versions`` — the versions' ids and attributes (no values);
- ``PUT /secrets/{name}`` ``{"value": ...}`` — a new version, which becomes the latest;
- ``PATCH /secrets/{name}/{version}`` ``{"attributes": {"enabled": false, "exp", "nbf"}}``.

A secret bundle is ``{"value", "id": "https://<vault>/secrets/<name>/<version>",
"attributes": {"enabled", "created", "updated", "recoveryLevel"[, "exp", "nbf"]}}``;
versions are 32 hex digits. ``exp`` and ``nbf`` are not enforced on a read: an expired or
not yet valid version is served like any other (Key Vault's "date-time controlled
operations"); only a disabled one is refused. Errors are ``{"error": {"code", "message"}}``:
404 ``SecretNotFound``, 403 ``Forbidden`` (innererror ``ForbiddenByRbac`` when the caller
holds no role on the vault, ``SecretDisabled`` for a disabled version).

Authentication: ``Authorization: Bearer <Entra ID access token>`` checked like a resource
server does (signature by the tenant's keys, issuer, ``aud`` https://vault.azure.net, time):
:class:`~lockgate.demo.standins.entra.EntraTrust`. Without a token, or with one that fails,
the answer is 401 with the challenge the SDKs read::

    WWW-Authenticate: Bearer authorization="https://login.windows.net/<tenant>",
                      resource="https://vault.azure.net"

``access_policies`` puts the vault on the access-policy model (403 ``Forbidden`` /
``AccessDenied`` "... does not have secrets get permission on key vault ...");
``allowed_addresses`` is its firewall (403 ``Forbidden`` / ``ForbiddenByFirewall`` "Client
address is not authorized and caller is not a trusted service.").
``readers`` (principal object ids or app ids holding *Key Vault Secrets User*; None: any
valid token) and ``writers`` (*Key Vault Secrets Officer*) play RBAC. ``requests`` records
each request (method, path, status, the token's ``appid`` -- never the token or a value).

Part of a stand-in for demos and tests, written from the public docs: not the service.
"""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from lockgate.demo.standins._serving import serve_stand_in
from lockgate.demo.standins.entra import EntraTrust, InvalidEntraToken

AUDIENCE = "https://vault.azure.net"
#: The data plane's api-versions (those azure-keyvault-secrets knows); others are refused.
API_VERSIONS = frozenset(
    {"2016-10-01", "7.0", "7.1", "7.2", "7.3", "7.4", "7.5", "7.6", "2025-07-01", "2026-04-01"}
)
LATEST_API_VERSION = "7.6"


CALLER_KEY = web.RequestKey("caller", set[str])


@dataclass
class SecretVersion:
    version: str
    value: str = field(repr=False)
    created: int
    enabled: bool = True
    expires: int | None = None  # attributes.exp (seconds since the epoch)
    not_before: int | None = None  # attributes.nbf


@dataclass
class SeenRequest:
    method: str
    path: str
    status: int
    appid: str | None


@dataclass
class FakeKeyVault:
    trust: EntraTrust
    tenant: str = "contoso-tenant"
    readers: set[str] | None = None
    #: A vault on the access-policy model instead of RBAC: caller (app id or object id) ->
    #: secret permissions ("get", "list", "set"); None: RBAC (readers/writers).
    access_policies: dict[str, set[str]] | None = None
    #: The vault's firewall: client addresses let through; None: public access.
    allowed_addresses: set[str] | None = None
    writers: set[str] | None = None
    secrets: dict[str, list[SecretVersion]] = field(default_factory=dict)
    requests: list[SeenRequest] = field(default_factory=list)
    base_url: str = ""
    available: bool = True  # False: every request is answered 503 (an outage)

    # -- what an operator does in the portal or with `az keyvault secret set` -----------
    def set_secret(
        self, name: str, value: str, *, expires: int | None = None, not_before: int | None = None
    ) -> str:
        """Add a version of ``name`` (the new latest); returns its version id."""
        version = secrets.token_hex(16)
        self.secrets.setdefault(name.lower(), []).append(
            SecretVersion(version, value, int(time.time()), True, expires, not_before)
        )
        return version

    def disable(self, name: str, version: str) -> None:
        for v in self.secrets.get(name.lower(), []):
            if v.version == version:
                v.enabled = False

    def secret_id(self, name: str, version: str) -> str:
        return f"{self.base_url}/secrets/{name}/{version}"

    # -- routes ----------------------------------------------------------------------------
    @web.middleware
    async def gate(self, request: web.Request, handler: Any) -> web.StreamResponse:
        seen = SeenRequest(request.method, request.path, 0, None)
        self.requests.append(seen)
        if not self.available:
            seen.status = 503
            return _error(503, "ServiceUnavailable", "The service is unavailable.")
        if "api-version" not in request.query:
            seen.status = 400
            return _error(400, "BadParameter", "The 'api-version' query parameter is missing.")
        if request.query["api-version"] not in API_VERSIONS:
            seen.status = 400
            return _error(400, "BadParameter", f"The specified version "
                          f"({request.query['api-version']}) is not recognized. Consider using "
                          f"the latest supported version ({LATEST_API_VERSION}).")  # fmt: skip
        auth = request.headers.get("Authorization", "")
        if not auth.lower().startswith("bearer "):
            seen.status = 401
            return self._challenge("AKV10000: Request is missing a Bearer or PoP token.")
        try:
            claims = await self.trust.check(auth[7:].strip(), (AUDIENCE, AUDIENCE + "/"))
        except InvalidEntraToken as exc:
            seen.status = 401
            return self._challenge(f"AKV10032: Invalid token: {exc}.")
        seen.appid = str(claims.get("appid") or claims.get("azp") or "")
        request[CALLER_KEY] = {seen.appid, str(claims.get("oid", ""))}
        client = request.remote or ""
        if self.allowed_addresses is not None and client not in self.allowed_addresses:
            seen.status = 403
            return _error(403, "Forbidden", "Client address is not authorized and caller is "
                          f"not a trusted service.\r\nClient address: {client}\r\nCaller: "
                          f"appid={seen.appid}\r\nVault: {self.name};location=westeurope",
                          inner="ForbiddenByFirewall")  # fmt: skip
        response: web.StreamResponse = await handler(request)
        seen.status = response.status
        return response

    def _challenge(self, message: str) -> web.Response:
        response = _error(401, "Unauthorized", message)
        response.headers["WWW-Authenticate"] = (
            f'Bearer authorization="https://login.windows.net/{self.tenant}", resource="{AUDIENCE}"'
        )
        return response

    def _allowed(self, request: web.Request, holders: set[str] | None) -> bool:
        return holders is None or bool(request[CALLER_KEY] & holders)

    @property
    def name(self) -> str:
        return "contoso-vault"

    def _refused(
        self, request: web.Request, holders: set[str] | None, permission: str, action: str
    ) -> web.Response | None:
        """403 when the caller may not: by an access policy without ``permission`` (inner
        error ``AccessDenied``), or, on an RBAC vault, without a role (``ForbiddenByRbac``)."""
        if self.access_policies is not None:
            callers: set[str] = request[CALLER_KEY]
            granted = {p for c in callers for p in self.access_policies.get(c, set())}
            if permission in granted:
                return None
            appid = min(callers, default="")
            return _error(403, "Forbidden", f"The user, group or application 'appid={appid}' "
                          f"does not have secrets {permission} permission on key vault "
                          f"'{self.name};location=westeurope'. For help resolving this issue, "
                          "please see https://go.microsoft.com/fwlink/?linkid=2125287",
                          inner="AccessDenied")  # fmt: skip
        return None if self._allowed(request, holders) else _forbidden_by_rbac(action)

    async def get_secret(self, request: web.Request) -> web.Response:
        refused = self._refused(
            request, self.readers, "get", "Microsoft.KeyVault/vaults/secrets/getSecret/action"
        )
        if refused is not None:
            return refused
        name, version = request.match_info["name"], request.match_info.get("version", "")
        held = self.secrets.get(name.lower())
        if not held:
            return _error(404, "SecretNotFound", f"A secret with (name/id) {name} was not found "
                          "in this key vault.")  # fmt: skip
        # The latest is the last version written, enabled or not.
        found = next((v for v in held if v.version == version), None) if version else held[-1]
        if found is None:
            return _error(404, "SecretNotFound", f"A secret with (name/id) {name}/{version} was "
                          "not found in this key vault.")  # fmt: skip
        if not found.enabled:
            return _error(403, "Forbidden", "Operation get is not allowed on a disabled secret.",
                          inner="SecretDisabled")  # fmt: skip
        return web.json_response(self._bundle(name, found, with_value=True))

    async def list_versions(self, request: web.Request) -> web.Response:
        refused = self._refused(
            request, self.readers, "list", "Microsoft.KeyVault/vaults/secrets/readMetadata/action"
        )
        if refused is not None:
            return refused
        name = request.match_info["name"]
        held = self.secrets.get(name.lower(), [])
        return web.json_response(
            {"value": [self._bundle(name, v, with_value=False) for v in held], "nextLink": None}
        )

    async def put_secret(self, request: web.Request) -> web.Response:
        writers = self.writers if self.writers is not None else self.readers
        refused = self._refused(
            request, writers, "set", "Microsoft.KeyVault/vaults/secrets/setSecret/action"
        )
        if refused is not None:
            return refused
        body = await request.json()
        value = body.get("value") if isinstance(body, dict) else None
        if not isinstance(value, str):
            return _error(400, "BadParameter", "Property value is required.")
        name = request.match_info["name"]
        version = self.set_secret(name, value)
        return web.json_response(
            self._bundle(name, self.secrets[name.lower()][-1], with_value=True)
            | {"id": self.secret_id(name, version)}
        )

    async def patch_secret(self, request: web.Request) -> web.Response:
        writers = self.writers if self.writers is not None else self.readers
        refused = self._refused(
            request, writers, "set", "Microsoft.KeyVault/vaults/secrets/setSecret/action"
        )
        if refused is not None:
            return refused
        body = await request.json()
        name, version = request.match_info["name"], request.match_info["version"]
        found = next((v for v in self.secrets.get(name.lower(), []) if v.version == version), None)
        if found is None:
            return _error(404, "SecretNotFound", f"A secret with (name/id) {name}/{version} was "
                          "not found in this key vault.")  # fmt: skip
        attributes = body.get("attributes", {}) if isinstance(body, dict) else {}
        if isinstance(attributes.get("enabled"), bool):
            found.enabled = attributes["enabled"]
        for key, attr in (("exp", "expires"), ("nbf", "not_before")):
            if key in attributes and (attributes[key] is None or isinstance(attributes[key], int)):
                setattr(found, attr, attributes[key])
        return web.json_response(self._bundle(name, found, with_value=False))

    def _bundle(self, name: str, v: SecretVersion, *, with_value: bool) -> dict[str, Any]:
        bundle: dict[str, Any] = {
            "id": self.secret_id(name, v.version),
            "attributes": {"enabled": v.enabled, "created": v.created, "updated": v.created,
                           "recoveryLevel": "Recoverable+Purgeable", "recoverableDays": 90},
            "tags": {},
        }  # fmt: skip
        if v.expires is not None:
            bundle["attributes"]["exp"] = v.expires
        if v.not_before is not None:
            bundle["attributes"]["nbf"] = v.not_before
        if with_value:
            bundle["value"] = v.value
        return bundle


def _error(status: int, code: str, message: str, *, inner: str | None = None) -> web.Response:
    error: dict[str, Any] = {"code": code, "message": message}
    if inner:
        error["innererror"] = {"code": inner}
    return web.json_response({"error": error}, status=status)


def _forbidden_by_rbac(action: str) -> web.Response:
    return _error(
        403,
        "Forbidden",
        f"Caller is not authorized to perform action on resource. Action: '{action}'",
        inner="ForbiddenByRbac",
    )


def make_app(vault: FakeKeyVault) -> web.Application:
    app = web.Application(middlewares=[vault.gate])
    app.router.add_get("/secrets/{name}/versions", vault.list_versions)
    app.router.add_get("/secrets/{name}", vault.get_secret)
    app.router.add_get("/secrets/{name}/", vault.get_secret)
    app.router.add_get("/secrets/{name}/{version}", vault.get_secret)
    app.router.add_put("/secrets/{name}", vault.put_secret)
    app.router.add_patch("/secrets/{name}/{version}", vault.patch_secret)
    return app


async def start(vault: FakeKeyVault, port: int = 0, ssl_context: Any = None) -> web.AppRunner:
    """Serve on 127.0.0.1 (HTTPS when ``ssl_context``); sets ``vault.base_url``."""
    return await serve_stand_in(vault, make_app(vault), port, ssl_context)
