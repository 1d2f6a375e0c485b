"""The fake Cosmos DB account at the HTTP level, signed with Lockgate's own signer.

Two independent implementations of the signature (the fake's and ``lockgate.credentials.
cosmos``) must agree, and the fake must refuse everything that is not exactly right.
"""

from __future__ import annotations

import datetime as dt
import json
import ssl
import time
from collections.abc import AsyncIterator
from email.utils import formatdate
from pathlib import Path
from typing import Any

import aiohttp
import jwt
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from multidict import CIMultiDict

from lockgate.credentials.cosmos import resource_of, sign
from lockgate.demo.standins.cosmos import CosmosFake, start_cosmos

AAD_SECRET = "aad-test-secret-that-is-long-enough-for-hs256"


@pytest.fixture
async def fake() -> AsyncIterator[CosmosFake]:
    f = await start_cosmos()
    yield f
    await f.close()


async def call(
    fake: CosmosFake,
    method: str,
    path: str,
    body: Any = None,
    *,
    key: str | None = None,
    date: str | None = None,
    headers: dict[str, str] | None = None,
    auth: str | None = None,
) -> tuple[int, CIMultiDict[str], Any]:
    x_date = date if date is not None else formatdate(usegmt=True)
    rtype, link = resource_of(path)
    hdrs = {"x-ms-date": x_date, "x-ms-version": "2020-07-15"}
    if x_date == "":
        del hdrs["x-ms-date"]
    hdrs["authorization"] = (
        auth if auth is not None else sign(key or fake.keys[0], method, rtype, link, x_date)
    )
    hdrs.update(headers or {})
    data = json.dumps(body) if body is not None and not isinstance(body, str) else body
    async with (
        aiohttp.ClientSession() as session,
        session.request(method, fake.url.rstrip("/") + path, data=data, headers=hdrs) as resp,
    ):
        raw = await resp.read()
        return resp.status, CIMultiDict(resp.headers), json.loads(raw) if raw else None


async def test_account_discovery_document(fake: CosmosFake) -> None:
    status, _, body = await call(fake, "GET", "/")
    assert status == 200
    assert body["writableLocations"] == [{"name": "Local", "databaseAccountEndpoint": fake.url}]
    assert body["readableLocations"] == body["writableLocations"]
    assert body["enableMultipleWriteLocations"] is False
    assert body["userConsistencyPolicy"] == {"defaultConsistencyLevel": "Session"}
    fake.public_url = "https://gateway.example:8443/"
    _, _, body = await call(fake, "GET", "/")
    assert (
        body["writableLocations"][0]["databaseAccountEndpoint"] == "https://gateway.example:8443/"
    )


async def test_documents_over_the_wire(fake: CosmosFake) -> None:
    assert (await call(fake, "POST", "/dbs", {"id": "d b"}))[0] == 201
    coll = {"id": "c", "partitionKey": {"paths": ["/pk"], "kind": "Hash"}}
    assert (await call(fake, "POST", "/dbs/d%20b/colls", coll))[0] == 201
    pk = {"x-ms-documentdb-partitionkey": '["p"]'}
    status, headers, doc = await call(
        fake, "POST", "/dbs/d%20b/colls/c/docs", {"id": "1", "pk": "p"}, headers=pk
    )
    assert status == 201
    assert headers["x-ms-session-token"].startswith("0:")
    assert float(headers["x-ms-request-charge"]) > 0
    assert headers["etag"] == doc["_etag"]
    # Header and body disagree on the partition key: refused like the service does.
    status, headers, err = await call(
        fake, "POST", "/dbs/d%20b/colls/c/docs", {"id": "2", "pk": "q"}, headers=pk
    )
    assert (status, headers["x-ms-substatus"]) == (400, "1001")
    # Missing partition key header on a point read.
    assert (await call(fake, "GET", "/dbs/d%20b/colls/c/docs/1"))[0] == 400
    # Optimistic concurrency.
    stale = {**pk, "if-match": '"stale"'}
    assert (
        await call(fake, "PUT", "/dbs/d%20b/colls/c/docs/1", {"id": "1", "pk": "p"}, headers=stale)
    )[0] == 412
    ok = {**pk, "if-match": doc["_etag"]}
    assert (
        await call(
            fake, "PUT", "/dbs/d%20b/colls/c/docs/1", {"id": "1", "pk": "p", "v": 2}, headers=ok
        )
    )[0] == 200
    # Unsupported SQL is a plain 400 (not the "fetch a query plan" substatus).
    q = {"content-type": "application/query+json", "x-ms-documentdb-isquery": "True"}
    status, headers, err = await call(
        fake,
        "POST",
        "/dbs/d%20b/colls/c/docs",
        {"query": "SELECT c.id FROM c ORDER BY c.id"},
        headers=q,
    )
    assert status == 400 and "x-ms-substatus" not in headers and err["code"] == "BadRequest"


async def test_query_plan_and_pkranges(fake: CosmosFake) -> None:
    await call(fake, "POST", "/dbs", {"id": "d"})
    await call(
        fake,
        "POST",
        "/dbs/d/colls",
        {"id": "c", "partitionKey": {"paths": ["/pk"], "kind": "Hash"}},
    )
    plan_headers = {  # what the Python SDK sends (Java and .NET: application/query+json)
        "content-type": "application/json",
        "x-ms-cosmos-is-query-plan-request": "True",
        "x-ms-cosmos-supported-query-features": "Aggregate,Distinct,OrderBy,Top",
        "x-ms-cosmos-query-version": "1.0",
    }
    status, _, plan = await call(
        fake, "POST", "/dbs/d/colls/c/docs", {"query": "SELECT * FROM c"}, headers=plan_headers
    )
    assert status == 200 and plan["queryRanges"][0]["max"] == "FF"
    status, headers, ranges = await call(fake, "GET", "/dbs/d/colls/c/pkranges")
    assert status == 200 and len(ranges["PartitionKeyRanges"]) == 1
    status, _, _ = await call(
        fake, "GET", "/dbs/d/colls/c/pkranges", headers={"if-none-match": headers["etag"]}
    )
    assert status == 304


async def test_conflict_and_not_found(fake: CosmosFake) -> None:
    assert (await call(fake, "POST", "/dbs", {"id": "d"}))[0] == 201
    status, _, err = await call(fake, "POST", "/dbs", {"id": "d"})
    assert (status, err["code"]) == (409, "Conflict")
    status, _, err = await call(fake, "GET", "/dbs/missing")
    assert (status, err["code"]) == (404, "NotFound")
    assert (await call(fake, "GET", "/nothing/here"))[0] == 404


@pytest.mark.parametrize(
    ("case", "expected_status"),
    [("wrong_key", 401), ("no_header", 401), ("garbage", 401), ("resource_token", 401)],
)
async def test_auth_refusals(fake: CosmosFake, case: str, expected_status: int) -> None:
    kwargs: dict[str, Any] = {
        "wrong_key": {"key": "AAAA" * 11},
        "no_header": {"auth": ""},
        "garbage": {"auth": "Bearer abc"},
        "resource_token": {"auth": "type%3Dresource%26ver%3D1.0%26sig%3Dabc"},
    }[case]
    status, _, err = await call(fake, "GET", "/dbs", **kwargs)
    assert status == expected_status
    assert err["code"] == "Unauthorized" and err["message"]
    assert fake.requests[-1].status == 401


async def test_signature_binds_verb_path_and_date(fake: CosmosFake) -> None:
    now = formatdate(usegmt=True)
    signed_for_get = sign(fake.keys[0], "GET", "dbs", "", now)
    assert (await call(fake, "POST", "/dbs", {"id": "x"}, date=now, auth=signed_for_get))[0] == 401
    signed_other_link = sign(fake.keys[0], "GET", "dbs", "dbs/other", now)
    assert (await call(fake, "GET", "/dbs/d", date=now, auth=signed_other_link))[0] == 401
    later = formatdate(time.time() + 5, usegmt=True)
    assert (await call(fake, "GET", "/dbs", date=later, auth=signed_for_get))[0] == 401
    assert (await call(fake, "GET", "/dbs", date=now, auth=signed_for_get))[0] == 200
    assert "x" not in fake.store.databases


@pytest.mark.parametrize("offset", [-16 * 60, 16 * 60])
async def test_date_outside_skew_window(fake: CosmosFake, offset: int) -> None:
    status, _, err = await call(
        fake, "GET", "/dbs", date=formatdate(time.time() + offset, usegmt=True)
    )
    assert status == 401 and "not valid at the current time" in err["message"]


async def test_date_inside_skew_window(fake: CosmosFake) -> None:
    assert (await call(fake, "GET", "/dbs", date=formatdate(time.time() - 14 * 60, usegmt=True)))[
        0
    ] == 200


async def test_missing_date(fake: CosmosFake) -> None:
    status, _, err = await call(fake, "GET", "/dbs", date="")
    assert status == 401 and "x-ms-date" in err["message"]


async def test_throttle_headers(fake: CosmosFake) -> None:
    fake.throttle(1, retry_after_ms=250)
    status, headers, _ = await call(fake, "GET", "/dbs")
    assert status == 429
    assert headers["x-ms-retry-after-ms"] == "250" and headers["x-ms-substatus"] == "3200"
    assert (await call(fake, "GET", "/dbs"))[0] == 200
    # A wrong signature is refused before throttling: auth is never skipped.
    fake.throttle(5)
    assert (await call(fake, "GET", "/dbs", key="AAAA" * 11))[0] == 401


# --- AAD ----------------------------------------------------------------------------------------


def _self_signed(tmp: Path) -> ssl.SSLContext:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=1))
        .not_valid_after(now + dt.timedelta(hours=1))
        .sign(key, hashes.SHA256())
    )
    (tmp / "c.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (tmp / "k.pem").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(tmp / "c.pem", tmp / "k.pem")
    return ctx


def audience_verifier(audience: str):  # type: ignore[no-untyped-def]
    def verify(token: str) -> bool:
        try:
            jwt.decode(token, AAD_SECRET, algorithms=["HS256"], audience=audience)
        except jwt.PyJWTError:
            return False
        return True

    return verify


class ScopedCredential:
    """A TokenCredential that mints an HS256 JWT whose audience is the requested scope."""

    def __init__(self, audience: str | None = None) -> None:
        self.audience = audience
        self.scopes: list[str] = []

    def get_token(self, *scopes: str, **_: Any) -> Any:
        from azure.core.credentials import AccessToken

        self.scopes.extend(scopes)
        aud = self.audience or scopes[0].removesuffix("/.default")
        exp = int(time.time()) + 600
        return AccessToken(jwt.encode({"aud": aud, "exp": exp}, AAD_SECRET, algorithm="HS256"), exp)


# The SDK turns TLS verification off for 127.0.0.1 (an emulator convenience), hence the warning.
@pytest.mark.filterwarnings("ignore::urllib3.exceptions.InsecureRequestWarning")
@pytest.mark.parametrize(("audience", "ok"), [(None, True), ("https://someone-else", False)])
async def test_aad_with_the_sdk_over_tls(tmp_path: Path, audience: str | None, ok: bool) -> None:
    import asyncio

    from azure.cosmos import CosmosClient
    from azure.cosmos.exceptions import CosmosHttpResponseError

    fake = await start_cosmos(
        ssl=_self_signed(tmp_path), aad_verifier=audience_verifier("https://127.0.0.1")
    )
    try:
        credential = ScopedCredential(audience)

        def run() -> list[str]:
            client = CosmosClient(fake.url, credential=credential)
            client.create_database("aad")
            return [d["id"] for d in client.list_databases()]

        if ok:
            assert await asyncio.to_thread(run) == ["aad"]
            assert fake.requests and all(r.auth_type == "aad" for r in fake.requests)
        else:
            with pytest.raises(CosmosHttpResponseError) as err:
                await asyncio.to_thread(run)
            assert err.value.status_code == 401
        assert credential.scopes[0] == "https://127.0.0.1/.default"
    finally:
        await fake.close()


async def test_aad_refused_without_verifier(fake: CosmosFake) -> None:
    token = jwt.encode({"aud": "x"}, AAD_SECRET, algorithm="HS256")
    status, _, _ = await call(fake, "GET", "/dbs", auth=f"type=aad&ver=1.0&sig={token}")
    assert status == 401
