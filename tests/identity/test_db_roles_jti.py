"""``/v1/revoke`` by jti drops a dynamic database role only for the deployment that owns it."""

from __future__ import annotations

from pathlib import Path

from lockgate.gateway.cql.dynamic_roles import DbRoles
from lockgate.identity import RevocationStore, TokenIssuer

from .conftest import mint_claims as mint


class RecordingRoles:
    """Stands in for one resource's DynamicRoles: records which jtis it was told to drop."""

    def __init__(self) -> None:
        self.dropped: list[str] = []

    async def revoke_jti(self, jti: str) -> list[str]:
        self.dropped.append(jti)
        return [f"lg_{jti}"]


async def test_a_jti_revoked_by_another_deployment_keeps_the_role(
    tmp_path: Path, issuer: TokenIssuer
) -> None:
    store = RevocationStore(tmp_path / "revocations.db")
    try:
        db = DbRoles([], _no_password, policy=None, revocations=store)
        fake = RecordingRoles()
        db.roles["orders-cql"] = fake  # type: ignore[assignment]
        claims = mint(issuer)  # deployment prod
        db._claims[("orders-cql", f"lg_{claims.jti}")] = claims
        db._forget_dropped = lambda: None  # type: ignore[method-assign]
        assert await db.on_revoke("jti", {"deployment": "staging", "jti": claims.jti}) == []
        assert fake.dropped == []
        dropped = await db.on_revoke("jti", {"deployment": "prod", "jti": claims.jti})
        assert dropped == [f"lg_{claims.jti}"] and fake.dropped == [claims.jti]
    finally:
        store.close()


async def _no_password(_resource: object) -> str:
    raise AssertionError("no role is issued here")
