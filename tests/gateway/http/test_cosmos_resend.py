"""Every request the account receives is in the audit trail as often as it was sent.

The account's own request log (src/lockgate/demo/standins/cosmos) is the oracle: a request it ran
must
have an ``admitted`` record, and a second copy of it (a resend after a dropped answer, a
retry with another key version) must show in the outcome record's ``retries``."""

from __future__ import annotations

import asyncio
import contextlib
import time

import aiohttp

from lockgate.credentials.cosmos import sign
from tests.gateway.http import test_cosmos
from tests.gateway.http.test_cosmos import Env

cosmos_env = test_cosmos.env  # the account and gateway of test_cosmos

DOC = "dbs/sales/colls/orders/docs/o1"


async def _signed(env: Env, method: str, path: str, rtype: str, link: str, **kw: object) -> int:
    token, claims = env.token()
    x_date = time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime())
    headers = {
        "authorization": sign(env.task_key(claims.jti), method, rtype, link, x_date),
        "x-ms-date": x_date,
        "x-ms-documentdb-partitionkey": '["eu"]',
        **kw.pop("headers", {}),  # type: ignore[dict-item]
    }
    async with (
        aiohttp.ClientSession() as s,
        s.request(method, f"{env.base}/_t/{token}/{path}", headers=headers, **kw) as r,  # type: ignore[arg-type]
    ):
        await r.read()
        return r.status


async def test_a_resent_delete_is_counted_in_the_outcome(cosmos_env: Env) -> None:
    env = cosmos_env
    docs = env.fake.store.container("sales", "orders")
    doc = {"id": "o1", "pk": "eu"}
    docs.put(docs.pk_of(doc), doc, mode="create")
    env.fake.drop_answers(1)  # the account deletes, the answer is lost on the way back
    status = await _signed(env, "DELETE", DOC, "docs", DOC)
    ran = [r for r in env.fake.requests if r.method == "DELETE"]
    assert len(ran) == 2 and ran[0].operation is not None  # the first one did delete
    assert status == 404  # the resend found nothing left
    admitted = [r for r in env.audit(event="admitted") if r.action == "write"]
    outcome = [r for r in env.audit(event="allowed") if r.action == "write"]
    assert len(admitted) == 1 and len(outcome) == 1
    assert outcome[0].detail.get("retries") == len(ran) - 1


async def test_underscore_header_names_never_reach_the_account(cosmos_env: Env) -> None:
    env = cosmos_env
    status = await _signed(
        env, "GET", DOC, "docs", DOC,
        headers={"x_ms_documentdb_isquery": "True", "X_HTTP_Method_Override": "DELETE"},
    )  # fmt: skip
    assert status == 404
    got = env.fake.requests[-1]
    assert got.method == "GET"
    assert not [name for name in got.headers if "_" in name]


async def test_a_client_that_leaves_mid_request_leaves_an_outcome(cosmos_env: Env) -> None:
    """The account runs the request; the client is gone before the answer: the audit has
    the admitted record and one outcome for it."""
    env = cosmos_env
    env.fake.answer_delay = 0.6
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(0.3):
            await _signed(env, "GET", DOC, "docs", DOC)
    deadline = time.monotonic() + 10
    while not (outcomes := [r for r in env.audit() if r.event in ("allowed", "upstream_error")]):
        assert time.monotonic() < deadline, "no outcome record"
        await asyncio.sleep(0.1)
    assert [r.path for r in env.fake.requests if r.method == "GET"] == [f"/{DOC}"]
    admitted = [r for r in env.audit(event="admitted") if r.object == "sales/orders"]
    assert len(admitted) == 1
    assert len(outcomes) == 1 and outcomes[0].object == "sales/orders"
    assert str(outcomes[0].detail.get("ref", "")).endswith("/1")  # the admitted record's


async def test_a_query_string_never_reaches_the_account(cosmos_env: Env) -> None:
    env = cosmos_env
    status = await _signed(env, "GET", DOC + "?a=1", "docs", DOC)
    assert status == 400
    assert [r for r in env.fake.requests if r.path.endswith("/o1")] == []
    denied = env.audit(event="denied")
    assert denied and denied[-1].decision == "deny" and "query string" in str(denied[-1].reason)
