"""A rotation of the gateway's Cassandra password never fails a CQL login, in either order.

The real gateway (SQLite credential store, audit log) in front of the fake Cassandra node:

* gateway first: ``creds rotate`` while the cluster still has the old password. Logins are
  refused with the new value (AuthenticationError 0x0100) and go in with the previous
  version while the overlap lasts, audited with the version numbers; after the overlap the
  login fails, audited ``upstream_error`` naming the refused version;
* cluster first: ``ALTER ROLE`` on the cluster while the gateway's cache still holds the old
  value; a rotation in the store (another process) then lands. The cached, refused value is
  dropped and the login goes in with the new one at once.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from lockgate.config import load_config
from lockgate.demo.standins.cqlserver import CqlServer, start_cql_server
from lockgate.demo.standins.vault import FakeVault
from lockgate.demo.standins.vault import start as start_vault
from lockgate.gateway.caches import SecretCache
from lockgate.gateway.cql import codec, upstream
from lockgate.gateway.upstream_credential import forget_refusals
from lockgate.server import Gateway

from ..fakes import FakeBroker
from .engine_stack import (
    CONFIG,
    POLICY,
    UPSTREAM_PASSWORD,
    UPSTREAM_USER,
    RawClient,
    Stack,
    cql_context,
    dead_port,
    run_on_fake,
    stack_fixture,
    stop_stack,
)
from .test_engine_live import PASSWORD, cass
from .test_engine_live import fake as fake

NEW_PASSWORD = "rotated-upstream-pw"
CREDENTIAL = "cass-pw"


@pytest.fixture
async def stack(tmp_path: Path) -> AsyncIterator[Stack]:
    forget_refusals()  # refusals remembered by another test's gateway
    async for s in stack_fixture(tmp_path):
        yield s
    forget_refusals()


async def _login(stack: Stack) -> codec.Event | None:
    client = await RawClient.open(stack.port)
    try:
        return await client.login(stack.token())
    finally:
        client.close()


def _alter_cluster_password(stack: Stack, password: str) -> None:
    run_on_fake(stack.fake, f"ALTER ROLE {UPSTREAM_USER} WITH PASSWORD = '{password}'")


def _rotation_records(stack: Stack) -> list[dict[str, object]]:
    rows = stack.audit("allowed")
    return [dict(r.detail or {}) for r in rows if r.reason == "credential_rotation"]


def _no_secret_in_audit(stack: Stack) -> None:
    text = repr(stack.audit())
    assert UPSTREAM_PASSWORD not in text and NEW_PASSWORD not in text


async def test_gateway_rotated_first_logs_in_with_the_previous_version_during_overlap(
    stack: Stack,
) -> None:
    store = stack.gw.state.credentials
    rotated = store.rotate(CREDENTIAL, NEW_PASSWORD)  # the cluster still has the old one
    first = await _login(stack)
    assert isinstance(first, codec.AuthSuccess), first
    # The refused current version is remembered: the next login starts with the previous.
    second = await _login(stack)
    assert isinstance(second, codec.AuthSuccess), second
    records = _rotation_records(stack)
    assert records[0] == {
        "credential_name": CREDENTIAL,
        "version": rotated - 1,
        "current_version": rotated,
        "refused_version": rotated,
    }
    assert records[1]["version"] == rotated - 1 and records[1]["refused_version"] is None

    # The overlap ends: the previous version is no longer offered, the login fails, audited.
    credential = stack.gw.config.credential(CREDENTIAL)
    assert credential is not None
    store._clock = lambda: time.time() + credential.overlap + 1
    cql_context(stack).secrets.invalidate()  # as its short TTL would, a second later
    refused = await _login(stack)
    assert isinstance(refused, codec.Error) and refused.code == codec.ERR_SERVER, refused
    errors = [r for r in stack.audit("upstream_error") if r.action == "connect"]
    assert errors, "the failed login is audited"
    detail = dict(errors[-1].detail or {})
    assert detail["credential_name"] == CREDENTIAL
    assert detail["refused_versions"] == [rotated]  # the previous one is past its overlap
    assert errors[-1].principal == "airflow:prod/etl/load"

    # The cluster learns the new password: logins go in with the current version, quietly.
    _alter_cluster_password(stack, NEW_PASSWORD)
    before = len(_rotation_records(stack))
    assert isinstance(await _login(stack), codec.AuthSuccess)
    assert isinstance(await _login(stack), codec.AuthSuccess)
    after = _rotation_records(stack)
    assert len(after) <= before + 1  # at most the login that found the remembered one stale
    _no_secret_in_audit(stack)


async def test_cluster_rotated_first_the_cached_value_is_dropped(stack: Stack) -> None:
    assert isinstance(await _login(stack), codec.AuthSuccess)  # caches the current value
    _alter_cluster_password(stack, NEW_PASSWORD)
    # The store rotates behind this process's back: its cache still holds the old value.
    cache = stack.gw.state.credentials
    rotated = cache.rotate(CREDENTIAL, NEW_PASSWORD)
    login = await _login(stack)
    assert isinstance(login, codec.AuthSuccess), login
    # Whether the cache saw the rotation in time or the refusal made it look again, the
    # login went in with the new version; the old one is never used again.
    for detail in _rotation_records(stack):
        assert detail["version"] == rotated
    assert isinstance(await _login(stack), codec.AuthSuccess)
    assert not [r for r in stack.audit("upstream_error") if r.action == "connect"]
    _no_secret_in_audit(stack)


# -- the login alone (upstream.login), a fake broker whose versions the test sets ----------------
def _counting_connects(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The passwords each contact-point login sent (test-local values, not real secrets)."""
    sent: list[str] = []
    connect = upstream.connect

    async def counted(resource: Any, password: str, **kw: Any) -> upstream.UpstreamLink:
        sent.append(password)
        return await connect(resource, password, **kw)

    monkeypatch.setattr(upstream, "connect", counted)
    return sent


async def test_overlap_logins_start_with_the_version_that_works(
    fake: CqlServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    forget_refusals()
    sent = _counting_connects(monkeypatch)
    cache = SecretCache(FakeBroker({"pw": [PASSWORD, "version-two"]}))  # v2 not on the node
    links = [await upstream.login(cass("one", fake.port), cache) for _ in range(3)]
    for link in links:
        link.close()
    assert [link.credential_version for link in links] == [1, 1, 1]
    assert [link.refused_version for link in links] == [2, None, None]
    assert sent == ["version-two", PASSWORD, PASSWORD, PASSWORD]  # refused once, not each time
    # the node takes the new password: one refusal of the old, then the current again
    run_on_fake(fake, "ALTER ROLE lockgate WITH PASSWORD = 'version-two'")
    sent.clear()
    links = [await upstream.login(cass("one", fake.port), cache) for _ in range(3)]
    for link in links:
        link.close()
    assert [link.credential_version for link in links] == [2, 2, 2]
    assert not any(link.rotation_under_way for link in links[1:])
    assert sent == [PASSWORD, "version-two", "version-two", "version-two"]
    forget_refusals()


async def test_a_rotation_the_cache_had_not_seen_is_picked_up(fake: CqlServer) -> None:
    run_on_fake(fake, "ALTER ROLE lockgate WITH PASSWORD = 'new-value'")  # the node first
    broker = FakeBroker({"pw": [PASSWORD]})
    cache = SecretCache(broker, ttl=3600)
    assert (await cache.get("pw")) is not None  # the old value, cached for an hour
    broker.versions["pw"].append("new-value")  # rotated behind the cache's back
    link = await upstream.login(cass("one", fake.port), cache)
    link.close()
    assert (link.credential_version, link.refused_version) == (2, 1)


async def test_no_version_the_node_takes_is_an_auth_failure_naming_versions_only(
    fake: CqlServer,
) -> None:
    forget_refusals()
    cache = SecretCache(FakeBroker({"pw": ["not-on-node-1", "not-on-node-2"]}))
    with pytest.raises(upstream.CredentialVersionsRefused) as info:
        await upstream.login(cass("one", fake.port), cache)
    assert info.value.versions == (2, 1)
    text = str(info.value)
    assert "0x0100" in text and "versions 2 and 1 refused" in text
    assert "not-on-node" not in text and PASSWORD not in text
    # One version only (no overlap): refused once, nothing else to try.
    with pytest.raises(upstream.CredentialVersionsRefused) as info:
        await upstream.login(cass("one", fake.port), SecretCache(FakeBroker({"pw": ["x-1"]})))
    assert info.value.versions == (1,)


# -- a vault-held password (HashiCorp Vault KV, the stand-in): the same path through the broker --
VAULT_TTL = 1


@pytest.fixture
async def vault_stack(tmp_path: Path) -> AsyncIterator[tuple[Stack, FakeVault]]:
    forget_refusals()
    vault = FakeVault(policies={"cass": [("secret/data/cass/*", {"read"})]})
    runner = await start_vault(vault)
    vault.put("cass/login", {"value": UPSTREAM_PASSWORD})
    role_id, secret_id = vault.add_approle("gateway", policies=["cass"])
    (tmp_path / "secret-id").write_text(secret_id)
    credential = {
        "name": CREDENTIAL, "type": "vault_kv", "address": vault.base_url,
        "path": "cass/login", "ttl": VAULT_TTL, "overlap": 600,
        "auth": {"method": "approle", "role_id": role_id,
                 "secret_id_file": str(tmp_path / "secret-id")},
    }  # fmt: skip
    node = await start_cql_server(
        users={"cassandra": "cassandra", UPSTREAM_USER: UPSTREAM_PASSWORD},
        superusers=("cassandra", UPSTREAM_USER),
    )
    (tmp_path / "policies").mkdir()
    (tmp_path / "policies" / "team.yaml").write_text(POLICY)
    text = CONFIG.format(data=tmp_path / "data", dead=dead_port(), live=node.port)
    text = text.replace("{name: cass-pw, type: static}", json.dumps(credential))
    (tmp_path / "lockgate.yaml").write_text(text)
    gw = Gateway(load_config(tmp_path / "lockgate.yaml"))
    await gw.start()
    stack = Stack(gw, node, gw.cql_port)
    try:
        yield stack, vault
    finally:
        await stop_stack(stack)
        await runner.cleanup()
        forget_refusals()


async def test_vault_rotated_first_logs_in_with_the_value_seen_before(
    vault_stack: tuple[Stack, FakeVault],
) -> None:
    """The operator writes the new password into the vault while the cluster still has the
    old one: once the gateway sees the new value, logins go in with the one seen before."""
    stack, vault = vault_stack
    assert isinstance(await _login(stack), codec.AuthSuccess)
    vault.put("cass/login", {"value": NEW_PASSWORD})
    deadline = time.monotonic() + VAULT_TTL + 4
    while not _rotation_records(stack):
        assert time.monotonic() < deadline, "the vault's new value was never seen"
        login = await _login(stack)
        assert isinstance(login, codec.AuthSuccess), login  # not one login fails meanwhile
        await asyncio.sleep(0.1)
    first = _rotation_records(stack)[0]
    assert first["credential_name"] == CREDENTIAL
    assert first["refused_version"] == first["current_version"] != first["version"]
    assert not [r for r in stack.audit("upstream_error") if r.action == "connect"]
    _no_secret_in_audit(stack)
