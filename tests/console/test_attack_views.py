"""The console's pages under attack: what a pipeline wrote into the audit trail (a DAG id, a
run id, an object) and what a signed-in person types into a form must never do more than
the page says. Each test is one attack that once worked, or one that must stay refused:
an operator lifting or setting an admin's deployment-wide kill switch through a DAG named
``*``, ..."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from lockgate.identity.revocation import ANY_DAG
from lockgate.state import State
from tests.console._views import signed_in
from tests.console.test_views_live import (
    Console,
    Trail,
    context_of,
    serve,
    state,
    trail,
)

__all__ = ["state", "trail"]  # the fixtures, imported


@pytest.fixture
async def operator(state: State, trail: Trail) -> AsyncIterator[Console]:
    async for c in serve(context_of(state, trail), signed_in("operator", "olivia")):
        yield c


@pytest.mark.parametrize("act", ["block_dag", "unblock_dag", "revoke_dag", "revoke_run"])
async def test_a_dag_named_star_is_refused_it_would_be_the_whole_deployment(
    state: State, trail: Trail, operator: Console, act: str
) -> None:
    """``*`` is how the store says "every DAG of a deployment": blocking DAG ``*`` of prod
    is blocking prod (an admin's action), and unblocking it lifts an admin's kill switch."""
    state.revocations.block("prod", None, "admin@example.com", "incident 7")
    form = {"act": act, "deployment": "prod", "dag": ANY_DAG, "run": "r1"}
    status, _ = await operator.get("/console/live/confirm", **form)
    assert status == 400
    status, _, _ = await operator.post(form)
    assert status == 400
    assert [(b.deployment, b.dag_id) for b in state.revocations.blocks()] == [("prod", "*")]
    assert not trail.rows("mint_unblocked") and not trail.rows("mint_blocked")
    assert not trail.rows("token_revoked")
