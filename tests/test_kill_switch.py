"""The kill switch on a running gateway: ``lockgate token revoke --dag D --block``.

The task side is the real token client the Airflow secrets backend uses; the operator side
is the real CLI (in-process, another RevocationStore connection, as a second process has).
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator

import pytest

from lockgate.airflow._client import GatewayDenied, TokenServiceClient
from lockgate.audit import AuditReader
from lockgate.cli import main
from lockgate.demo.stack import LocalStack
from lockgate.identity import TaskIdentity


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    with LocalStack(tmp_path_factory.mktemp("killswitch"), tls=False) as s:
        yield s


@pytest.fixture
def client(stack: LocalStack) -> TokenServiceClient:
    return TokenServiceClient(stack.control_url, "prod", client_secret=stack.deployment_secret)


def cli(stack: LocalStack, *argv: str) -> int:
    return main(["-c", str(stack.config_path), *argv])


def mint(client: TokenServiceClient, dag: str, run: str = "ks") -> str:
    coords = {"dag_id": dag, "task_id": "load", "run_id": run, "try_number": 1}
    return client.mint(conn_id="orders_api", coords=coords, requested_ttl=None).token


def get(stack: LocalStack, token: str) -> int:
    req = urllib.request.Request(
        stack.http_url + "/orders-api/orders", headers={"Authorization": f"Bearer {token}"}
    )
    try:
        with urllib.request.urlopen(req, timeout=5) as r:
            return int(r.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)


def refused_within(stack: LocalStack, token: str, limit: float) -> float:
    """Seconds until ``token`` is refused (401), failing past ``limit``."""
    start = time.monotonic()
    while get(stack, token) != 401:
        assert time.monotonic() - start < limit, f"still served after {limit}s"
        time.sleep(0.02)
    return time.monotonic() - start


def audit_rows(stack: LocalStack, **query: str) -> list:
    assert stack.gateway.audit.flush(5.0)
    return AuditReader(stack.config.data_dir / "audit.db").search(limit=1000, **query)


def test_block_a_dag_from_the_cli(
    stack: LocalStack, client: TokenServiceClient, capsys: pytest.CaptureFixture[str]
) -> None:
    live = mint(client, "finance_daily")
    bystander = mint(client, "finance_weekly")
    assert get(stack, live) == 200

    argv = ("token", "revoke", "--dag", "finance_daily", "--block", "--reason", "incident 42")
    assert cli(stack, *argv) == 0
    assert "DAG finance_daily is blocked by operator" in capsys.readouterr().out
    assert refused_within(stack, live, 1.0) < 1.0
    with pytest.raises(GatewayDenied) as denied:
        mint(client, "finance_daily", run="after")
    message = str(denied.value)
    assert denied.value.status == 403
    assert "DAG finance_daily is blocked by operator " in message
    assert " since 20" in message and message.endswith(": incident 42")
    assert get(stack, bystander) == 200  # another DAG is untouched
    mint(client, "finance_weekly", run="after")

    assert cli(stack, "token", "revocations") == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    (block,) = [r for r in rows if r["kind"] == "block"]
    assert block["target"] == {"deployment": None, "dag_id": "finance_daily"}
    assert block["by"].startswith("operator ") and block["since"] > time.time() - 60
    assert block["reason"] == "incident 42"

    events = [r.event for r in audit_rows(stack, dag="finance_daily")]
    assert "mint_blocked" in events
    refusals = audit_rows(stack, dag="finance_daily", decision="deny")
    assert any(r.event == "denied" and r.reason == "dag_blocked" for r in refusals)

    # iat has one-second resolution and a token of the block's second counts as revoked
    time.sleep(max(0.0, block["since"] + 1.05 - time.time()))
    assert cli(stack, "token", "unblock", "--dag", "finance_daily") == 0
    fresh = mint(client, "finance_daily", run="unblocked")  # at once: the mint path refreshes
    assert get(stack, fresh) == 200
    assert get(stack, live) == 401  # what the block revoked stays revoked
    assert cli(stack, "token", "unblock", "--dag", "finance_daily") == 1  # nothing to lift
    assert "mint_unblocked" in [r.event for r in audit_rows(stack, dag="finance_daily")]


def test_a_block_survives_a_restart(stack: LocalStack, client: TokenServiceClient) -> None:
    assert cli(stack, "token", "revoke", "--dag", "orders_load", "--block") == 0
    stack.restart_gateway()
    try:
        with pytest.raises(GatewayDenied, match="DAG orders_load is blocked"):
            mint(client, "orders_load")
    finally:
        assert cli(stack, "token", "unblock", "--dag", "orders_load") == 0
    mint(client, "orders_load")


def test_block_a_whole_deployment(stack: LocalStack, client: TokenServiceClient) -> None:
    live = mint(client, "finance_yearly")
    assert cli(stack, "token", "revoke", "--deployment", "prod", "--block") == 0
    try:
        assert refused_within(stack, live, 1.0) < 1.0
        with pytest.raises(GatewayDenied, match=r"of deployment prod is blocked \(the whole"):
            mint(client, "finance_monthly")
        # every door that mints holds it, the poll-token one (no token service) included
        poll = TaskIdentity("prod", "@triggerer", "poll", "*", 0)
        assert not stack.gateway.mint_policy(poll, "orders-api", 60).allowed
        # a typo must not silently block nothing
        assert cli(stack, "token", "revoke", "--deployment", "prd", "--block") == 2
    finally:
        assert cli(stack, "token", "unblock", "--deployment", "prod") == 0
    mint(client, "finance_monthly")


def test_a_deployment_blocks_its_own_dag_over_the_api(
    stack: LocalStack, client: TokenServiceClient
) -> None:
    live = mint(client, "finance_hourly")

    def revoke(**fields: str) -> tuple[int, dict]:
        form = {"client_id": "prod", "client_secret": stack.deployment_secret, **fields}
        req = urllib.request.Request(
            stack.control_url + "/v1/revoke", data=urllib.parse.urlencode(form).encode()
        )
        try:
            with urllib.request.urlopen(req, timeout=5) as r:
                return r.status, json.loads(r.read())
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read())

    assert revoke(dag_id="finance_hourly", run_id="r1", block="true")[0] == 400
    assert revoke(dag_id="hr_daily", block="true")[0] == 403  # not its DAG
    status, body = revoke(dag_id="finance_hourly", block="true", reason="runaway job")
    assert (status, body) == (200, {"revoked": "block"})
    try:
        assert get(stack, live) == 401  # same process: at once
        with pytest.raises(GatewayDenied, match=r"blocked by deployment prod since .*runaway job"):
            mint(client, "finance_hourly")
        rows = audit_rows(stack, dag="finance_hourly", event="mint_blocked")
        assert len(rows) == 1 and rows[0].deployment == "prod"
        assert rows[0].reason == "runaway job"
    finally:
        argv = ("token", "unblock", "--deployment", "prod", "--dag", "finance_hourly")
        assert cli(stack, *argv) == 0
    mint(client, "finance_hourly")
