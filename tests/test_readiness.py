"""``/readyz`` on a running gateway: 503 with the reasons whenever it cannot serve honestly.

Each test breaks one thing the way an operator would (a credential never set, a policy file
with a typo, the key files gone), asks the real endpoint, then repairs it and sees 200 again.
"""

from __future__ import annotations

import json
import os
import shutil
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import pytest

from lockgate.audit import AuditLog
from lockgate.config import LockgateConfig
from lockgate.credentials import CredentialStore
from lockgate.demo.stack import LocalStack
from lockgate.errors import AuditUnavailable
from lockgate.identity import KeyStore
from lockgate.policy import PolicyStore
from lockgate.readiness import Readiness

DISK_CHECK_TTL = 1.0  # lockgate.readiness caches its disk checks this long
SETTLE = DISK_CHECK_TTL + 2.5  # and policy files are re-read once their mtime has settled


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    with LocalStack(tmp_path_factory.mktemp("readiness"), tls=False) as s:
        yield s


def probe(stack: LocalStack, path: str = "/readyz") -> tuple[int, dict[str, Any]]:
    try:
        with urllib.request.urlopen(stack.control_url + path, timeout=5) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def wait_for(stack: LocalStack, status: int, limit: float = SETTLE) -> dict[str, Any]:
    deadline = time.monotonic() + limit
    while True:
        got, body = probe(stack)
        if got == status:
            return body
        assert time.monotonic() < deadline, f"/readyz still {got} after {limit}s: {body}"
        time.sleep(0.05)


def write_rule(path: Path, rule_id: str, effect: str, resource: str) -> None:
    """One policy file holding one rule: how an operator's typo reaches the gateway."""
    path.write_text(
        f"rules:\n  - id: {rule_id}\n    effect: {effect}\n    principals: [x]\n"
        f"    actions: [read]\n    resources: [{resource}]\n"
    )


def test_ready_when_everything_is_in_place(stack: LocalStack) -> None:
    status, body = probe(stack)
    assert status == 200 and body["ready"] is True and body["problems"] == []
    assert body["checks"] == dict.fromkeys(
        ("started", "audit", "policy", "credentials", "signing_keys"), "ok"
    )


def test_a_credential_without_a_value_is_not_ready(stack: LocalStack) -> None:
    creds = stack.gateway.state.credentials
    assert creds.delete("orders-api-key")
    try:
        body = wait_for(stack, 503)
        assert body["ready"] is False
        text = body["checks"]["credentials"]
        assert "orders-api-key" in text and "orders-api" in text and "creds set" in text
        assert stack.upstream_secret not in json.dumps(body)
        assert probe(stack, "/healthz")[0] == 200  # liveness is not readiness
    finally:
        stack.set_credential(stack.upstream_secret)
    wait_for(stack, 200)


def test_a_policy_that_fails_to_reload_is_not_ready(stack: LocalStack) -> None:
    broken = stack.workdir / "policies" / "zz-broken.yaml"
    write_rule(broken, "typo", "alow", "orders-api")
    try:
        body = wait_for(stack, 503)
        text = body["checks"]["policy"]
        assert text.startswith("last reload failed, still serving the policy loaded at ")
        assert "zz-broken.yaml" in text and "rules[0].effect" in text
    finally:
        broken.unlink()
    wait_for(stack, 200)


def test_a_policy_that_never_loaded_is_not_ready(stack: LocalStack) -> None:
    broken = stack.workdir / "policies" / "zz-ghost.yaml"
    write_rule(broken, "ghost", "allow", "no-such-resource")
    try:
        stack.restart_gateway()  # starts with the broken file: nothing was ever loaded
        status, body = probe(stack)
        assert status == 503
        text = body["checks"]["policy"]
        assert text.startswith("never loaded, every request is denied")
        assert "no-such-resource" in text
    finally:
        broken.unlink()
    wait_for(stack, 200)


def test_no_policy_file_at_all_is_not_ready(stack: LocalStack, tmp_path: Path) -> None:
    policies = stack.workdir / "policies"
    moved = [shutil.move(f, tmp_path / f.name) for f in sorted(policies.iterdir())]
    assert moved
    try:
        body = wait_for(stack, 503)
        assert body["checks"]["policy"].startswith("no file matches policies ['policies/")
    finally:
        for f in moved:
            shutil.move(f, policies / Path(f).name)
    wait_for(stack, 200)


def test_missing_signing_keys_are_not_ready(stack: LocalStack, tmp_path: Path) -> None:
    keys = stack.config.data_dir / "keys"
    shutil.move(keys / "index.json", tmp_path / "index.json")
    try:
        body = wait_for(stack, 503)
        assert "index.json is missing" in body["checks"]["signing_keys"]
    finally:
        shutil.move(tmp_path / "index.json", keys / "index.json")
    wait_for(stack, 200)


def test_an_audit_that_refuses_is_not_ready(
    stack: LocalStack, monkeypatch: pytest.MonkeyPatch
) -> None:
    def refusing() -> None:
        raise AuditUnavailable("audit write timed out")

    monkeypatch.setattr(stack.gateway.audit, "check_writable", refusing)
    status, body = probe(stack)  # not cached: the audit answers from memory
    assert status == 503 and body["checks"]["audit"] == "refusing records: audit write timed out"
    monkeypatch.undo()
    assert probe(stack)[0] == 200


def test_probing_often_touches_disk_at_most_once_a_second(
    stack: LocalStack, monkeypatch: pytest.MonkeyPatch
) -> None:
    creds = stack.gateway.state.credentials
    calls = 0
    real = creds.names

    def counting() -> list[str]:
        nonlocal calls
        calls += 1
        return real()

    monkeypatch.setattr(creds, "names", counting)
    start = time.monotonic()
    for _ in range(100):
        assert probe(stack)[0] == 200
    elapsed = time.monotonic() - start
    assert calls <= elapsed / DISK_CHECK_TTL + 1


# -- credentials with nothing stored, and the keys they sign with --------------------------
class _Writable:
    def check_writable(self) -> None:
        pass


class _Loaded:
    last_error = None
    loaded_at = 1.0
    current = type("PolicySet", (), {"sources": ["p.yaml"]})()


def _federated_readiness(tmp_path: Path, algorithms: tuple[str, ...]) -> Readiness:
    cfg = LockgateConfig.model_validate(
        {"issuer": "https://lockgate.example.com",
         "credentials": [
             {"name": "cosmos-fed", "type": "federated", "provider": "entra",
              "token_url": "https://login.example.com/t/oauth2/v2.0/token",
              "client_id": "app-1", "scope": "https://acct.documents.azure.com/.default"},
             {"name": "arm-mi", "type": "managed_identity",
              "resource": "https://management.azure.com"}],
         "resources": [
             {"name": "orders-cosmos", "kind": "http", "upstream": "https://acct.example.com",
              "credential": "cosmos-fed", "conn_id": "orders_cosmos"},
             {"name": "adf", "kind": "http", "upstream": "https://management.example.com",
              "credential": "arm-mi", "conn_id": "adf"}]}
    )  # fmt: skip
    return Readiness(
        cfg,
        audit=cast(AuditLog, _Writable()),
        policy=cast(PolicyStore, _Loaded()),
        credentials=CredentialStore(tmp_path / "credentials.db", os.urandom(32)),
        keys=KeyStore(tmp_path, algorithms=algorithms),
    )


def test_federated_and_managed_identity_credentials_need_nothing_stored(tmp_path: Path) -> None:
    report = _federated_readiness(tmp_path, ("EdDSA", "RS256")).report(started=True)
    assert report.ready, report.problems
    assert report.checks["credentials"] == "ok" and report.checks["signing_keys"] == "ok"


def test_a_federated_credential_without_its_signing_key_is_not_ready(tmp_path: Path) -> None:
    report = _federated_readiness(tmp_path, ("EdDSA",)).report(started=True)
    assert not report.ready
    assert report.checks["signing_keys"] == "no current RS256 signing key"
