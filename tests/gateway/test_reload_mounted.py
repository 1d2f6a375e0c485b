"""Live reload against a resource's own port (``listen``): the port stops serving a resource
whose ``listen`` was taken away or moved, as the docs say ("served on the http listener
only" until a restart)."""

from __future__ import annotations

import pytest

from lockgate.config import ListenerConfig, Listeners
from lockgate.gateway.http import HttpEngine

from .fakes import claims_for
from .test_engine import get, resource, shared, upstream  # noqa: F401  (fixture)


@pytest.mark.parametrize("new_listen", [None, ListenerConfig(port=1)], ids=["taken", "moved"])
async def test_an_own_port_stops_serving_a_resource_whose_listen_changed(
    upstream: str,  # noqa: F811
    new_listen: ListenerConfig | None,
) -> None:
    bundle = shared(**{"tok-a": claims_for("a")})
    engine = HttpEngine([resource("a", upstream, listen=ListenerConfig(port=0))], bundle)
    await engine.listen(Listeners(http=ListenerConfig(port=0)))
    try:
        own = f"http://127.0.0.1:{engine.ports['resource:a']}"
        base = f"http://127.0.0.1:{engine.ports['http']}"
        assert await get(f"{own}/x", "tok-a") == 200
        engine.update_resources([resource("a", upstream, listen=new_listen)])
        assert await get(f"{base}/a/x", "tok-a") == 200  # the http listener serves it
        assert await get(f"{own}/x", "tok-a") == 404  # its old port does not any more
    finally:
        await engine.close()


async def test_an_own_port_serves_a_resource_whose_listen_is_unchanged(
    upstream: str,  # noqa: F811
) -> None:
    listen = ListenerConfig(port=0)
    bundle = shared(**{"tok-a": claims_for("a")})
    engine = HttpEngine([resource("a", upstream, listen=listen)], bundle)
    await engine.listen(Listeners(http=ListenerConfig(port=0)))
    try:
        own = f"http://127.0.0.1:{engine.ports['resource:a']}"
        engine.update_resources([resource("a", "http://127.0.0.1:9", listen=listen)])
        engine.update_resources([resource("a", upstream, listen=listen)])
        assert await get(f"{own}/x", "tok-a") == 200
    finally:
        await engine.close()
