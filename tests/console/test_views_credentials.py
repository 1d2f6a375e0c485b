"""The console's credentials page over a real state directory: versions, age past
``alerts.credential_max_age``, overlap, vault fetches, resource -> credential, secretless
badges; and no secret value, in any encoding, on any page a viewer can open."""

from __future__ import annotations

import base64
import hashlib
import json
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from aiohttp.test_utils import TestClient, TestServer

from lockgate.audit import AuditReader
from lockgate.config import load_config
from lockgate.console.views_credentials import add_routes, span
from lockgate.console.web import ConsoleContext
from lockgate.credentials.describe import describe
from lockgate.policy import PolicyStore
from lockgate.state import State

from ._views import signed_in, views_app

STATIC_V1 = "static-first-s3cr3t-0123456789"
STATIC_V2 = "static-second-s3cr3t-9876543210"
CLIENT_SECRET = "oauth-client-s3cr3t-abcdefabcdef"
SECRET_ID = "approle-secret-id-0123456789"
SECRETS = (STATIC_V1, STATIC_V2, CLIENT_SECRET, SECRET_ID)


def encodings(value: str) -> set[str]:
    """``value`` as a page could leak it: plain, base64 (both alphabets), hex, digests."""
    raw = value.encode()
    return {
        value,
        base64.b64encode(raw).decode().rstrip("="),
        base64.urlsafe_b64encode(raw).decode().rstrip("="),
        raw.hex(),
        hashlib.sha256(raw).hexdigest(),
        hashlib.sha256(raw).hexdigest()[:16],
        base64.b64encode(hashlib.sha256(raw).digest()).decode().rstrip("="),
    }


def credentials_state(tmp_path: Path) -> State:
    """A state directory whose credentials hold :data:`SECRETS` (LOCKGATE_MASTER_KEY unset:
    the master key is made in the data directory)."""
    path = tmp_path / "lockgate.yaml"
    path.write_text(
        json.dumps(  # JSON is YAML
            {"data_dir": str(tmp_path / "data"),
             "alerts": {"credential_max_age": [{"credentials": "orders-*", "max_age": 0.001},
                                               {"credentials": "*", "max_age": 86400 * 90}]},
             "credentials": [
                 {"name": "orders-key", "type": "static", "overlap": 3600},
                 {"name": "dbx-oauth", "type": "oauth2_client_credentials",
                  "token_url": "https://login.example.com/token", "client_id": "app-1"},
                 {"name": "cosmos-fed", "type": "federated", "provider": "entra",
                  "token_url": "https://login.example.com/t/oauth2/v2.0/token",
                  "client_id": "app-1", "scope": "https://acct.documents.azure.com/.default"},
                 {"name": "kv-reader", "type": "managed_identity",
                  "resource": "https://vault.azure.net"},
                 {"name": "pg-pw", "type": "azure_key_vault",
                  "vault_url": "https://contoso.vault.azure.net", "secret": "pg-password",
                  "identity": "kv-reader"},
                 {"name": "cql-pw", "type": "vault_kv", "address": "https://vault.example:8200",
                  "path": "cql/app", "field": "password",
                  "auth": {"method": "approle", "role_id": "r-1"}}],
             "resources": [
                 {"name": "orders-api", "kind": "http", "upstream": "https://orders.example.com",
                  "credential": "orders-key"},
                 {"name": "orders-cosmos", "kind": "http", "upstream": "https://acct.example.com",
                  "credential": "cosmos-fed"},
                 {"name": "open-api", "kind": "http", "upstream": "https://open.example.com"},
                 {"name": "dbx", "kind": "http", "upstream": "https://dbc.example.com",
                  "credential": "dbx-oauth"}]}
        )
    )  # fmt: skip
    st = State(load_config(path))
    st.credentials.set("orders-key", STATIC_V1)
    st.credentials.rotate("orders-key", STATIC_V2)
    st.credentials.set("dbx-oauth", CLIENT_SECRET)
    st.credentials.set("cql-pw", SECRET_ID)
    st.credentials.record_fetch(
        "pg-pw", "https://contoso.vault.azure.net/secrets/pg-password", "ver7", time.time() - 60
    )
    time.sleep(0.01)  # orders-key's current version is past its 1 ms max_age
    return st


@pytest.fixture
def state(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[State]:
    monkeypatch.delenv("LOCKGATE_MASTER_KEY", raising=False)
    st = credentials_state(tmp_path)
    try:
        yield st
    finally:
        st.close()


def context_of(st: State) -> ConsoleContext:
    cfg = st.config
    return ConsoleContext(
        config=cfg,
        audit_reader=lambda: AuditReader(cfg.data_dir / "audit.db"),
        audit=None,
        policy=PolicyStore(cfg.policy_files),
        revocations=st.revocations,
        credentials=st.credentials,
        database=st.database,
    )


@pytest.fixture
async def client(state: State) -> AsyncIterator[TestClient]:  # type: ignore[type-arg]
    app = views_app(context_of(state), add_routes, signed_in("viewer"))
    async with TestClient(TestServer(app)) as c:
        yield c


def test_describe_says_versions_overlap_age_and_where_held(state: State) -> None:
    report = describe(state.config, state.credentials)
    by = {c.name: c for c in report.credentials}
    orders = by["orders-key"]
    assert [v.version for v in orders.versions] == [1, 2] and orders.current
    assert orders.current.version == 2 and orders.held == "store" and orders.overdue(report.at)
    previous = orders.versions[0]
    assert previous.usable_until == pytest.approx(orders.current.created_at + 3600)
    assert orders.last_rotation == orders.current.rotated_at and orders.resources == ("orders-api",)
    assert by["dbx-oauth"].max_age == 86400 * 90 and not by["dbx-oauth"].overdue(report.at)
    assert by["cosmos-fed"].secretless and by["cosmos-fed"].versions == ()
    assert by["kv-reader"].used_by == ("pg-pw",)
    pg = by["pg-pw"]
    assert pg.held == "azure_key_vault" and pg.fetched and pg.fetched.vault_version == "ver7"
    assert pg.held_at == "https://contoso.vault.azure.net/secrets/pg-password"
    assert by["cql-pw"].secret_id_only and by["cql-pw"].current
    secretless = {r.name: r.secretless for r in report.resources}
    assert secretless == {"orders-api": False, "orders-cosmos": True, "open-api": True,
                          "dbx": False}  # fmt: skip
    assert report.served_without_stored_secret == ["orders-cosmos"]
    assert report.holding_no_secret == 3  # cosmos-fed, kv-reader, pg-pw


async def test_the_page_shows_credentials_and_never_a_value(client: TestClient) -> None:  # type: ignore[type-arg]
    resp = await client.get("/console/credentials")
    assert resp.status == 200
    page = await resp.text()
    for secret in SECRETS:
        for form in encodings(secret):
            assert form not in page, f"{secret!r} shown as {form!r}"
    assert "<h1>Credentials</h1>" in page and "<caption>" in page
    assert 'class="badge deny"' in page  # orders-key past its max_age
    assert "secretless" in page and "version 2" in page and "previous: usable until" in page
    assert "https://contoso.vault.azure.net/secrets/pg-password" in page and "ver7" in page
    assert 'href="/console/access?resource=orders-api"' in page
    assert "3 of 6 credentials hold no secret" in page
    assert 'href="/console/audit?event=credential_rotated"' in page


async def test_a_viewer_is_enough_and_nobody_else_is_asked(state: State) -> None:
    app = views_app(context_of(state), add_routes, signed_in("viewer"))
    async with TestClient(TestServer(app)) as c:
        assert (await c.get("/console/credentials")).status == 200
        assert (await c.post("/console/credentials")).status == 405


def test_span_reads_like_a_person_wrote_it() -> None:
    assert span(0) == "0s" and span(59) == "59s" and span(3600 * 26 + 5) == "1d 2h"
    assert span(600) == "10m" and span(None) == ""


async def test_a_failing_vault_fetch_is_shown_by_what_the_broker_says(state: State) -> None:
    from lockgate.credentials.vaults import FetchStatus

    failed = "credential 'pg-pw': the vault did not answer in 10s"
    held = "https://contoso.vault.azure.net/secrets/pg-password"
    state.credentials.vault_status = lambda: {"pg-pw": FetchStatus(held, "ver7", 1.0, failed)}
    app = views_app(context_of(state), add_routes, signed_in("viewer"))
    async with TestClient(TestServer(app)) as c:
        page = await (await c.get("/console/credentials")).text()
    row = page.split('<th scope="row">pg-pw</th>', 1)[1].split("</tr>", 1)[0]
    assert "last fetch failed" in row and "the vault did not answer in 10s" in row
