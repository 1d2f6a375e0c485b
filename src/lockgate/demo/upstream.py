"""An App Service-style HTTP API that demands its own bearer secret, or an Entra ID token.

It stands in for a real upstream in the demo and the tests: it accepts the secrets in
``accepted`` (a set the caller may change at runtime, as a real service does during key
rotation), keeps a small in-memory ``orders`` collection, and records what each request
looked like on arrival so tests can check what the gateway forwarded.

With ``entra`` set it also accepts Microsoft Entra ID access tokens, the way App Service
authentication does for an API: an RS256 signature by the tenant's key set (fetched over
https), the configured issuer, one of the allowed token audiences, unexpired (5 minutes of
skew) and, when ``allowed_applications`` is set, a client application (``appid``/``azp``) on
that list. The caller's object id is recorded (``Seen.principal``), as App Service passes it
on in ``X-MS-CLIENT-PRINCIPAL-ID``.
"""

from __future__ import annotations

import hmac
import json
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from aiohttp import web
from aiohttp.typedefs import Handler

from lockgate.demo.standins._serving import serve
from lockgate.demo.standins.entra.resource_trust import EntraTrust, InvalidEntraToken

if TYPE_CHECKING:
    from lockgate.demo.standins.entra import FakeEntra


@dataclass
class Seen:
    method: str
    path: str
    authorization: str
    assertion: str | None
    body_len: int
    principal: str | None = None  # an Entra caller's object id (None: a secret, or refused)


@dataclass
class DemoUpstream:
    accepted: set[str]
    orders: dict[str, dict[str, Any]] = field(default_factory=dict)
    seen: list[Seen] = field(default_factory=list)
    keep_seen: int = 1000
    entra: EntraTrust | None = None  # its audiences: the API's allowed token audiences
    entra_applications: tuple[str, ...] = ()  # allowed client applications (empty: any)

    def trust_entra(
        self,
        entra: FakeEntra,
        *,
        audience: str | tuple[str, ...],
        allowed_applications: tuple[str, ...] = (),
    ) -> EntraTrust:
        """Accept tokens the test ``entra`` issues for ``audience`` (the App ID URI)."""
        self.entra = EntraTrust.of(entra, (audience,) if isinstance(audience, str) else audience)
        self.entra_applications = allowed_applications
        return self.entra

    def _authorised(self, request: web.Request) -> bool:
        header = request.headers.get("Authorization", "")
        if not header.startswith("Bearer "):
            return False
        presented = header[7:].encode()
        # Check every accepted secret, constant-time each, so timing says nothing.
        ok = False
        for secret in list(self.accepted):
            ok |= hmac.compare_digest(presented, secret.encode())
        return ok

    async def _entra_principal(self, request: web.Request) -> str | None:
        """The caller's object id when it sent an Entra token the API accepts, else None."""
        header = request.headers.get("Authorization", "")
        if self.entra is None or not header.startswith("Bearer ") or header.count(".") != 2:
            return None
        try:
            claims = await self.entra.check(header[7:])
        except InvalidEntraToken:
            return None
        app = claims.get("appid", claims.get("azp"))
        if self.entra_applications and app not in self.entra_applications:
            return None
        return str(claims.get("oid") or app)

    @web.middleware
    async def _auth(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        body = await request.read()
        principal = await self._entra_principal(request)
        if len(self.seen) < self.keep_seen:
            self.seen.append(
                Seen(
                    request.method,
                    request.path,
                    request.headers.get("Authorization", ""),
                    request.headers.get("X-Lockgate-Assertion"),
                    len(body),
                    principal,
                )
            )
        if principal is None and not self._authorised(request):
            return web.json_response(
                {"error": "unauthorized"},
                status=401,
                headers={"WWW-Authenticate": 'Bearer realm="orders"'},
            )
        return await handler(request)

    async def list_orders(self, request: web.Request) -> web.Response:
        return web.json_response({"orders": list(self.orders.values())})

    async def get_order(self, request: web.Request) -> web.Response:
        order = self.orders.get(request.match_info["oid"])
        if order is None:
            return web.json_response({"error": "not found"}, status=404)
        return web.json_response(order)

    async def put_order(self, request: web.Request) -> web.Response:
        try:
            order = json.loads(await request.read() or b"{}")
        except ValueError:
            return web.json_response({"error": "body is not JSON"}, status=400)
        oid = str(order.get("id") or request.match_info.get("oid") or len(self.orders) + 1)
        order["id"] = oid
        self.orders[oid] = order
        return web.json_response(order, status=201)

    async def health(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    def app(self) -> web.Application:
        app = web.Application(middlewares=[self._auth])
        app.router.add_get("/health", self.health)
        app.router.add_get("/orders", self.list_orders)
        app.router.add_post("/orders", self.put_order)
        app.router.add_get("/orders/{oid}", self.get_order)
        app.router.add_put("/orders/{oid}", self.put_order)
        return app


async def start_upstream(
    upstream: DemoUpstream, host: str = "127.0.0.1", port: int = 0
) -> tuple[web.AppRunner, int]:
    served = await serve(upstream.app(), port, host=host)
    return served.runner, served.port
