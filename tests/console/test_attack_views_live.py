"""The live page's actions under attack, continued (see test_attack_views.py): a run id
with glob characters revokes that run only, and each action's audit record names the human
who did it and the target exactly as typed."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from lockgate.console import views_live
from lockgate.errors import AuthenticationError
from lockgate.identity import TaskIdentity, TokenIssuer, TokenVerifier
from lockgate.state import State
from tests.console._views import signed_in
from tests.console.test_attack_views import Console, Trail, context_of, serve, state, trail

__all__ = ["state", "trail"]  # the fixtures, imported

RESOURCE = "orders-api"


@pytest.fixture
async def operator(state: State, trail: Trail) -> AsyncIterator[Console]:
    user = signed_in("operator", "olivia")
    async for c in serve(context_of(state, trail), views_live.add_routes, user):
        yield c


def token(st: State, run: str, dag: str = "etl") -> str:
    issuer = TokenIssuer(st.keys, st.config.issuer_url)
    minted, _ = issuer.mint(TaskIdentity("prod", dag, "load", run, 1), RESOURCE, 900)
    return minted


@pytest.mark.parametrize("run", ["*", "manual__*", "run-[12]", "run-?", "%", "run-1 OR 1=1"])
async def test_a_run_id_with_glob_characters_revokes_that_run_only(
    state: State, trail: Trail, operator: Console, run: str
) -> None:
    named, other = token(state, run), token(state, "run-1")
    check = TokenVerifier(state.keys, state.revocations, state.config.issuer_url)
    form = {"act": "revoke_run", "deployment": "prod", "dag": "etl", "run": run,
            "reason": "incident <7>"}  # fmt: skip
    status, _, _ = await operator.post(form)
    assert status == 303
    with pytest.raises(AuthenticationError):
        check.verify(named, RESOURCE)
    assert check.verify(other, RESOURCE)  # "*" or "run-?" matched no other run
    [record] = trail.rows("token_revoked")
    assert (record.deployment, record.dag_id, record.run_id) == ("prod", "etl", run)
    assert record.principal == "console:olivia" and record.reason == "incident <7>"
    assert record.detail == {"by": "olivia@example.com", "role": "operator", "via": "oidc"}
