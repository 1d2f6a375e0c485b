"""Attacks on the Cosmos DB profile riding the one HTTP exchange.

Each test is an attack a task (or whoever found its endpoint URL) could make; the fake
account's own request log (src/lockgate/demo/standins/cosmos) is the oracle for "reached the
upstream",
the audit trail and the captured log for "recorded, and recorded without a secret"."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import cast

import aiohttp
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from yarl import URL

from lockgate.config import HttpResource
from lockgate.credentials.cosmos import sign
from lockgate.errors import AuditUnavailable
from lockgate.gateway.http import HttpEngine, framing
from lockgate.gateway.http.profiles.cosmos.profile import CosmosProfile, _named, header_map
from lockgate.gateway.http.proxy import Proxy
from lockgate.gateway.http.resources import DROP_PREFIXES, ResourceState
from lockgate.identity import TaskIdentity
from tests.gateway.http import test_cosmos
from tests.gateway.http.conftest import raw_request
from tests.gateway.http.test_cosmos import Env

cosmos_env = test_cosmos.env  # the account and gateway of test_cosmos

DOCS = "dbs/sales/colls/orders/docs"
DOC = f"{DOCS}/o1"
FEED = ("POST", "docs", "dbs/sales/colls/orders")  # what a create or query signs


def _now() -> str:
    return time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime())


async def _send(
    env: Env,
    method: str,
    path: str,
    *,
    signed_as: tuple[str, str, str] | None = None,
    dag: str = "orders_load",
    headers: dict[str, str] | None = None,
    data: bytes | None = None,
) -> tuple[int, bytes, str]:
    """One request with a real token and its task key: (status, body, token).
    ``signed_as`` = (verb, resource type, link) the client signs (default: what it sends)."""
    token, claims = env.token(dag)
    x_date = _now()
    verb, rtype, link = signed_as or (method, "docs", DOC)
    all_headers = {
        "authorization": sign(env.task_key(claims.jti), verb, rtype, link, x_date),
        "x-ms-date": x_date,
        "x-ms-documentdb-partitionkey": '["eu"]',
        **(headers or {}),
    }
    async with (
        aiohttp.ClientSession() as s,
        s.request(method, f"{env.base}/_t/{token}/{path}", headers=all_headers, data=data) as r,
    ):
        return r.status, await r.read(), token


def _proxy(env: Env) -> Proxy:
    """The HTTP engine's request handler of the gateway under attack."""
    return cast(HttpEngine, env.gw.engines["http"]).proxy


def _data_requests(env: Env) -> list[object]:
    """What the account ran beyond account discovery."""
    return [r for r in env.fake.requests if r.path.strip("/")]


# -- a denied or unauthenticated request never reaches the account ----------------------------
async def test_a_signature_for_another_verb_is_refused_before_the_account(
    cosmos_env: Env,
) -> None:
    """A key holder signs a GET but sends a DELETE: the gateway would re-sign the DELETE."""
    env = cosmos_env
    status, _, _ = await _send(env, "DELETE", DOC, signed_as=("GET", "docs", DOC))
    assert status == 401
    assert _data_requests(env) == []
    failed = env.audit(event="auth_failed")
    assert failed and failed[-1].reason == "bad_signature"


async def test_a_signature_for_another_resource_is_refused_before_the_account(
    cosmos_env: Env,
) -> None:
    env = cosmos_env
    other = "dbs/sales/colls/secrets/docs/o1"
    status, _, _ = await _send(env, "GET", other, signed_as=("GET", "docs", DOC))
    assert status == 401
    assert _data_requests(env) == []


async def test_a_write_dressed_as_a_query_is_refused_and_audited(cosmos_env: Env) -> None:
    """Query markers next to an upsert marker: the account might run either; refused."""
    env = cosmos_env
    status, _, _ = await _send(
        env, "POST", DOCS, dag="finance_daily", signed_as=FEED,
        headers={"x-ms-documentdb-isquery": "True", "content-type": "application/query+json",
                 "x-ms-documentdb-is-upsert": "True"},
        data=b'{"query":"SELECT * FROM c","parameters":[]}',
    )  # fmt: skip
    assert status == 400
    assert _data_requests(env) == []
    denied = env.audit(event="denied")
    assert denied and denied[-1].rule == "cosmos-classify"


async def test_a_query_marker_hidden_as_hop_by_hop_is_neither_judged_nor_sent(
    cosmos_env: Env,
) -> None:
    """``Connection: x-ms-documentdb-is-upsert`` makes the upsert marker hop-by-hop: the
    gateway must either judge what it forwards or forward what it judged."""
    env = cosmos_env
    status, _, _ = await _send(
        env, "POST", DOCS, dag="finance_daily", signed_as=FEED,
        headers={"x-ms-documentdb-isquery": "True", "content-type": "application/query+json",
                 "x-ms-documentdb-is-upsert": "True",
                 "Connection": "keep-alive, x-ms-documentdb-is-upsert"},
        data=b'{"query":"SELECT * FROM c","parameters":[]}',
    )  # fmt: skip
    assert status == 200  # judged (and run) as the query it now is
    sent = _data_requests(env)
    assert len(sent) == 1
    assert not any(k.lower() == "x-ms-documentdb-is-upsert" for k in sent[0].headers)  # type: ignore[attr-defined]


async def test_a_denied_write_is_audited_and_never_sent(cosmos_env: Env) -> None:
    env = cosmos_env
    status, body, _ = await _send(
        env, "POST", DOCS, dag="finance_daily", signed_as=FEED,
        headers={"content-type": "application/json"}, data=b'{"id":"x","pk":"eu"}',
    )  # fmt: skip
    assert status == 403 and b"Lockgate denied write" in body
    assert _data_requests(env) == []
    denied = env.audit(event="denied")
    assert denied and (denied[-1].action, denied[-1].object) == ("write", "sales/orders")
    assert not env.audit(event="admitted")


@pytest.mark.parametrize(
    "header",
    [
        ("X-HTTP-Method-Override", "DELETE"),
        ("X-HTTP-Method", "DELETE"),
        ("X-Original-URL", "/dbs/sales"),
        ("Forwarded", "for=10.0.0.1"),
        ("X-Forwarded-For", "10.0.0.1"),
        ("X-Forwarded-Host", "account.documents.azure.com"),
        ("X-Real-IP", "10.0.0.1"),
        ("Date", "Mon, 01 Jan 2001 00:00:00 GMT"),
    ],
)
async def test_client_headers_the_account_could_honour_never_reach_it(
    cosmos_env: Env, header: tuple[str, str]
) -> None:
    env = cosmos_env
    status, _, _ = await _send(env, "GET", DOC, headers=dict([header]))
    assert status == 404  # read as the plain GET it was judged to be
    sent = _data_requests(env)
    assert len(sent) == 1 and sent[0].method == "GET"  # type: ignore[attr-defined]
    got = {k.lower(): v for k, v in sent[0].headers.items()}  # type: ignore[attr-defined]
    assert got.get(header[0].lower()) != header[1]
    assert sent[0].auth_type == "master"  # type: ignore[attr-defined]  # the gateway's key


async def test_a_second_authorization_header_is_refused(cosmos_env: Env) -> None:
    """Two Authorization headers: the gateway verifies one, an account might read the other."""
    env = cosmos_env
    token, claims = env.token()
    x_date = _now()
    good = sign(env.task_key(claims.jti), "GET", "docs", DOC, x_date)
    raw = (
        f"GET /cosmos/_t/{token}/{DOC} HTTP/1.1\r\nHost: g\r\nx-ms-date: {x_date}\r\n"
        f"authorization: {good}\r\nAuthorization: type%3Dmaster%26ver%3D1.0%26sig%3Dx\r\n"
        'x-ms-documentdb-partitionkey: ["eu"]\r\nConnection: close\r\n\r\n'
    ).encode()
    out = await raw_request(env.gw.http_port, raw)
    assert out.startswith((b"HTTP/1.1 400", b"HTTP/1.1 401")), out[:100]
    assert _data_requests(env) == []


# -- no token in a record or a log line -------------------------------------------------------
def _encoded(token: str) -> str:
    """The token with its dots percent-encoded: still the same path once normalised."""
    return token.replace(".", "%2E")


async def test_an_encoded_token_is_authenticated_like_the_plain_one(cosmos_env: Env) -> None:
    env = cosmos_env
    token, claims = env.token()
    x_date = _now()
    headers = {
        "authorization": sign(env.task_key(claims.jti), "GET", "docs", DOC, x_date),
        "x-ms-date": x_date,
        "x-ms-documentdb-partitionkey": '["eu"]',
    }
    url = f"{env.base}/_t/{_encoded(token)}/{DOC}"
    async with (
        aiohttp.ClientSession() as s,
        s.get(yarl_url(url), headers=headers) as r,
    ):
        assert r.status == 404, await r.text()  # the account answered: the token was found


def yarl_url(url: str) -> URL:
    """``url`` sent as written (aiohttp would otherwise decode its escapes)."""
    return URL(url, encoded=True)


@pytest.mark.parametrize("tail", ["dbs/%2F", "dbs/%ZZ", "dbs/%C0%AE"])
async def test_an_encoded_token_is_not_recorded_by_a_path_refusal(
    cosmos_env: Env, tail: str, caplog: pytest.LogCaptureFixture
) -> None:
    env = cosmos_env
    caplog.set_level(logging.DEBUG)
    token, _ = env.token()
    raw = (
        f"GET /cosmos/_t/{_encoded(token)}/{tail} HTTP/1.1\r\nHost: g\r\nConnection: close\r\n\r\n"
    ).encode()
    out = await raw_request(env.gw.http_port, raw)
    assert out.startswith(b"HTTP/1.1 400"), out[:100]
    signature = token.rsplit(".", 1)[1]
    records = env.gw.audit
    records.flush(5.0)
    dumped = repr([r.__dict__ if hasattr(r, "__dict__") else r for r in records.search()])
    assert signature not in dumped
    assert signature not in caplog.text


async def test_no_token_in_records_or_logs_for_every_cosmos_outcome(
    cosmos_env: Env, caplog: pytest.LogCaptureFixture
) -> None:
    """Allowed, denied, classification refusal, bad signature, too large, unknown resource."""
    env = cosmos_env
    caplog.set_level(logging.DEBUG)
    tokens = []
    tokens.append((await _send(env, "GET", DOC))[2])
    tokens.append((await _send(env, "POST", DOCS, dag="finance_daily",
                               signed_as=FEED,
                               headers={"content-type": "application/json"},
                               data=b'{"id":"x","pk":"eu"}'))[2])  # fmt: skip
    tokens.append((await _send(env, "GET", "dbs/sales/users/u1"))[2])
    tokens.append((await _send(env, "GET", "dbs/sales/colls/orders/nope/x"))[2])
    tokens.append((await _send(env, "GET", DOC, signed_as=("GET", "docs", "dbs/x")))[2])
    profile = _proxy(env).resources["cosmos"].profile
    assert profile is not None
    tokens.append((await _send(env, "PUT", DOC, data=b"x" * (profile.max_body + 1)))[2])
    token, _ = env.token()
    tokens.append(token)
    out = await raw_request(
        env.gw.http_port,
        f"GET /nosuch/_t/{token}/dbs HTTP/1.1\r\nHost: g\r\nConnection: close\r\n\r\n".encode(),
    )
    assert out.startswith(b"HTTP/1.1 404")
    env.gw.audit.flush(5.0)
    dumped = repr([vars(r) if hasattr(r, "__dict__") else r for r in env.gw.audit.search()])
    for tok in tokens:
        signature = tok.rsplit(".", 1)[1]
        assert signature not in dumped
        assert signature not in caplog.text


# -- an upstream credential the profile cannot sign with --------------------------------------
async def test_an_unusable_account_key_is_a_recorded_credential_failure(
    cosmos_env: Env, caplog: pytest.LogCaptureFixture
) -> None:
    """An operator stored a key that is not base64: nothing can be signed. The client gets
    the gateway's 503 naming the resource, and the admitted record gets its outcome."""
    env = cosmos_env
    env.gw.state.credentials.set(test_cosmos.CRED, "not-a-base64-key!")
    _proxy(env).forwarder._secrets.invalidate(test_cosmos.CRED)  # the operator's change, now
    status, _, _ = await _send(env, "GET", DOC)
    assert _data_requests(env) == []
    assert status == 503
    ahead = env.audit(event="admitted")
    errors = env.audit(event="upstream_error")
    assert len(ahead) == 1 and errors
    assert errors[-1].reason == "credential_unavailable"
    assert str(errors[-1].detail.get("ref", "")).endswith("/1")
    assert "not-a-base64-key" not in caplog.text


# -- durability: fsync ----------------------------------------------------------------------
class _SlowDevice:
    """The gateway's audit with ``durability: fsync`` on a device that syncs when told."""

    def __init__(self, audit: object) -> None:
        self._audit = audit
        self.futures: list[asyncio.Future[None]] = []

    def durable(self) -> asyncio.Future[None]:
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.futures.append(fut)
        return fut

    def __getattr__(self, name: str) -> object:
        return getattr(self._audit, name)


@pytest.mark.parametrize("synced", [True, False], ids=["synced", "sync-failed"])
async def test_with_fsync_the_account_sees_nothing_before_the_record_is_durable(
    cosmos_env: Env, synced: bool
) -> None:
    env = cosmos_env
    trail = _proxy(env).trail
    device = _SlowDevice(trail._audit)
    trail._audit = device  # type: ignore[assignment]
    sent = asyncio.ensure_future(_send(env, "DELETE", DOC))
    for _ in range(100):
        if device.futures:
            break
        await asyncio.sleep(0.02)
    assert device.futures and _data_requests(env) == []
    if synced:
        device.futures[-1].set_result(None)
    else:
        device.futures[-1].set_exception(AuditUnavailable("device refused the sync"))
    status, _, _ = await asyncio.wait_for(sent, 5)
    if synced:
        assert status == 404 and len(_data_requests(env)) == 1  # the account ran it
    else:
        assert status == 503 and _data_requests(env) == []
        assert [r.reason for r in env.audit(event="upstream_error")] == ["audit_unavailable"]


async def test_a_token_for_another_resource_is_refused_before_the_account(
    cosmos_env: Env,
) -> None:
    """Signed with the right task key for its jti, but minted for another resource."""
    env = cosmos_env
    token, claims = env.gw.issuer.mint(TaskIdentity("prod", "orders_load", "load", "r1", 1),
                                       "elsewhere", 600)  # fmt: skip
    x_date = _now()
    headers = {
        "authorization": sign(env.task_key(claims.jti), "GET", "docs", DOC, x_date),
        "x-ms-date": x_date,
        "x-ms-documentdb-partitionkey": '["eu"]',
    }
    async with (
        aiohttp.ClientSession() as s,
        s.get(f"{env.base}/_t/{token}/{DOC}", headers=headers) as r,
    ):
        assert r.status == 401
    assert _data_requests(env) == []
    failed = env.audit(event="auth_failed")
    assert failed and failed[-1].reason == "wrong_audience"


# -- what is judged is what is sent ---------------------------------------------------------
_NAMES = [
    "x-ms-documentdb-isquery", "X-MS-DOCUMENTDB-ISQUERY", "x_ms_documentdb_isquery",
    "x-ms-documentdb-is-upsert", "X-Ms-Documentdb-Is-Upsert", "x-ms-cosmos-is-batch-request",
    "x-ms-cosmos-batch-atomic", "x-ms-cosmos-is-query-plan-request",
    "x-ms-thinclient-proxy-operation-type", "content-type", "Content-Type", "content_type",
    "x-lockgate-x", "x-forwarded-for", "x-ms-version", "accept-encoding", "x-ms-date",
]  # fmt: skip
_VALUES = ["True", "true", "False", "application/query+json", "application/json", "Query", ""]


def _judged_and_sent(
    pairs: list[tuple[str, str]], hop: list[str]
) -> tuple[dict[str, str], dict[str, str]] | None:
    """(what classification reads, minus what the gateway sets itself; what is forwarded),
    or None for a request refused before classification."""
    lines = [f"{n}: {v}" for n, v in pairs]
    if hop:
        lines.append("Connection: " + ", ".join(hop))
    raw = ("POST /cosmos/x HTTP/1.1\r\nHost: g\r\n" + "".join(f"{x}\r\n" for x in lines)
           + "\r\n").encode()  # fmt: skip
    try:
        head = framing.parse_request_head(raw)
    except framing.FramingError:
        return None
    judged = header_map(head)
    if len(judged) != _named(head):
        return None  # a header named twice: refused before classification
    rs = ResourceState(
        HttpResource(name="cosmos", kind="http", upstream="http://127.0.0.1:9",
                     credential="c", profile="cosmos", cosmos={"database": "a"})
    )  # fmt: skip
    forwarded = rs.forwarded_headers(head, CosmosProfile.drop_headers, True)
    sent: dict[str, str] = {}
    for line in forwarded.decode("latin-1").split("\r\n"):
        if line:
            name, _, value = line.partition(": ")
            assert name.lower() not in sent, "a header forwarded twice"
            sent[name.lower()] = value
    gateway_set = rs.drop | CosmosProfile.drop_headers
    expected = {
        n: v for n, v in judged.items()
        if n.encode() not in gateway_set and not n.encode().startswith(DROP_PREFIXES)
    }  # fmt: skip
    return expected, sent


@given(
    pairs=st.lists(st.tuples(st.sampled_from(_NAMES), st.sampled_from(_VALUES)), max_size=8),
    hop=st.lists(st.sampled_from(_NAMES), max_size=2),
)
@settings(max_examples=300, deadline=None)
def test_the_headers_classification_reads_are_the_headers_the_account_gets(
    pairs: list[tuple[str, str]], hop: list[str]
) -> None:
    """Parity: every client header the classifier reads reaches the account with that value,
    and nothing else of the client's does (however names are cased, underscored, listed as
    hop-by-hop or repeated)."""
    both = _judged_and_sent(pairs, hop)
    if both is None:
        return
    expected, sent = both
    assert sent == expected


async def test_an_account_document_too_big_to_rewrite_is_refused_not_relayed(
    cosmos_env: Env,
) -> None:
    """The discovery answer is held whole to be rewritten: past the bound the client gets a
    recorded 502, never the account's own endpoint (the SDK would go around the gateway)."""
    env = cosmos_env
    real = "http://account.example:443/" + "a" * (1100 * 1024)
    env.fake.public_url = real
    status, body, _ = await _send(env, "GET", "", signed_as=("GET", "", ""))
    assert status == 502, body[:200]
    assert b"account.example" not in body
    errors = env.audit(event="upstream_error")
    assert errors and errors[-1].reason == "upstream_response_unusable"
